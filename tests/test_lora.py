"""LoRA (--lora, peft): only the adapters (and a classifier's head) train, the loss falls, the merged
model equals base + adapter and loads without peft, resume is exact, and the misuses fail in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import adapt_cfg, finetune_cfg

pytest.importorskip("peft")

ENCODER, DECODER = "roberta", "gpt2"  # roberta: the masked-only MLM path; gpt2: Conv1D projections


def lora_params(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family,pooling,heads", [
    ("bert", "auto", ("classifier",)),
    ("distilbert", "auto", ("pre_classifier", "classifier")),
    (DECODER, "auto", ("score",)),
    (ENCODER, "mean", ("classifier",)),  # nlptl's own head class (nlptl/heads.py)
])
def test_only_adapters_and_head_train(family, pooling, heads, checkpoints):
    from nlptl import models

    ref = models.inspect_model(str(checkpoints[family]))
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    model = models.load_classifier(ref, config, ["negative", "positive"], tokenizer, pooling)
    total = models.count_parameters(model)
    models.apply_lora(model, finetune_cfg(lora=True, lora_r=4))
    trainable = lora_params(model)
    assert trainable and sum(trainable.values()) < total / 2
    for name in trainable:
        assert "lora_" in name or any(f"{h}.modules_to_save" in name for h in heads), name
    # Every head module trains in full; each adapted projection has an A and a B of rank 4.
    for h in heads:
        assert any(f"{h}.modules_to_save" in n for n in trainable), h
    a_shapes = [p.shape for n, p in model.named_parameters() if "lora_A" in n]
    assert a_shapes and all(s[0] == 4 for s in a_shapes)
    per_block = 1 if family == DECODER else 2  # GPT-2's fused c_attn, else query and value
    assert len(a_shapes) == per_block * config.num_hidden_layers


def test_default_targets_and_unknown_architecture():
    from nlptl import models
    from nlptl.errors import UsageError

    assert models.lora_targets("bert", None) == ["query", "value"]
    assert models.lora_targets("distilbert", None) == ["q_lin", "v_lin"]
    assert models.lora_targets("gpt2", None) == ["c_attn"]
    assert models.lora_targets("llama", None) == ["q_proj", "v_proj"]
    assert models.lora_targets("bert", "query, key,value") == ["query", "key", "value"]
    with pytest.raises(UsageError, match="--lora-targets"):
        models.lora_targets("no-such-architecture", None)


def test_wrong_targets_is_a_usage_error(checkpoints, corpus_file, tmp_path):
    from nlptl.errors import UsageError
    from nlptl.stages import adapt

    with pytest.raises(UsageError, match="--lora-targets q_proj: no such modules"):
        adapt.run(adapt_cfg(from_model=str(checkpoints[ENCODER]), corpus=str(corpus_file), out=str(tmp_path / "a"),
                            lora=True, lora_targets="q_proj"))


def test_config_checks():
    from nlptl.errors import UsageError

    with pytest.raises(UsageError, match="--merge needs --lora"):
        finetune_cfg(merge=True)
    with pytest.raises(UsageError, match="--lora-targets needs --lora"):
        adapt_cfg(corpus="x", lora_targets="query")
    with pytest.raises(UsageError, match="--lora-r"):
        finetune_cfg(lora=True, lora_r=0)
    with pytest.raises(UsageError, match="--lora-dropout"):
        finetune_cfg(lora=True, lora_dropout=1.5)


def test_missing_peft_is_one_line_with_the_pip_command(monkeypatch, checkpoints, corpus_file, tmp_path):
    import importlib.util

    from nlptl.errors import UsageError
    from nlptl.stages import adapt

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'nlptl\[lora\]'"):
        adapt.run(adapt_cfg(from_model=str(checkpoints[ENCODER]), corpus=str(corpus_file), out=str(tmp_path / "a"),
                            lora=True))
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def lora_finetuned(checkpoints, task_files, tmp_path_factory):
    """family -> finetune run dir trained with --lora --merge on the tiny checkpoint."""
    from nlptl.stages import finetune

    root = tmp_path_factory.mktemp("lora-finetune")

    class Lazy(dict):
        def __missing__(self, key):
            family, pooling = key
            out = root / f"{family}-{pooling}"
            finetune.run(finetune_cfg(from_model=str(checkpoints[family]), train_file=str(task_files["train"]),
                                      eval_file=str(task_files["eval"]), out=str(out), pooling=pooling,
                                      lora=True, merge=True, lora_r=4, lora_dropout=0.0, max_steps=6))
            self[key] = out
            return out

    return Lazy()


@pytest.mark.parametrize("family,pooling", [("bert", "auto"), (DECODER, "auto"), (ENCODER, "concat")])
def test_finetune_merged_equals_base_plus_adapter(family, pooling, lora_finetuned, checkpoints):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nlptl import models

    out = lora_finetuned[(family, pooling)]
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["lora"]["merged"] is True and record["lora"]["r"] == 4
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in (out / "adapter").iterdir()}
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    stock = pooling == "auto"
    # merged with the stock head: saved as the stock class; with nlptl's, under its own model type
    assert json.loads((out / "config.json").read_text())["model_type"] == (family if stock else "nlptl")
    merged = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=not stock).eval()
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    assert not any("lora" in n for n, _ in merged.named_parameters())

    # The same classifier rebuilt the peft way: the base checkpoint with a new head, plus the adapter
    # (whose modules_to_save carry the trained head).
    ref = models.inspect_model(str(checkpoints[family]))
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    base = models.load_classifier(ref, config, ["negative", "positive"], tokenizer, pooling)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    batch = AutoTokenizer.from_pretrained(out)(["the film was great", "awful soup, avoid"], padding=True,
                                               return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, peft_model(**batch).logits, atol=1e-5)
        # and the adapter did something: without it the logits differ
        with peft_model.disable_adapter():
            assert not torch.allclose(merged(**batch).logits, peft_model(**batch).logits, atol=1e-5)


def test_merged_finetune_dir_in_pipeline_and_predict(lora_finetuned):
    from transformers import pipeline

    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    out = lora_finetuned[("bert", "auto")]
    texts = ["the film was great", "awful soup, avoid"]
    theirs = pipeline("text-classification", model=str(out))(texts)
    ours = predict.run(PredictConfig(model=str(out), texts=texts))
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert {t["label"] for t in theirs} <= {"negative", "positive"}


def test_lora_finetune_loss_falls(checkpoints, tmp_path):
    """A batch it can memorize: 16 examples, seen many times; only adapters and head train."""
    from conftest import labelled_rows, write_csv

    from nlptl.stages import finetune

    small = write_csv(tmp_path / "small.csv", labelled_rows(16, seed=3))
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(small),
                                       eval_file=str(small), out=str(tmp_path / "ft"), lora=True,
                                       # mean pooling: the deciding word reaches the head even from a random body
                                       pooling="mean", lr=1e-2, max_steps=60, log_every=20, batch_size=8,
                                       eval_every=60, schedule="constant", warmup_ratio=0.0))
    history = json.loads((tmp_path / "ft" / "nlptl-run.json").read_text())["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result["accuracy"] >= 0.75


@pytest.mark.parametrize("family", [ENCODER, DECODER])
def test_adapt_lora_merge(family, checkpoints, repetitive_corpus, tmp_path):
    """MLM (through the masked-only wrapper) and CLM: perplexity falls; the merged LM loads with
    AutoModelFor*LM and a pipeline; frozen weights are untouched, adapted ones changed."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

    from nlptl.stages import adapt

    out = tmp_path / "lm"
    result = adapt.run(adapt_cfg(from_model=str(checkpoints[family]), corpus=str(repetitive_corpus), out=str(out),
                                 lora=True, merge=True, lora_r=8, lr=1e-2, max_steps=20, lora_dropout=0.0))
    assert result["perplexity"] < result["perplexity_before"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    before, after = load_file(str(checkpoints[family] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    target = "attention.self.query.weight" if family == ENCODER else "attn.c_attn.weight"
    frozen = "attention.self.key.weight" if family == ENCODER else "attn.c_proj.weight"
    changed = [k for k in after if k.endswith(target)]
    assert changed and all(not torch.equal(after[k], before[k]) for k in changed)
    assert all(torch.equal(after[k], before[k]) for k in after if k.endswith(frozen))
    if family == ENCODER:
        AutoModelForMaskedLM.from_pretrained(out)
        fill = pipeline("fill-mask", model=str(out))
        assert len(fill("the cat sat on the <mask> .")) == 5
    else:
        AutoModelForCausalLM.from_pretrained(out)
        gen = pipeline("text-generation", model=str(out))
        assert gen("the cat", max_new_tokens=3, do_sample=False)[0]["generated_text"].startswith("the cat")


def test_unmerged_run_fails_clearly_as_from(checkpoints, corpus_file, task_files, tmp_path):
    from nlptl.config import EvaluateConfig
    from nlptl.errors import UsageError
    from nlptl.stages import adapt, evaluate, finetune

    out = tmp_path / "lm"
    adapt.run(adapt_cfg(from_model=str(checkpoints[DECODER]), corpus=str(corpus_file), out=str(out), lora=True))
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "nlptl-run.json").read_text())["lora"]["merged"] is False
    with pytest.raises(UsageError, match="LoRA adapter without a merged model; merge it first: nlptl merge"):
        finetune.run(finetune_cfg(from_model=str(out), train_file=str(task_files["train"]), out=str(tmp_path / "ft")))
    with pytest.raises(UsageError, match="merge it first: nlptl merge"):
        evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file)))


def test_discriminative_lr_and_unfreezing_apply_to_lora_by_layer(checkpoints):
    from nlptl import models
    from nlptl.optim import GradualUnfreezing, build_optimizer

    ref = models.inspect_model(str(checkpoints["bert"]))
    config = models.load_config(ref)
    model = models.load_classifier(ref, config, ["a", "b"], models.load_tokenizer(ref, config))
    models.apply_lora(model, finetune_cfg(lora=True))
    optimizer = build_optimizer(model, 1e-3, 0.0, discriminative_lr=2.0)
    by_group = {}
    for g in optimizer.param_groups:
        by_group.setdefault(g["group_name"], set()).add(g["lr"])
    # Frozen weights are in no group; the LoRA matrices of each block get that block's rate.
    assert set(by_group) == {"block 0", "block 1", "head"}
    assert by_group["head"] == {1e-3} and by_group["block 1"] == {5e-4} and by_group["block 0"] == {2.5e-4}
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(lora_params(model).values())
    unfreezing = GradualUnfreezing(optimizer, every=1)
    unfreezing.update(0)
    assert n_trainable(unfreezing) == sum(n for k, n in lora_params(model).items() if "classifier" in k)


def test_resume_with_lora_equals_uninterrupted(checkpoints, task_files, tmp_path, monkeypatch):
    import signal

    from safetensors.torch import load_file

    from nlptl import train as trainmod
    from nlptl.errors import Interrupted
    from nlptl.stages import finetune

    def cfg(out, **kw):
        return finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                            eval_file=str(task_files["eval"]), out=str(out), lora=True, max_steps=6, eval_every=3,
                            **kw)

    finetune.run(cfg(tmp_path / "whole"))
    original = trainmod._StopFlag.install

    def stop_at_once(self):  # a Ctrl-C during the first step
        original(self)
        self.signal = signal.SIGINT

    monkeypatch.setattr(trainmod._StopFlag, "install", stop_at_once)
    with pytest.raises(Interrupted):
        finetune.run(cfg(tmp_path / "cut"))
    monkeypatch.setattr(trainmod._StopFlag, "install", original)
    assert (tmp_path / "cut" / "checkpoints" / "step-000001").is_dir()
    finetune.run(cfg(tmp_path / "cut", resume=True))
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def n_trainable(unfreezing) -> int:
    """Parameters in the layer groups gradual unfreezing lets train."""
    return sum(p.numel() for g in unfreezing.optimizer.param_groups
               if g.get("layer_group", 0) >= unfreezing.trainable_from for p in g["params"])
