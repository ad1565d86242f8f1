"""`nlptl adapt --objective contrastive` (stages/contrastive.py) and the few-label classifier recipe
(--min-steps, --head-lr, the checkpoint's pooling): pairs, loss, lineage, composition, resume."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
from conftest import adapt_cfg, finetune_cfg

from nlptl.config import AdaptConfig, FinetuneConfig
from nlptl.errors import UsageError
from nlptl.models.contrastive import pair_loss
from nlptl.stages.contrastive import draw_pairs

# --------------------------------------------------------------------------- pairs and loss


def test_pairs_are_drawn_as_specified():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pairs = draw_pairs(labels, 6, seed=0)
    assert len(pairs) == 6 * len(labels)  # 3 positive and 3 negative rounds, every example in each
    assert Counter(t for *_, t in pairs) == {1.0: 27, 0.0: 27}
    for i, j, t in pairs:
        assert i != j
        assert (labels[i] == labels[j]) == (t == 1.0)
    assert Counter(i for i, _, _ in pairs) == dict.fromkeys(range(len(labels)), 6)  # each example anchors as many
    assert draw_pairs(labels, 6, seed=0) == pairs  # fixed by the seed ...
    assert draw_pairs(labels, 6, seed=1) != pairs  # ... and only by it
    # Partners are drawn from the whole label: every other member of a label of four shows up.
    partners = {j for i, j, t in draw_pairs(labels, 40, seed=0) if i == 5 and t == 1.0}
    assert partners == {6, 7, 8}


def test_an_example_alone_in_its_label_gets_only_negative_pairs():
    pairs = draw_pairs([0, 0, 1], 4, seed=0)
    assert [t for i, _, t in pairs if i == 2] == [0.0, 0.0]
    with pytest.raises(UsageError, match="at least two labels"):
        draw_pairs([1, 1, 1], 2, seed=0)


def test_pair_losses():
    import torch

    cosine, target = torch.tensor([1.0, 0.5, 0.0, 0.9]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert pair_loss(cosine, target, "cosine").item() == pytest.approx((0 + 0.25 + 0 + 0.81) / 4)
    # contrastive: positives pay their squared distance, negatives only while closer than the margin.
    expected = 0.5 * (0 + 0.25 + 0 + (0.5 - 0.1) ** 2) / 4
    assert pair_loss(cosine, target, "contrastive").item() == pytest.approx(expected)


@pytest.mark.parametrize("kw,message", [
    ({"corpus": "reviews.txt"}, "--objective contrastive draws pairs from labels: pass --corpus task:NAME"),
    ({"pooling": "concat"}, "--pooling concat has no sentence-embedding form"),
    ({"pairs_per_example": 0}, "--pairs-per-example must be positive"),
    ({"pair_loss": "triplet"}, "unknown --pair-loss 'triplet'"),
])
def test_config_mistakes_name_the_flag(kw, message):
    with pytest.raises(UsageError, match=message):
        AdaptConfig(**{"corpus": "task:classification", "objective": "contrastive", **kw})


def test_min_steps_raises_the_step_count_of_few_labels_only():
    from nlptl.stages.classifier import with_min_steps

    cfg = FinetuneConfig(min_steps=100, batch_size=32, epochs=3)
    assert with_min_steps(cfg, 64).max_steps == 100  # 3 epochs x 2 batches = 6 steps -> 100
    assert with_min_steps(cfg, 3200).max_steps is None  # 300 steps from the epochs: left alone
    assert with_min_steps(FinetuneConfig(max_steps=7, min_steps=100), 64).max_steps == 7  # explicit wins
    assert with_min_steps(FinetuneConfig(min_steps=0), 64).max_steps is None  # 0 = off


def test_head_lr_is_the_top_group_only():
    from transformers import BertConfig, BertForSequenceClassification

    from nlptl.optim import param_groups

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    groups = param_groups(model, 1e-4, 0.01, 2.0, head_lr=1e-2)
    lrs = {g["group_name"]: g["lr"] for g in groups}
    assert lrs == {"head": 1e-2, "block 1": 1e-4 / 2, "block 0": 1e-4 / 4, "embeddings": 1e-4 / 8}
    assert {g["group_name"]: g["lr"] for g in param_groups(model, 1e-4, 0.01, 2.0)}["head"] == 1e-4


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def contrastive(checkpoints, task_files, tmp_path_factory):
    """family -> (run dir, result): a contrastive run on the easy task, long enough for the loss to fall.
    The random-init GPT-2 moves slowly under the cosine loss (its last-token states start nearly parallel):
    it trains with the contrastive loss, at a higher rate."""
    from nlptl.stages import adapt

    root = tmp_path_factory.mktemp("contrastive")
    runs = {}
    for family, kw in (("bert", {"lr": 1e-3}), ("gpt2", {"lr": 1e-2, "pair_loss": "contrastive"})):
        out = root / family
        runs[family] = (out, adapt.run(adapt_cfg(from_model=str(checkpoints[family]), objective="contrastive",
                                                 corpus="task:classification", train_file=str(task_files["train"]),
                                                 out=str(out), max_steps=30, batch_size=8, pairs_per_example=2,
                                                 **kw)))
    return runs


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_pair_loss_falls(contrastive, family):
    _, result = contrastive[family]
    assert result["pair_loss"] < 0.7 * result["pair_loss_before"], result


@pytest.mark.parametrize("family,pooling,loss", [("bert", "mean", "cosine"), ("gpt2", "last", "contrastive")])
def test_run_directory_and_lineage(contrastive, checkpoints, task_files, family, pooling, loss):
    from nlptl.models import inspect_model, trained_pooling

    out, result = contrastive[family]
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "adapt"
    lineage = record["lineage"]
    assert lineage["objective"] == "contrastive" and lineage["pooling"] == pooling
    assert lineage["base_model"] == str(checkpoints[family].resolve())
    assert lineage["labels"] == ["negative", "positive"] and lineage["pair_loss"] == loss
    assert lineage["pairs"] == result["n_pairs"] == 2 * 240 and lineage["steps"] == 30
    assert lineage["train"]["sha256"]
    # A Hugging Face checkpoint of the bare encoder, plus sentence-transformers' pooling files.
    assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("Model")
    assert (out / "modules.json").is_file() and (out / "tokenizer.json").is_file()
    assert trained_pooling(inspect_model(str(out))) == pooling


def test_held_out_pair_loss_is_in_metrics_csv_and_the_report(contrastive, tmp_path, monkeypatch):
    """The pair loss before and after training reaches metrics.csv (it was dropped: not one of the fixed
    columns) and the report plots it under the name of the loss trained on, not cross-entropy."""
    import csv

    from test_shapes import plotted_labels

    for family, name in (("bert", "cosine pair loss (MSE)"), ("gpt2", "contrastive pair loss")):
        out, result = contrastive[family]
        with (out / "metrics.csv").open(newline="") as f:
            held_out = [(int(r["step"]), float(r["eval_pair_loss"])) for r in csv.DictReader(f) if r["eval_pair_loss"]]
        assert held_out == [(0, pytest.approx(result["pair_loss_before"])), (30, pytest.approx(result["pair_loss"]))]
        assert plotted_labels(out, tmp_path / family, monkeypatch)[0] == name


def test_report_table_shows_the_pair_loss(contrastive, tmp_path, capsys):
    import shutil

    from cli_helpers import call_main

    out, result = contrastive["bert"]
    shutil.copytree(out, tmp_path / "run")  # the report writes into the run directory: not the shared one
    capsys.readouterr()
    assert call_main(["report", str(tmp_path / "run")], tmp_path) == 0
    text = capsys.readouterr().out
    assert "pair_loss_before" in text and f"{result['pair_loss']:.4g}" in text


def test_model_card_describes_a_sentence_encoder(contrastive):
    card = (contrastive["bert"][0] / "README.md").read_text(encoding="utf-8")
    meta, body = card.split("\n---\n", 1)
    assert "library_name: sentence-transformers" in meta and "pipeline_tag: sentence-similarity" in meta
    assert "perplexity" not in card and "pair_loss_before" in body and "sentence encoder" in body
    # Only the options the contrastive stage used: none of MLM's.
    assert "mlm_probability" not in card and "validation_percentage" not in card and "| pairs_per_example |" in body


def test_finetune_pools_as_the_encoder_was_trained_and_keeps_the_lineage(contrastive, task_files, tmp_path):
    from nlptl.stages import finetune

    out, _ = contrastive["bert"]
    result = finetune.run(finetune_cfg(from_model=str(out), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(tmp_path / "ft")))
    assert result["lineage"]["pooling"] == "mean"
    assert result["lineage"]["parent"]["objective"] == "contrastive"
    # --pooling still wins over what the checkpoint says.
    result = finetune.run(finetune_cfg(from_model=str(out), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(tmp_path / "ft2"), pooling="cls"))
    assert result["lineage"]["pooling"] == "cls"


def test_finetune_after_a_contrastive_stage_defaults_to_a_slow_body_and_a_fast_head(contrastive, checkpoints,
                                                                                    task_files, tmp_path):
    """Without --lr, finetune picks its rates by what --from was trained for; a given --lr is kept."""
    import csv

    from nlptl.config import load_yaml
    from nlptl.stages import finetune

    def trained(name, from_model, **kw):
        out = tmp_path / name
        result = finetune.run(finetune_cfg(**{"from_model": str(from_model), "train_file": str(task_files["train"]),
                                              "eval_file": str(task_files["eval"]), "out": str(out), "lr": None, **kw}))
        with (out / "metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["loss"]]
        # `lr` is the rate --lr sets (the body's, as the start line's "peak lr"); `head_lr` the head's own.
        logged = {k: max(float(r[k]) for r in rows) for k in ("lr", "head_lr") if rows[0].get(k)}
        return result, logged, load_yaml(str(out / "config.yaml"))

    after, logged, config = trained("after", contrastive["bert"][0])
    assert (after["lr"], after["head_lr"]) == (1e-5, 1e-2)
    assert 1e-6 < logged["lr"] <= 1e-5 and 1e-3 < logged["head_lr"] <= 1e-2
    assert config["lr"] is None  # the record keeps "not given": a rerun or a recipe resolves it alike
    plain, logged, _ = trained("plain", checkpoints["bert"])
    assert plain["lr"] == 1e-4 and "head_lr" not in plain and set(logged) == {"lr"} and logged["lr"] <= 1e-4
    given, _, _ = trained("given", contrastive["bert"][0], lr=3e-4)
    assert given["lr"] == 3e-4 and "head_lr" not in given
    head_only, _, _ = trained("head-only", contrastive["bert"][0], head_lr=5e-3)
    assert (head_only["lr"], head_only["head_lr"]) == (1e-5, 5e-3)


def test_chain_domain_then_contrastive_then_head_in_a_recipe(tmp_path):
    """general -> domain MLM/CLM -> contrastive -> finetune as one `nlptl run` recipe."""
    import os

    import yaml
    from cli_helpers import tiny_data

    from nlptl.config import RunConfig
    from nlptl.stages import run

    tiny_data(tmp_path / "data")
    recipe = {
        "out": "runs",
        "defaults": {"batch_size": 4, "precision": "fp32", "log_every": 2, "seed": 3, "block_size": 32},
        "stages": [
            {"name": "general", "stage": "pretrain", "arch": "gpt", "corpus": "data/general.txt", "vocab_size": 300,
             "max_steps": 2},
            {"name": "domain", "stage": "adapt", "corpus": "data/reviews.txt", "max_steps": 2},
            {"name": "pairs", "stage": "adapt", "objective": "contrastive", "corpus": "task:classification",
             "train": "data/train.csv", "max_steps": 2},
            {"name": "classifier", "stage": "finetune", "task": "classification", "train": "data/train.csv",
             "eval": "data/eval.csv", "max_length": 24, "max_steps": 2},
        ],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run.run(RunConfig(recipe="recipe.yaml"))
    finally:
        os.chdir(cwd)
    lineage = json.loads((tmp_path / "runs" / "classifier" / "nlptl-run.json").read_text())["lineage"]
    assert lineage["pooling"] == "last"  # the contrastive stage's pooling, read from its directory
    assert lineage["parent"]["objective"] == "contrastive"
    assert lineage["parent"]["parent"]["objective"] == "clm"
    assert lineage["parent"]["parent"]["parent"]["stage"] == "pretrain"


def test_one_label_is_named_before_the_model_loads(checkpoints, tmp_path, monkeypatch):
    from conftest import labelled_rows, write_csv

    import nlptl.stages.contrastive
    from nlptl.stages import adapt

    rows = [(t, "positive") for t, _ in labelled_rows(12)]
    monkeypatch.setattr(nlptl.stages.contrastive, "pair_encoder", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(UsageError, match=r"at least two labels in --train; .*one\.csv has 12 examples, all labelled "
                                         r"'positive'"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), objective="contrastive", corpus="task:classification",
                            train_file=str(write_csv(tmp_path / "one.csv", rows)), out=str(tmp_path / "r")))


def test_adapt_rate_follows_the_objective_and_is_recorded(checkpoints, task_files, corpus_file, tmp_path, monkeypatch):
    """Without --lr, the contrastive stage trains at SetFit's body rate (what docs/results.md measured),
    the LM objectives at 1e-4; the result says the rate used, and the run resumes under it."""
    import csv

    import nlptl.stages.contrastive
    from nlptl.config import load_yaml
    from nlptl.stages import adapt

    kw = {"from_model": str(checkpoints["bert"]), "objective": "contrastive", "corpus": "task:classification",
          "train_file": str(task_files["train"]), "pairs_per_example": 2, "lr": None, "save_every": 2}
    out = tmp_path / "pairs"
    with monkeypatch.context() as m:
        m.setattr(nlptl.stages.contrastive, "write_stage", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError):
            adapt.run(adapt_cfg(out=str(out), **kw))
    result = adapt.run(adapt_cfg(out=str(out), resume=True, **kw))  # the same unset --lr: the same run
    # The record keeps "not given" (a recipe compares it with its own unset --lr); the result says the rate.
    assert result["lr"] == 2e-5 and load_yaml(str(out / "config.yaml"))["lr"] is None
    with (out / "metrics.csv").open() as f:
        assert 0 < max(float(r["lr"]) for r in csv.DictReader(f) if r["lr"]) <= 2e-5
    mlm = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(tmp_path / "m"),
                              lr=None))
    assert mlm["lr"] == 1e-4


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(checkpoints, task_files, tmp_path):
    import sys

    from test_resume import metric_rows, run, same_weights, start_and_stop

    def command(out):
        return [sys.executable, "-m", "nlptl", "adapt", "--from", str(checkpoints["bert"]), "--objective",
                "contrastive", "--corpus", "task:classification", "--train", str(task_files["train"]),
                "--max-steps", "300", "--lr", "1e-3", "--out", str(out), "--save-every", "20", "--grad-accum", "2",
                "--batch-size", "4", "--precision", "fp32", "--json", "--quiet", "--seed", "3"]

    whole = run(command(tmp_path / "whole"))
    out = tmp_path / "killed"
    killed = start_and_stop(command(out), out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    resumed = run(command(out) + ["--resume"])
    same_weights(tmp_path / "whole", out)
    keys = ["pair_loss", "pair_loss_before", "loss", "steps", "train_tokens"]
    assert {k: resumed[k] for k in keys} == {k: whole[k] for k in keys}
    assert metric_rows(out) == metric_rows(tmp_path / "whole")
