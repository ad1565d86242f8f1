"""`nlptl merge` (stages/merge.py): a run trained with --lora and no --merge becomes one plain checkpoint
that gives the same logits as base + adapter, and that predict, serve and export take."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from conftest import adapt_cfg, finetune_cfg  # noqa: E402

from nlptl.config import MergeConfig, PredictConfig  # noqa: E402
from nlptl.errors import UsageError  # noqa: E402
from nlptl.stages import merge, predict  # noqa: E402

TEXTS = ["the film was great", "awful soup, avoid", "To be fair, the jacket was great."]


@pytest.fixture(scope="module")
def unmerged(checkpoints, task_files, tmp_path_factory):
    from nlptl.stages import finetune

    root = tmp_path_factory.mktemp("unmerged")

    class Lazy(dict):
        def __missing__(self, key):
            family, pooling = key
            out = root / f"{family}-{pooling}"
            finetune.run(finetune_cfg(from_model=str(checkpoints[family]), train_file=str(task_files["train"]),
                                      eval_file=str(task_files["eval"]), out=str(out), pooling=pooling,
                                      lora=True, lora_r=4, lora_dropout=0.0, max_steps=4))
            self[key] = out
            return out

    return Lazy()


@pytest.mark.parametrize("family,pooling", [("bert", "auto"), ("gpt2", "auto"), ("distilbert", "concat")])
def test_merged_equals_base_plus_adapter(family, pooling, unmerged, checkpoints, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nlptl import models

    src = unmerged[(family, pooling)]
    out = tmp_path / "merged"
    result = merge.run(MergeConfig(model=str(src), out=str(out)))
    assert result["output_dir"] == str(out)
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["lora"]["merged"] is True and record["lora"]["merged_by"] == "nlptl merge"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == (family if pooling == "auto" else "nlptl")  # nlptl's head: a type of its own
    assert (out / "modeling_nlptl.py").is_file() == (pooling != "auto")
    merged = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=pooling != "auto").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())

    ref = models.inspect_model(str(checkpoints[family]))
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    base = models.load_classifier(ref, config, ["negative", "positive"], tokenizer, pooling)
    peft_model = PeftModel.from_pretrained(base, src / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, peft_model(**batch).logits, atol=1e-5)
    rows = predict.run(PredictConfig(model=str(out), texts=TEXTS))
    assert [r["text"] for r in rows] == TEXTS
    assert "nlptl serve" in (out / "README.md").read_text()


def test_merged_run_exports(unmerged, tmp_path):
    pytest.importorskip("onnxruntime")
    from nlptl.config import ExportConfig
    from nlptl.stages import export

    out = tmp_path / "merged"
    merge.run(MergeConfig(model=str(unmerged[("bert", "auto")]), out=str(out)))
    result = export.run(ExportConfig(model=str(out), out=str(tmp_path / "onnx")))
    assert result["parity"]["max_abs_diff"] <= 1e-4


def test_unmerged_language_model_merges(checkpoints, corpus_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from nlptl.stages import adapt

    src = tmp_path / "lm"
    adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(src), lora=True))
    out = tmp_path / "merged"
    merge.run(MergeConfig(model=str(src), out=str(out)))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_bad_uses(unmerged, finetuned, tmp_path):
    with pytest.raises(UsageError, match="not a run trained with --lora"):
        merge.run(MergeConfig(model=str(finetuned["bert"][0]), out=str(tmp_path / "x")))
    with pytest.raises(UsageError, match="no such directory"):
        merge.run(MergeConfig(model=str(tmp_path / "nothing"), out=str(tmp_path / "x")))
    src = unmerged[("bert", "auto")]
    with pytest.raises(UsageError, match="is MODEL"):
        merge.run(MergeConfig(model=str(src), out=str(src)))
    out = tmp_path / "m"
    merge.run(MergeConfig(model=str(src), out=str(out)))
    with pytest.raises(UsageError, match="merged already"):
        merge.run(MergeConfig(model=str(out), out=str(tmp_path / "again")))
    with pytest.raises(UsageError, match="--overwrite"):
        merge.run(MergeConfig(model=str(src), out=str(out)))
    merge.run(MergeConfig(model=str(src), out=str(out), overwrite=True))


def test_a_second_merge_into_one_out_is_refused(unmerged, tmp_path):
    """A merge in flight holds --out's lock: another merge into it fails at once, naming its pid, as a
    second training run does (test_run_dir.py)."""
    from conftest import hold_lock

    out = tmp_path / "merged"
    holder = hold_lock(out)
    try:
        with pytest.raises(UsageError, match=rf"--out {out} is in use by another nlptl run \(pid {holder.pid}\)"):
            merge.run(MergeConfig(model=str(unmerged[("bert", "auto")]), out=str(out)))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    merge.run(MergeConfig(model=str(unmerged[("bert", "auto")]), out=str(out)))
    assert not (tmp_path / ".merged.lock").exists()  # released, and removed


def test_card_says_how_to_serve_and_export(unmerged, finetuned):
    """A finetune run's model card: serve and export commands; an unmerged LoRA run's: merge first."""
    run_dir, _ = finetuned["bert"]
    card = (run_dir / "README.md").read_text()
    assert f"nlptl serve {run_dir}" in card and f"nlptl export {run_dir} --format onnx" in card
    card = (unmerged[("bert", "auto")] / "README.md").read_text()
    assert "nlptl merge" in card and "-merged --format onnx" in card


def test_command_line_merge(unmerged, tmp_path, capsys):
    from cli_helpers import call_main

    out = tmp_path / "merged"
    assert call_main(["merge", unmerged[("bert", "auto")], "--out", out, "--json"], tmp_path) == 0
    assert json.loads(capsys.readouterr().out)["output_dir"] == str(out)
    assert call_main(["merge", out, "--out", tmp_path / "again"], tmp_path) == 2
    assert "merged already" in capsys.readouterr().err


def test_merged_keeps_the_task_shape(checkpoints, tmp_path):
    """A LoRA run of another task shape merges into a classifier of that shape (problem_type, windows...)."""
    from conftest import labelled_rows, write_csv

    from nlptl.stages import finetune

    rows = [(t + " and more words to read", f"{lab};long") for t, lab in labelled_rows(40)]
    src = tmp_path / "run"
    finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), task="multilabel", label_column="tags",
                              train_file=str(write_csv(tmp_path / "tags.csv", rows, header=("text", "tags"))),
                              out=str(src), lora=True, lora_r=4, max_steps=2, threshold=0.4, long_docs="chunk",
                              window=12, stride=2))
    out = tmp_path / "merged"
    merge.run(MergeConfig(model=str(src), out=str(out)))
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["nlptl_threshold"] == 0.4
    assert (config["nlptl_window"], config["nlptl_stride"]) == (12, 2)
    row = predict.run(PredictConfig(model=str(out), texts=[rows[0][0]]))[0]
    assert row["threshold"] == 0.4 and set(row["scores"]) == {"long", "negative", "positive"}
