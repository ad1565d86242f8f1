"""Interoperability: nlptl's stage directories load in plain transformers (Auto classes and pipelines),
and checkpoints saved elsewhere (plain `save_pretrained` directories) work as `--from` for every stage.

A finetune directory either loads in stock transformers as it is, with the labels `nlptl predict` gives
(a stock head), or stock transformers refuses it without `trust_remote_code=True` (nlptl's head, whose
`model_type` is its own): never a stock class with a new random head (issue 24).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import adapt_cfg, finetune_cfg


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_adapt_dir_in_fill_mask_pipeline(family, adapted):
    from transformers import AutoModelForMaskedLM, pipeline

    out, _ = adapted[family]
    AutoModelForMaskedLM.from_pretrained(out)
    fill = pipeline("fill-mask", model=str(out))
    predictions = fill(f"the cat sat on the {fill.tokenizer.mask_token} .")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapt_dir_in_text_generation_pipeline(family, adapted):
    from transformers import AutoModelForCausalLM, pipeline

    out, _ = adapted[family]
    AutoModelForCausalLM.from_pretrained(out)
    generate = pipeline("text-generation", model=str(out))
    text = generate("the cat", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("the cat") and len(text) > len("the cat")


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2"])
def test_finetune_dir_in_text_classification_pipeline(family, finetuned, task_files):
    from transformers import pipeline

    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    out, _ = finetuned[family]
    texts = ["the film was great from start to finish.", "the soup was awful for the price."]
    theirs = pipeline("text-classification", model=str(out))(texts)
    ours = predict.run(PredictConfig(model=str(out), texts=texts))
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert {t["label"] for t in theirs} <= {"negative", "positive"}  # names, not LABEL_0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and "auto_map" not in config  # a stock head, saved as the stock class


TEXTS = ["the film was great from start to finish.", "the soup was awful for the price.", "ok",
         "Frankly, the camera was great by any measure, and the strap was awful."]

# Stock transformers, in a fresh process: nlptl registers its head's classes in its own process (and a
# trust_remote_code load registers them process-wide), so the test process is no stock transformers.
# Without trust_remote_code each of AutoConfig, AutoModelForSequenceClassification and pipeline() either
# loads the directory (then the pipeline's answers are kept) or raises (its message is kept); with it,
# the pipeline's answers and the model's own logits.
STOCK_SCRIPT = """
import json, sys
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

def attempt(load):
    try:
        return {"loaded": load()}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}

def answers(clf):
    return [[r["label"], r["score"]] for r in clf(texts)]

def model_answers(model, directory):
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        probs = model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    return [[model.config.id2label[int(p.argmax())], float(p.max())] for p in probs]

texts, out = json.loads(sys.argv[2]), {}
for d in sys.argv[3:]:
    out[d] = {
        "config": attempt(lambda: type(AutoConfig.from_pretrained(d)).__name__),
        "model": attempt(lambda: model_answers(AutoModelForSequenceClassification.from_pretrained(d), d)),
        "pipeline": attempt(lambda: answers(pipeline("text-classification", model=d))),
        "trusted_model": attempt(lambda: model_answers(
            AutoModelForSequenceClassification.from_pretrained(d, trust_remote_code=True), d)),
        "trusted_pipeline": attempt(lambda: answers(pipeline("text-classification", model=d, trust_remote_code=True))),
    }
with open(sys.argv[1], "w") as f:  # not stdout: transformers prints its trust_remote_code question there
    json.dump(out, f)
"""


def stock_transformers(dirs: list, tmp_path) -> dict:
    """What stock transformers (a fresh process, no nlptl import) makes of each directory (STOCK_SCRIPT)."""
    home = tmp_path / "hf-home"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_MODULES_CACHE": str(home / "modules"),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    # stdin closed: transformers asks on a terminal whether to run the custom code; here it must refuse.
    result = tmp_path / "stock.json"
    proc = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, str(result), json.dumps(TEXTS), *map(str, dirs)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def heads(checkpoints, task_files, tmp_path_factory) -> dict:
    """name -> finetune directory: nlptl's head (bert --pooling mean) and a stock head (bert --pooling cls)."""
    from nlptl.stages import finetune

    root = tmp_path_factory.mktemp("heads")
    dirs = {}
    for name, pooling in (("nlptl-head", "mean"), ("stock-head", "cls")):
        dirs[name] = root / name
        finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                  eval_file=str(task_files["eval"]), out=str(dirs[name]), pooling=pooling))
    return dirs


@pytest.fixture(scope="module")
def stock(heads, tmp_path_factory) -> dict:
    results = stock_transformers(list(heads.values()), tmp_path_factory.mktemp("stock"))
    return {name: results[str(d)] for name, d in heads.items()}


def _predicted(directory) -> list[list]:
    """[label, score] per text, as `nlptl predict --raw-scores` gives them (transformers knows nothing of the
    temperature finetune fitted)."""
    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    return [[r["label"], r["score"]] for r in predict.run(PredictConfig(model=str(directory), texts=TEXTS,
                                                                        raw_scores=True))]


def assert_same_answers(theirs: list[list], ours: list[list]) -> None:
    assert [t[0] for t in theirs] == [o[0] for o in ours]
    assert [t[1] for t in theirs] == pytest.approx([o[1] for o in ours], abs=1e-5)


def test_nlptl_head_refused_by_stock_transformers_without_trust_remote_code(heads, stock):
    """Stock transformers used to load nlptl's mean-pooled BERT as BertForSequenceClassification with a new
    random pooler and classifier, and only log it (issue 24): now each way in refuses, asking for
    trust_remote_code."""
    config = json.loads((heads["nlptl-head"] / "config.json").read_text())
    assert config["model_type"] == "nlptl" and config["backbone_model_type"] == "bert"
    assert config["auto_map"] == {"AutoConfig": "modeling_nlptl.NlptlConfig",
                                  "AutoModelForSequenceClassification": "modeling_nlptl.NlptlForSequenceClassification"}
    assert (heads["nlptl-head"] / "modeling_nlptl.py").is_file()
    for way in ("config", "model", "pipeline"):
        assert "trust_remote_code=True" in stock["nlptl-head"][way].get("error", ""), (way, stock["nlptl-head"][way])


def test_nlptl_head_with_trust_remote_code_agrees_with_predict(heads, stock):
    ours = _predicted(heads["nlptl-head"])
    assert_same_answers(stock["nlptl-head"]["trusted_pipeline"]["loaded"], ours)
    assert_same_answers(stock["nlptl-head"]["trusted_model"]["loaded"], ours)


def test_stock_head_loads_in_stock_transformers_without_trust_remote_code(heads, stock):
    config = json.loads((heads["stock-head"] / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForSequenceClassification"]
    assert "auto_map" not in config and not (heads["stock-head"] / "modeling_nlptl.py").exists()
    ours = _predicted(heads["stock-head"])
    assert stock["stock-head"]["config"] == {"loaded": "BertConfig"}
    assert_same_answers(stock["stock-head"]["pipeline"]["loaded"], ours)
    assert_same_answers(stock["stock-head"]["model"]["loaded"], ours)


def test_finetune_dir_of_an_older_nlptl_still_loads(heads, tmp_path):
    """Before issue 24 nlptl's head was saved under its backbone's model_type, with `nlptl_pooling` and an
    auto_map for the model class alone: such directories still predict, as they did."""
    old = tmp_path / "old"
    shutil.copytree(heads["nlptl-head"], old)
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = config.pop("backbone_model_type")
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_nlptl.NlptlForSequenceClassification"}
    (old / "config.json").write_text(json.dumps(config))
    assert config["model_type"] == "bert" and config["nlptl_pooling"] == "mean"
    assert_same_answers(_predicted(old), _predicted(heads["nlptl-head"]))


def test_nlptl_config_keeps_the_backbone(tmp_path):
    """The head's config carries its backbone's keys under the backbone's own names (GPT-2: n_embd), answers
    transformers' common names for them (hidden_size), and saves and loads back to the same backbone."""
    from transformers import AutoConfig, GPT2Config

    from nlptl.heads import NlptlConfig, register
    from nlptl.models import positions_of

    register()
    gpt = GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=64, vocab_size=99)
    head = NlptlConfig.wrap(gpt)
    head.nlptl_pooling = "mean"
    assert head.model_type == "nlptl" and head.backbone_model_type == "gpt2"
    assert head.hidden_size == head.n_embd == 48 and head.num_hidden_layers == 3
    head.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nlptl" and saved["n_embd"] == 48 and "hidden_size" not in saved
    again = AutoConfig.from_pretrained(tmp_path)
    assert type(again) is NlptlConfig and again.nlptl_pooling == "mean"
    body = again.unwrap()
    assert type(body) is GPT2Config and body.nlptl_pooling == "mean"  # the head's keys ride along

    def backbone_keys(c):
        return {k: v for k, v in c.to_diff_dict().items() if k not in ("nlptl_pooling", "transformers_version")}

    assert backbone_keys(body) == backbone_keys(gpt)
    # a RoBERTa's positions start after its padding index, nlptl's head on it or not
    config = {"model_type": "nlptl", "backbone_model_type": "roberta", "max_position_embeddings": 514}
    assert positions_of(config) == 512


def test_plain_checkpoint_as_from_for_every_stage(checkpoints, corpus_file, task_files, tmp_path):
    """A random-init model + tokenizer saved with save_pretrained (not made by nlptl): pretrain takes it
    (and continues it on a corpus), adapt and finetune start from it, and the chain goes on."""
    from nlptl.config import PretrainConfig
    from nlptl.stages import adapt, finetune, pretrain

    plain = checkpoints["bert"]
    assert not (plain / "nlptl-run.json").exists()
    taken = pretrain.run(PretrainConfig(from_model=str(plain), out=str(tmp_path / "general")))
    assert taken["lineage"]["source"] == "checkpoint"
    continued = pretrain.run(PretrainConfig(from_model=str(plain), corpus=str(corpus_file), out=str(tmp_path / "cont"),
                                            block_size=32, validation_percentage=10.0, max_steps=2, batch_size=4,
                                            precision="fp32"))
    assert continued["steps"] == 2 and continued["lineage"]["source"] == "checkpoint, continued"
    for base in (plain, tmp_path / "general"):
        lm = adapt.run(adapt_cfg(from_model=str(base), corpus=str(corpus_file), out=str(tmp_path / f"lm-{base.name}")))
        assert lm["steps"] == 4
    ft = finetune.run(finetune_cfg(from_model=str(plain), train_file=str(task_files["train"]),
                                   eval_file=str(task_files["eval"]), out=str(tmp_path / "ft")))
    record = json.loads((tmp_path / "ft" / "nlptl-run.json").read_text())
    assert ft["steps"] == 4 and record["lineage"]["base_model"] == str(plain.resolve())
