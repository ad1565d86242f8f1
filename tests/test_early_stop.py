"""--patience / --min-delta (issue 28): early stopping on every training stage, tested on curves that
plateau (the evaluation is replaced by a fixed sequence of scores)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import adapt_cfg, finetune_cfg
from test_train import Toy, collate, run_cfg, toy_data

from nlptl.errors import UsageError


def plateau(values, key="accuracy"):
    """An evaluate_fn that returns `values` in turn and keeps the weights it saw at each evaluation."""
    scores, seen = iter(values), []

    def evaluate_fn(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {key: next(scores)}

    return evaluate_fn, seen


def test_stops_after_patience_evaluations_without_improvement():
    evaluate_fn, seen = plateau([0.5, 0.7, 0.7, 0.65, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    model, result = run_cfg(Toy(), toy_data(40), evaluate_fn=evaluate_fn, select=("accuracy", "max"),
                            batch_size=4, max_steps=10, eval_every=1, patience=2)
    # best 0.7 at step 2; steps 3 (a tie) and 4 do not beat it: stop at step 4, the step-2 weights kept
    assert result.steps == 4 and result.best_step == 2 and len(seen) == 4
    assert result.stopped_early["step"] == 4 and result.stopped_early["best_step"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[1][k]), k
    rows = [r for r in result.history if "early_stop" in r]
    assert rows == [{"step": 4, "early_stop": result.stopped_early["reason"]}]
    assert "no improvement of accuracy beyond 0 in 2 evaluations (best 0.7 at step 2)" in rows[0]["early_stop"]
    assert result.early_stop_metrics() == {"stopped_early": True, "stopped_at_step": 4,
                                           "early_stop": rows[0]["early_stop"]}


def test_min_delta_and_lower_is_better():
    # loss: 3.0, then improvements smaller than 0.1 do not count (but the best is still kept)
    evaluate_fn, _ = plateau([3.0, 2.95, 2.92, 2.0, 1.0], key="loss")
    _, result = run_cfg(Toy(), toy_data(40), evaluate_fn=evaluate_fn, select=("loss", "min"),
                        batch_size=4, max_steps=10, eval_every=1, patience=2, min_delta=0.1)
    assert result.steps == 3 and result.best_step == 3 and result.best == {"loss": 2.92}


def test_without_patience_nothing_changes():
    evaluate_fn, _ = plateau([0.5] * 10)
    _, result = run_cfg(Toy(), toy_data(40), evaluate_fn=evaluate_fn, select=("accuracy", "max"),
                        batch_size=4, max_steps=6, eval_every=1)
    assert result.steps == 6 and result.stopped_early is None and result.early_stop_metrics() == {}
    assert not any("early_stop" in r for r in result.history)


def test_patience_without_evaluations_is_refused():
    with pytest.raises(UsageError, match="--patience"):
        run_cfg(Toy(), toy_data(16), batch_size=4, max_steps=4, patience=2)


@pytest.mark.parametrize("kw", [{"patience": 0}, {"patience": -1}, {"min_delta": 0.1},
                                {"patience": 2, "min_delta": -1}])
def test_bad_patience_options(kw):
    from nlptl.config import TrainConfig

    with pytest.raises(UsageError, match="--patience|--min-delta"):
        TrainConfig(**kw)


def test_flags_on_every_training_stage():
    from nlptl.config import COMMAND_FLAGS

    for command in ("pretrain", "adapt", "finetune"):
        assert {"patience", "min_delta"} <= set(COMMAND_FLAGS[command]), command


def lm_losses(monkeypatch, losses):
    from nlptl import evaluation

    values = iter(losses)

    def fake(*a, **k):
        loss = next(values)
        return {"loss": loss, "perplexity": 2.0 ** loss, "tokens": 100}

    monkeypatch.setattr(evaluation, "lm_loss", fake)


def test_adapt_stops_on_held_out_perplexity(checkpoints, corpus_file, tmp_path, monkeypatch):
    """No probe: --patience gives the LM stage evaluations on held-out perplexity, the best one kept;
    --resume on the finished run says it stopped early."""
    from nlptl.stages import adapt

    # before 5; steps 1..3: 4, 3, 3.5 (worse: patience 1 stops at step 3); the kept step-2 model not rescored
    lm_losses(monkeypatch, [5.0, 4.0, 3.0, 3.5])
    out = tmp_path / "lm"
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(out),
                                 max_steps=8, eval_every=1, patience=1))
    assert result["steps"] == 3 and result["best_step"] == 2 and result["perplexity"] == 8.0
    assert result["stopped_early"] is True and result["stopped_at_step"] == 3
    assert "no improvement of perplexity" in result["early_stop"] and "best 8 at step 2" in result["early_stop"]
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["metrics"]["stopped_at_step"] == 3 and record["lineage"]["steps"] == 3
    assert record["lineage"]["kept_step"] == 2
    assert "the weights are step 2's, the best by held-out perplexity" in (out / "README.md").read_text()
    # metrics.csv: each evaluation under its own step (the kept step-2 scores are not written under step 3)
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    at = rows[0].index("eval_perplexity")
    assert [float(r[at]) for r in rows[1:] if r[at]] == [32.0, 16.0, 8.0, 2.0 ** 3.5]
    assert [r["step"] for r in record["history"] if "early_stop" in r] == [3]
    with pytest.raises(UsageError, match="stopped early at step 3"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(out),
                            max_steps=8, eval_every=1, patience=1, resume=True))


def test_adapt_without_patience_has_no_extra_evaluations(checkpoints, corpus_file, tmp_path, monkeypatch):
    from nlptl.stages import adapt

    lm_losses(monkeypatch, [5.0, 4.0])  # before and after only: a third call would fail
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                 out=str(tmp_path / "lm"), eval_every=1))
    assert result["steps"] == 4 and "stopped_early" not in result and "best_step" not in result


def test_adapt_probe_selects_early_stop(checkpoints, corpus_file, task_files, tmp_path, monkeypatch):
    from nlptl import probe
    from nlptl.stages import adapt

    # before 0.7 (above chance, so the probe selects); steps 1..: 0.8, 0.8 (a tie: the later kept, but no
    # improvement), 0.75 -> stop at 3
    scores = iter([0.7, 0.8, 0.8, 0.75, 0.8])
    monkeypatch.setattr(probe.Probe, "score", lambda self, model, device: next(scores))
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(tmp_path / "lm"),
                                 probe=str(task_files["train"]), max_steps=8, eval_every=1, patience=2))
    assert result["stopped_at_step"] == 3 and result["best_step"] == 2
    assert "no improvement of probe_accuracy" in result["early_stop"]


def test_finetune_stops_early(checkpoints, task_files, tmp_path, monkeypatch):
    from nlptl import evaluation
    from nlptl.stages import finetune

    real = evaluation.classification_metrics
    accuracies = iter([0.5, 0.6, 0.6, 0.6, 0.9, 0.9])
    monkeypatch.setattr(evaluation, "classification_metrics",
                        lambda *a, **k: {**real(*a, **k), "accuracy": next(accuracies)})
    out = tmp_path / "ft"
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(out), max_steps=10, eval_every=1,
                                       patience=2, min_delta=0.05))
    assert result["steps"] == 4 and result["best_step"] == 2 and result["accuracy"] == 0.6
    assert result["stopped_early"] is True and result["stopped_at_step"] == 4
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["metrics"]["stopped_early"] is True
    card = (out / "README.md").read_text()
    assert "Training stopped early (--patience) at step 4: no improvement of accuracy" in card
    from nlptl.config import ReportConfig
    from nlptl.stages import report

    assert any(p.endswith("-finetune-training.png") for p in report.run(ReportConfig(run_dir=str(out)))["plots"])
    with pytest.raises(UsageError, match="stopped early"):
        finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                  eval_file=str(task_files["eval"]), out=str(out), max_steps=10, eval_every=1,
                                  patience=2, resume=True))


def test_contrastive_adapt_stops_on_held_out_pair_loss(checkpoints, task_files, tmp_path, monkeypatch):
    from nlptl.stages import adapt, contrastive

    # before 1.0; steps 1..: 0.5, 0.6, 0.7 -> patience 2 stops at step 3; the step-1 model rescored: 0.5
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.5])
    monkeypatch.setattr(contrastive, "mean_pair_loss", lambda *a, **k: next(losses))
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), objective="contrastive",
                                 corpus="task:classification", train_file=str(task_files["train"]),
                                 out=str(tmp_path / "c"), max_steps=8, eval_every=1, pairs_per_example=2, patience=2))
    assert result["stopped_at_step"] == 3 and result["best_step"] == 1 and result["pair_loss"] == 0.5


def test_lr_auto_range_test_runs_under_patience(checkpoints, task_files, tmp_path):
    """The range test has no evaluations: --patience is the run's, not the range test's."""
    from nlptl.stages import finetune

    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(tmp_path / "ft"), lr="auto",
                                       lr_find_steps=10, patience=3))
    assert result["stopped_early"] is False and "lr_found" in result


def test_patience_on_the_command_line(checkpoints, corpus_file, tmp_path):
    """A bad --patience or --min-delta is one line, exit 2, before anything loads."""
    from cli_helpers import assert_one_line_error, run_light

    res = run_light(["adapt", "--from", str(checkpoints["bert"]), "--corpus", str(corpus_file), "--min-delta", "0.1"],
                    tmp_path)
    assert_one_line_error(res, 2, "--min-delta needs --patience")


def test_resuming_the_checkpoint_of_a_stopped_run_trains_no_further(tmp_path, caplog):
    """A checkpoint written at the step --patience stopped at (a run killed before it wrote its directory)
    resumes to the same end, and says why."""
    import logging

    from nlptl.config import TrainConfig
    from nlptl.objective import Objective
    from nlptl.runtime import make_accelerator
    from nlptl.train import Checkpoints, train

    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, log_every=1, precision="fp32", batch_size=4, max_steps=10,
                      eval_every=1, save_every=2, patience=2)
    evaluate_fn, _ = plateau([0.5, 0.7, 0.6, 0.6])
    _, first = train(make_accelerator("fp32"), Toy(), toy_data(40), cfg,
                     Objective(collate, evaluate=evaluate_fn, select=("accuracy", "max")), description="t",
                     checkpoints=Checkpoints(tmp_path))
    assert first.steps == 4 and (tmp_path / "step-000004").is_dir()
    calls = []
    with caplog.at_level(logging.INFO, logger="nlptl"):
        objective = Objective(collate, evaluate=lambda m: calls.append(1) or {"accuracy": 1.0},
                              select=("accuracy", "max"))
        model, again = train(make_accelerator("fp32"), Toy(), toy_data(40), cfg, objective, description="t",
                             checkpoints=Checkpoints(tmp_path, resume_from=tmp_path / "step-000004"))
    assert again.steps == 4 and again.best_step == 2 and not calls and again.stopped_early == first.stopped_early
    assert any("stopped early at step 4" in r.getMessage() and "nothing more to train" in r.getMessage()
               for r in caplog.records)
