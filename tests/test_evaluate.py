"""`nlptl evaluate` (stages/evaluate.py): accuracy/F1 of a classifier, perplexity of a language model."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import write_csv

from nlptl.config import EvaluateConfig, PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import evaluate, predict


def rows_of(path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def test_classifier_metrics_match_its_predictions(trained_classifier, task_files, no_bf16):
    """Accuracy and macro-F1 recomputed by hand from predict's labels."""
    out, _ = trained_classifier
    rows = rows_of(task_files["test"])
    result = evaluate.run(EvaluateConfig(model=str(out), data=str(task_files["test"])))
    assert result["n_eval"] == len(rows) == 40
    preds = [p["label"] for p in predict.run(PredictConfig(model=str(out), texts=[t for t, _ in rows]))]
    gold = [label for _, label in rows]
    accuracy = sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold)
    f1s = []
    for c in ("negative", "positive"):
        tp = sum(p == g == c for p, g in zip(preds, gold, strict=True))
        fp = sum(p == c != g for p, g in zip(preds, gold, strict=True))
        fn = sum(g == c != p for p, g in zip(preds, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["f1_macro"] == pytest.approx(sum(f1s) / 2)
    assert result["accuracy"] >= 0.8  # the trained classifier generalises to the unseen test rows
    assert result["lineage"]["stage"] == "finetune"


def test_labels_as_names_or_ids_give_the_same_metrics(trained_classifier, task_files, tmp_path):
    out, _ = trained_classifier
    rows = rows_of(task_files["test"])
    ids = {"negative": "0", "positive": "1"}
    write_csv(tmp_path / "ids.csv", [(t, ids[label]) for t, label in rows])
    write_csv(tmp_path / "upper.csv", [(t, label.upper()) for t, label in rows])
    by_name = evaluate.run(EvaluateConfig(model=str(out), data=str(task_files["test"])))
    by_id = evaluate.run(EvaluateConfig(model=str(out), data=str(tmp_path / "ids.csv")))
    by_upper = evaluate.run(EvaluateConfig(model=str(out), data=str(tmp_path / "upper.csv")))
    for other in (by_id, by_upper):
        assert (other["accuracy"], other["f1_macro"], other["n_eval"]) == (
            by_name["accuracy"], by_name["f1_macro"], by_name["n_eval"])
        assert other["loss"] == pytest.approx(by_name["loss"])


def test_unknown_labels_are_refused(trained_classifier, tmp_path):
    out, _ = trained_classifier
    write_csv(tmp_path / "bad.csv", [("fine", "positive"), ("meh", "neutral"), ("ok", "7")])
    with pytest.raises(UsageError, match="'neutral', '7'.*its labels are negative, positive"):
        evaluate.run(EvaluateConfig(model=str(out), data=str(tmp_path / "bad.csv")))


@pytest.mark.parametrize("family,objective", [("gpt2", "clm"), ("bert", "mlm")])
def test_language_model_perplexity(adapted, corpus_file, family, objective):
    out, _ = adapted[family]
    result = evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file)))
    assert result["objective"] == objective
    assert result["n_eval"] > 10 and result["eval_tokens"] > 0
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 1 < result["perplexity"] < 1e4
    assert result["lineage"]["stage"] == "adapt"
    # Fixed masks (MLM) and no randomness (CLM): the same model scores the same twice.
    assert evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file)))["perplexity"] == result["perplexity"]
    if objective == "mlm":  # another mask seed, other masked positions
        assert evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file), seed=7))["loss"] != result["loss"]


def test_causal_perplexity_by_hand(adapted, corpus_file, no_bf16):
    """The CLM loss is next-token cross-entropy over the packed blocks (labels shifted by one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nlptl.data.corpora import load_corpus, resolve_corpus
    from nlptl.data.lm import pack_blocks

    out, _ = adapted["gpt2"]
    result = evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file), block_size=32))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    src = resolve_corpus(str(corpus_file))
    blocks = pack_blocks(load_corpus(src), tokenizer, 32, corpus_key="by-hand")
    ids = torch.tensor(blocks["input_ids"], dtype=torch.long)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # transformers shifts the labels itself
    assert result["n_eval"] == len(blocks)
    assert result["eval_tokens"] == len(blocks) * 31
    assert result["loss"] == pytest.approx(loss, rel=1e-4)


def test_block_size_defaults_to_the_trained_one(adapted, corpus_file):
    out, _ = adapted["gpt2"]
    default = evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file)))
    explicit = evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file), block_size=32))
    assert default["n_eval"] == explicit["n_eval"] and default["loss"] == explicit["loss"]
    smaller_blocks = evaluate.run(EvaluateConfig(model=str(out), data=str(corpus_file), block_size=16))
    assert smaller_blocks["n_eval"] > default["n_eval"]


def test_labels_spelled_as_the_task_allows(trained_classifier, task_files, tmp_path):
    """A classifier fine-tuned on a task with label aliases (sentiment: pos/neg, 0/1) is evaluated on
    files that spell labels the same ways finetune accepted."""
    import json
    import shutil

    out, _ = trained_classifier
    clf = shutil.copytree(out, tmp_path / "clf")
    record = json.loads((clf / "nlptl-run.json").read_text())
    record["lineage"]["task"] = "sample-sentiment"
    (clf / "nlptl-run.json").write_text(json.dumps(record))
    rows = rows_of(task_files["test"])
    short = write_csv(tmp_path / "short.csv", [(t, {"positive": "pos", "negative": "neg"}[y]) for t, y in rows])
    full = evaluate.run(EvaluateConfig(model=str(clf), data=str(task_files["test"])))
    aliased = evaluate.run(EvaluateConfig(model=str(clf), data=str(short)))
    assert aliased["accuracy"] == full["accuracy"] and aliased["n_eval"] == full["n_eval"]


def test_a_file_is_read_by_finetunes_reader(trained_classifier, tmp_path):
    """evaluate reads and encodes its --data with finetune's reader (data/tasks.py encode): an empty label
    cell is named as such (it was reported as an unknown label ''), and a row without text is dropped."""
    out, _ = trained_classifier
    write_csv(tmp_path / "empty.csv", [("fine", "positive"), ("meh", ""), ("ok", "negative")])
    with pytest.raises(UsageError, match="1 row\\(s\\) have an empty 'label' value \\(first at data row 2\\)"):
        evaluate.run(EvaluateConfig(model=str(out), data=str(tmp_path / "empty.csv")))
    write_csv(tmp_path / "blank.csv", [("fine", "positive"), (" ", "negative"), ("awful", "negative")])
    assert evaluate.run(EvaluateConfig(model=str(out), data=str(tmp_path / "blank.csv")))["n_eval"] == 2


def test_the_lm_rules_evaluate_follows():
    """A checkpoint without a recorded block size is scored in the LM stages' default blocks, and with the
    objective of the LM head it carries, else its family's (models.trained_objective)."""
    from types import SimpleNamespace

    from nlptl.config import LMConfig
    from nlptl.models import trained_objective

    assert evaluate.DEFAULT_BLOCK_SIZE == LMConfig().block_size == 128
    bert = {"model_type": "bert", "is_decoder": False}
    assert trained_objective(SimpleNamespace(**bert, architectures=["BertLMHeadModel"])) == "clm"
    assert trained_objective(SimpleNamespace(**bert, architectures=["BertForMaskedLM"])) == "mlm"
    assert trained_objective(SimpleNamespace(**bert, architectures=None)) == "mlm"
    assert trained_objective(SimpleNamespace(model_type="gpt2", architectures=["GPT2Model"])) == "clm"
