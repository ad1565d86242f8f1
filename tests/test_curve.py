"""Learning curves: stratified label subsets fixed by seed, mean and std over seeds, two models in one call."""

from __future__ import annotations

import csv
import json

import pytest


def test_stratified_subset_keeps_proportions_and_is_fixed_by_seed():
    import datasets

    from nlptl.stages.curve import stratified_subset

    ds = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(100)], "labels": [0] * 80 + [1] * 20})
    a = stratified_subset(ds, 20, ["neg", "pos"], seed=1)
    b = stratified_subset(ds, 20, ["neg", "pos"], seed=1)
    c = stratified_subset(ds, 20, ["neg", "pos"], seed=2)
    assert len(a) == 20 and sorted(a["labels"]) == [0] * 16 + [1] * 4
    assert a["input_ids"] == b["input_ids"] and a["input_ids"] != c["input_ids"]
    assert len(stratified_subset(ds, None, ["neg", "pos"], seed=1)) == 100


def test_learning_curve_compares_two_models(tmp_path, monkeypatch):
    from nlptl.config import AdaptConfig, FinetuneConfig, PretrainConfig
    from nlptl.stages import adapt, finetune, pretrain

    monkeypatch.setenv("NLPTL_HOME", str(tmp_path))
    pretrain.run(PretrainConfig(arch="gpt", size="tiny", corpus="sample-general", out=str(tmp_path / "pre"),
                                max_steps=3, block_size=64, vocab_size=400))
    adapt.run(AdaptConfig(from_model=str(tmp_path / "pre"), corpus="sample-reviews", out=str(tmp_path / "ada"),
                          max_steps=3, block_size=64))
    result = finetune.run(FinetuneConfig(
        from_model=str(tmp_path / "ada"), compare=[str(tmp_path / "pre")], task="sample-sentiment",
        n_labels="20,all", seeds=2, max_steps=2, eval_every=2, max_length=32, out=str(tmp_path / "curve")))
    summary = result["learning_curve"]
    assert [(r["model"], r["n_labels"]) for r in summary] == [("ada", 20), ("ada", "all"), ("pre", 20), ("pre", "all")]
    assert all(r["seeds"] == 2 and r["accuracy_std"] >= 0 for r in summary)
    assert summary[0]["n_train"] == 20 and summary[1]["n_train"] > 1000
    runs = result["runs"]
    assert len(runs) == 8 and {r["seed"] for r in runs} == {42, 43}
    first, second = runs[0], runs[1]
    assert first["accuracy"] != pytest.approx(second["accuracy"]) or first["loss"] != pytest.approx(second["loss"])
    out = tmp_path / "curve"
    assert json.loads((out / "learning_curve.json").read_text())["summary"] == summary
    assert len(list(csv.DictReader(open(out / "learning_curve.csv")))) == 8
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "nlptl-run.json").read_text())["lineage"]["mode"] == "learning-curve"


def test_a_point_past_the_training_set_is_labelled_with_the_count_used(checkpoints, task_files, tmp_path, caplog):
    """--n-labels 8,100000,200000 on a smaller training set: the big points use all the examples, and are
    one point labelled with that count (not 100000), in the summary, the runs, the lineage and the plot."""
    import logging

    from conftest import finetune_cfg

    from nlptl.stages import finetune

    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = finetune.run(finetune_cfg(from_model=str(checkpoints["gpt2"]), train_file=str(task_files["train"]),
                                           eval_file=str(task_files["eval"]), n_labels="8,100000,200000",
                                           max_steps=1, out=str(tmp_path / "curve")))
    n = result["learning_curve"][1]["n_train"]
    assert n < 100000
    assert [r["n_labels"] for r in result["learning_curve"]] == [8, n]
    assert [r["n_labels"] for r in result["runs"]] == [8, n]
    assert result["lineage"]["n_labels"] == [8, n]
    assert f"--n-labels 100000: only {n} training examples; using all {n}" in caplog.text
    assert f"--n-labels 200000: only {n} training examples, as for --n-labels 100000" in caplog.text
