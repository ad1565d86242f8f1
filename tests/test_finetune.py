"""`nlptl finetune` (stages/finetune.py): a sequence classifier on top of the (adapted) language model."""

from __future__ import annotations

import json
import math

import pytest
from conftest import finetune_cfg, write_csv

from nlptl.config import EvaluateConfig, PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import evaluate, finetune, predict

TEXTS = ["The soup was great from start to finish.", "Frankly, the laptop was awful.",
         "My friend said the concert was great and I would say so again, twice, with feeling.", "awful",
         "In the end the sofa was awful for the price.", "great"]


def test_learns_an_easy_task(trained_classifier):
    out, result = trained_classifier
    assert result["accuracy"] >= 0.85 and result["f1_macro"] >= 0.85, result
    assert result["loss"] < 0.5 < math.log(2)
    history = json.loads((out / "nlptl-run.json").read_text())["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    evals = [h for h in history if "eval_accuracy" in h]
    assert len(evals) >= 4  # a few evaluations per run by default


def test_best_checkpoint_is_kept(trained_classifier, task_files, no_bf16):
    """The recorded metrics are the best evaluation's, and they are what the saved directory scores."""
    out, result = trained_classifier
    record = json.loads((out / "nlptl-run.json").read_text())
    evals = {h["step"]: h for h in record["history"] if "eval_accuracy" in h}
    best = max(h["eval_accuracy"] for h in evals.values())
    assert result["accuracy"] == best == record["metrics"]["accuracy"]
    assert evals[result["best_step"]]["eval_accuracy"] == best

    again = evaluate.run(EvaluateConfig(model=str(out), data=str(task_files["eval"])))
    assert again["accuracy"] == result["accuracy"]
    assert again["f1_macro"] == pytest.approx(result["f1_macro"])
    assert again["loss"] == pytest.approx(result["loss"], rel=1e-4)
    assert again["n_eval"] == result["n_eval"] == 40


def test_lineage_chains_back_to_the_base_checkpoint(finetuned, adapted, checkpoints, task_files):
    out, result = finetuned["bert"]
    lineage = result["lineage"]
    assert lineage["stage"] == "finetune" and lineage["task"] == "classification"
    assert lineage["labels"] == ["negative", "positive"] and lineage["max_length"] == 32
    assert lineage["parent"] == adapted["bert"][1]["lineage"]
    assert lineage["parent"]["base_model"] == str(checkpoints["bert"].resolve())
    assert lineage["train"]["spec"] == str(task_files["train"])
    assert lineage["eval"]["spec"] == str(task_files["eval"])
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "finetune" and record["max_length"] == 32


def test_string_labels_of_a_classification_task(checkpoints, tmp_path):
    """Labels named in the file become the classifier's label set (sorted), written to config.json."""
    from transformers import AutoConfig

    rows = []
    for i in range(30):
        rows += [(f"rain and wind all day {i}", "weather"), (f"bread and soup for lunch {i}", "food"),
                 (f"the team scored twice {i}", "Sports" if i % 5 == 0 else "sports")]
    write_csv(tmp_path / "topics.csv", rows, header=("sentence", "topic"))
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["distilbert"]),
                                       train_file=str(tmp_path / "topics.csv"),
                                       text_column="sentence", label_column="topic", out=str(tmp_path / "out"),
                                       max_steps=2))
    config = AutoConfig.from_pretrained(tmp_path / "out")
    # Labels differing only in case are one label, named by its most frequent spelling.
    assert config.id2label == {0: "food", 1: "sports", 2: "weather"}, config.id2label
    assert config.label2id == {"food": 0, "sports": 1, "weather": 2}
    assert result["lineage"]["labels"] == ["food", "sports", "weather"]
    preds = predict.run(PredictConfig(model=str(tmp_path / "out"), texts=["rain again"]))
    assert preds[0]["label"] in {"food", "sports", "weather"}


def test_labels_map_to_ids_by_name():
    """Each row's id names its own label; integer labels of a named task map by position."""
    import datasets

    from nlptl.data.registry import task_entry
    from nlptl.data.tasks import TaskSpec, encode, label_names

    spec = TaskSpec(task_entry("classification"), None, None, "text", "label")
    raw = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": ["pear", "apple", "fig", "apple"]})
    names = label_names(spec, raw["label"])
    assert names == ["apple", "fig", "pear"]
    assert encode(raw, names, spec, "--train", "x")["label"] == [2, 0, 1, 0]
    # Numeric labels sort as numbers, not strings.
    assert label_names(spec, ["10", "2", "1", "2"]) == ["1", "2", "10"]

    sentiment = TaskSpec(task_entry("sample-sentiment"), None, None, "text", "label")
    raw = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": ["1", "0", "positive", "NEG"]})
    names = label_names(sentiment, raw["label"])
    assert names == ["negative", "positive"]
    assert encode(raw, names, sentiment, "--train", "x")["label"] == [1, 0, 1, 0]


def test_registered_task_with_integer_labels(checkpoints, tmp_path):
    """sample-sentiment (shipped data, labels 0/1): the classifier's labels are the task's names."""
    from transformers import AutoConfig

    result = finetune.run(finetune_cfg(task="sample-sentiment", from_model=str(checkpoints["gpt2"]),
                                       out=str(tmp_path / "out"), max_steps=2))
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.id2label == {0: "negative", 1: "positive"}
    assert result["n_train"] == 1600 and result["n_eval"] == 300  # the task's own eval file


def test_held_out_slice_is_seeded_stratified_and_disjoint():
    import datasets

    from nlptl.data.task_data import held_out_slice

    n = 200
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [i % 4 == 0 for i in range(n)],
                                     "idx": list(range(n))})
    ds = ds.cast_column("label", datasets.Value("int64"))
    train, held = held_out_slice(ds, ["a", "b"], 0.1, seed=3)
    assert len(held) == 20 and len(train) == 180
    assert set(train["idx"]).isdisjoint(held["idx"]) and set(train["idx"]) | set(held["idx"]) == set(range(n))
    assert sum(held["label"]) == 5  # stratified: a quarter of the rows are label 1
    assert held_out_slice(ds, ["a", "b"], 0.1, seed=3)[1]["idx"] == held["idx"]
    assert held_out_slice(ds, ["a", "b"], 0.1, seed=4)[1]["idx"] != held["idx"]


def test_without_eval_file_a_seeded_slice_of_train_is_held_out(checkpoints, task_files, tmp_path):
    runs = [finetune.run(finetune_cfg(from_model=str(checkpoints["distilbert"]), train_file=str(task_files["train"]),
                                      out=str(tmp_path / f"r{i}"), max_steps=1)) for i in range(2)]
    for result in runs:
        assert result["n_eval"] == 24 and result["n_train"] == 216
        assert result["lineage"]["eval"] == {"slice_of_train": 0.1, "seed": 42}
    # Same seed, same slice: the runs score the same examples with the same model.
    assert runs[0]["accuracy"] == runs[1]["accuracy"] and runs[0]["loss"] == pytest.approx(runs[1]["loss"])


def test_single_class_training_file_is_refused(checkpoints, tmp_path):
    write_csv(tmp_path / "one.csv", [(f"text {i}", "yes") for i in range(10)])
    with pytest.raises(UsageError, match="single class"):
        finetune.run(finetune_cfg(from_model=str(checkpoints["distilbert"]), train_file=str(tmp_path / "one.csv"),
                                  out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def _pipeline(out, texts, batch_size):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out), device="cpu", top_k=None)
    return [{d["label"]: d["score"] for d in row} for row in clf(texts, batch_size=batch_size)]


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_transformers_pipeline_agrees_with_predict(which, finetuned, trained_classifier):
    """The run directory is a plain Hugging Face checkpoint: `pipeline` gives the labels predict gives,
    batched (a GPT-2 classifier pads with the EOS token nlptl set as its pad token)."""
    out = finetuned["distilbert"][0] if which == "encoder" else trained_classifier[0]
    # pipeline() knows nothing of the temperature finetune fitted: compared with the raw scores.
    ours = predict.run(PredictConfig(model=str(out), texts=TEXTS, batch_size=4, raw_scores=True))
    theirs = _pipeline(out, TEXTS, batch_size=4)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine["scores"] == pytest.approx(other, abs=1e-5)
        if abs(mine["scores"]["positive"] - mine["scores"]["negative"]) > 1e-4:  # not a tie
            assert mine["label"] == max(other, key=other.get)
    if which == "decoder":  # the trained classifier gets the sentences right (bare words are out of its data)
        assert [ours[i]["label"] for i in (0, 1, 2, 4)] == ["positive", "negative", "positive", "negative"]


def test_gpt2_classifier_batches_with_padding(trained_classifier):
    """Padding must not change a decoder's prediction: the head reads the last real token."""
    out, _ = trained_classifier
    one = predict.run(PredictConfig(model=str(out), texts=TEXTS, batch_size=1))
    many = predict.run(PredictConfig(model=str(out), texts=TEXTS, batch_size=len(TEXTS)))
    for a, b in zip(one, many, strict=True):
        assert a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_the_held_out_slice_leaves_every_class_a_training_example(caplog):
    """No --eval: a class too small to be split (one example) stays in training, whatever the seed, and
    the run says so; before, an unstratified fallback could hold out a class's only example."""
    import logging

    import datasets

    from nlptl.data.task_data import held_out_slice

    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(40)], "label": [0] * 20 + [1] * 19 + [2]})
    for seed in range(30):
        with caplog.at_level(logging.WARNING, logger="nlptl"):
            train, held = held_out_slice(ds, ["a", "b", "rare"], 0.1, seed)
        assert set(train["label"]) == {0, 1, 2}, seed
        assert len(train) + len(held) == 40 and 2 not in held["label"]
    assert "'rare' has too few examples to hold any out" in caplog.text


def test_labels_that_differ_only_in_case_are_merged_with_a_warning(caplog):
    """'Sports' and 'sports' are one label (matched ignoring case, the most frequent spelling names it),
    and the run says so: they may have been meant as two classes."""
    import logging

    from nlptl.data.registry import task_entry
    from nlptl.data.tasks import TaskSpec, label_names

    spec = TaskSpec(task_entry("classification"), None, None, "text", "label")
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        assert label_names(spec, ["pear", "apple", "pear "]) == ["apple", "pear"]
    assert not caplog.text  # surrounding spaces are not another spelling worth a word
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        assert label_names(spec, ["Sports", "sports", "Sports", "news", "SPORTS"]) == ["Sports", "news"]
    assert "labels 'Sports' (2), 'SPORTS' (1) and 'sports' (1) differ only in case: one label, 'Sports'" in caplog.text


def test_a_held_out_slice_of_only_single_examples_is_kept_with_a_warning(caplog):
    """Every class with one example (--numeric-classes on distinct numbers): nothing could be moved back
    without leaving no slice to select with; it stays, and the run says what it lacks."""
    import logging

    import datasets

    from nlptl.data.task_data import held_out_slice

    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": list(range(30))})
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        train, held = held_out_slice(ds, [str(i) for i in range(30)], 0.1, 42)
    assert len(held) == 3 and len(train) == 27
    assert "3 classes have no training example" in caplog.text
