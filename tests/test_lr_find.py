"""`--lr auto` (nlptl/lr_find.py): the learning-rate range test picks the rate by a documented rule,
on the training split only, leaves the model as it found it, records the curve and the choice, and a
resumed run reuses the choice instead of searching again."""

from __future__ import annotations

import json
import math

import pytest
from conftest import adapt_cfg, finetune_cfg

from nlptl import lr_find
from nlptl.errors import Interrupted, UsageError
from nlptl.stages import finetune


def test_rules_on_a_known_curve():
    """Flat, then a long fall between 1e-4 and 1e-2, lowest at 1e-2, then a climb."""
    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]

    def loss(lr):
        x = math.log10(lr)
        if x < -4:
            return 2.0
        if x < -2:
            return 2.0 - 0.75 * (x + 4)  # 2.0 -> 0.5
        return 0.5 + 2 * (x + 2) ** 2

    s = lr_find.suggest(lrs, [loss(lr) for lr in lrs])
    # The loss passes 1.25x its start (2.5) just above lr 0.1: two decades below that.
    assert 0.9e-3 < s["divergence/100"] < 1.3e-3
    assert 1e-4 < s["valley"] < 1e-2  # inside the fall, not at its bottom
    assert s["minimum/10"] == pytest.approx(lrs[min(range(100), key=lambda i: loss(lrs[i]))] / 10)
    assert 1e-4 <= s["steepest"] <= 1e-2
    # A noisy loss that jumps above the line early and falls back is not a divergence: the blow-up is.
    noisy = [loss(lr) * (1.6 if 20 <= i < 24 else 1.0) for i, lr in enumerate(lrs)]
    assert lr_find.suggest(lrs, noisy)["divergence/100"] == s["divergence/100"]
    flat = lr_find.suggest(lrs, [1.0 - 0.001 * i for i in range(100)])  # never diverges: fastai's valley
    assert flat["divergence/100"] == flat["valley"]
    with pytest.raises(ValueError):
        lr_find.suggest(lrs[:2], [1.0, 0.5])


def test_schedule_grows_exponentially():
    from nlptl.optim import schedule_factor

    f = schedule_factor("range-test", 5, 0.0, ratio=32.0)  # the test's own span (1e-7 to 10), not stlr's ratio
    assert [f(t) for t in range(5)] == pytest.approx([1e-8, 1e-6, 1e-4, 1e-2, 1.0])


def test_auto_equals_the_chosen_rate_by_hand(checkpoints, task_files, tmp_path):
    """The range test runs on a copy: the classifier then trains exactly as a run given the chosen rate."""
    common = {"from_model": str(checkpoints["bert"]), "train_file": str(task_files["train"]), "max_steps": 6}
    auto = finetune.run(finetune_cfg(out=str(tmp_path / "auto"), lr="auto", lr_find_steps=20, **common))
    record = json.loads((tmp_path / "auto" / lr_find.FILE).read_text())
    # The rule's rate, capped for a pretrained body (this plain checkpoint is one: handoff.AUTO_CAP).
    assert record.get("found", record["lr"]) == record["suggestions"]["divergence/100"]
    assert auto["lr_found"] == record["lr"] == min(record["suggestions"]["divergence/100"], 3e-4)
    assert record["rule"] == "divergence/100" and record["steps"] <= 20
    assert len(record["lrs"]) == len(record["smoothed"])
    assert record["lrs"][0] == pytest.approx(1e-7)
    assert auto["lineage"]["lr"]["auto"]["lr"] == record["lr"]
    assert auto["config"]["lr"] == "auto"  # config.yaml keeps the choice: a recipe reruns nothing
    by_hand = finetune.run(finetune_cfg(out=str(tmp_path / "hand"), lr=record["lr"], **common))
    kept = ("accuracy", "loss", "best_step")
    assert {k: by_hand[k] for k in kept} == {k: auto[k] for k in kept}
    from nlptl.config import ReportConfig
    from nlptl.stages import report

    plots = report.run(ReportConfig(run_dir=str(tmp_path / "auto")))["plots"]
    assert any(p.endswith("lr_find.png") for p in plots)


def test_resume_reuses_the_chosen_rate(checkpoints, task_files, tmp_path, monkeypatch):
    from nlptl import train as loop

    common = {"from_model": str(checkpoints["bert"]), "train_file": str(task_files["train"]), "max_steps": 6,
              "save_every": 2, "lr": "auto", "lr_find_steps": 15, "out": str(tmp_path / "run")}
    real_save = loop._Loop.save

    def save_then_stop(self, message=None):
        real_save(self, message)
        raise Interrupted("stopped for the test", 130)

    monkeypatch.setattr(loop._Loop, "save", save_then_stop)
    with pytest.raises(Interrupted):
        finetune.run(finetune_cfg(**common))
    chosen = json.loads((tmp_path / "run" / lr_find.FILE).read_text())["lr"]
    monkeypatch.setattr(loop._Loop, "save", real_save)

    def no_search(*a, **k):
        raise AssertionError("a resumed run must not search again")

    monkeypatch.setattr(lr_find, "range_test", no_search)
    resumed = finetune.run(finetune_cfg(resume=True, **common))
    assert resumed["lr_found"] == chosen and resumed["steps"] == 6


def test_recipe_reuses_an_auto_rate_stage(checkpoints, task_files, tmp_path, capsys):
    import yaml
    from cli_helpers import call_main

    recipe = {"out": str(tmp_path / "runs"), "defaults": {"batch_size": 4, "precision": "fp32", "max_steps": 2},
              "stages": [{"name": "clf", "stage": "finetune", "from": str(checkpoints["bert"]),
                          "task": "classification", "train": str(task_files["train"]), "max_length": 24,
                          "lr": "auto", "lr_find_steps": 5}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    for action in ("run", "reuse"):
        capsys.readouterr()
        assert call_main(["run", str(tmp_path / "recipe.yaml"), "--json", "--quiet"], tmp_path) == 0
        assert json.loads(capsys.readouterr().out)["stages"][0]["action"] == action


def test_adapt_auto_and_where_it_is_refused(checkpoints, corpus_file, tmp_path):
    from nlptl.config import PretrainConfig
    from nlptl.stages import adapt

    result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), lr="auto",
                                 lr_find_steps=12, out=str(tmp_path / "a")))
    assert result["lr_found"] == json.loads((tmp_path / "a" / lr_find.FILE).read_text())["lr"] > 0
    with pytest.raises(UsageError, match="--lr auto .* is offered by finetune and adapt"):
        PretrainConfig(corpus="x", lr="auto")
    from nlptl.config import AdaptConfig

    with pytest.raises(UsageError, match="--lr auto runs a range test on the training blocks"):
        AdaptConfig(corpus="x", lr="auto", streaming=True, max_steps=5)


def test_learning_curve_searches_once_per_model(checkpoints, task_files, tmp_path, monkeypatch):
    calls = []
    real = lr_find.range_test

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(lr_find, "range_test", counted)
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                       lr="auto", lr_find_steps=10, n_labels="20,40", out=str(tmp_path / "c")))
    assert len(calls) == 1
    assert len({r["lr"] for r in result["runs"]}) == 1
    assert result["lineage"]["lr"]["auto"] == {r["model"]: r["lr"] for r in result["runs"]}
