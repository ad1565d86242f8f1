"""The training loop (train.py), shared by every stage, and the evaluation helpers (evaluation.py).

A toy regression model (an embedding and a linear layer, no dropout) keeps these tests exact and fast."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from nlptl.config import TrainConfig
from nlptl.errors import NlptlError
from nlptl.objective import Objective
from nlptl.runtime import make_accelerator
from nlptl.train import total_steps, train


class Toy(torch.nn.Module):
    def __init__(self, nan_from_call: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 1)
        self.calls = 0
        self.nan_from_call = nan_from_call

    def forward(self, input_ids, labels):
        self.calls += 1
        pred = self.head(self.emb(input_ids).mean(1)).squeeze(-1)
        loss = ((pred - labels) ** 2).mean()
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            loss = loss * float("nan")
        return SimpleNamespace(loss=loss)


def toy_data(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 16, (n, 5), generator=g)
    return [{"input_ids": ids[i], "labels": float(ids[i].sum() % 3)} for i in range(n)]


def collate(examples):
    return {"input_ids": torch.stack([e["input_ids"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples])}


def run_cfg(model, data, evaluate_fn=None, select=None, default_evals=0, **kw):
    cfg = TrainConfig(**{"lr": 1e-2, "warmup_ratio": 0.0, "log_every": 1, "precision": "fp32", **kw})
    accelerator = make_accelerator("fp32", cfg.grad_accum)
    objective = Objective(collate, evaluate=evaluate_fn, select=select, evaluations=default_evals)
    return train(accelerator, model, data, cfg, objective, description="test")


def test_the_loop_takes_the_model_the_data_the_config_and_the_objective():
    """train() gets one objective object (objective.py), not a hook per thing a stage does differently."""
    import inspect

    params = inspect.signature(train).parameters
    assert len(params) <= 8, list(params)
    assert list(params)[:5] == ["accelerator", "model", "train_dataset", "cfg", "objective"]


def test_total_steps():
    assert total_steps(TrainConfig(epochs=1), 10) == 10
    assert total_steps(TrainConfig(epochs=2.5), 10) == 25
    assert total_steps(TrainConfig(epochs=1, grad_accum=3), 10) == 4  # the last, shorter accumulation counts
    assert total_steps(TrainConfig(epochs=2.5, grad_accum=3), 10) == 10
    assert total_steps(TrainConfig(epochs=0.01), 10) == 1
    assert total_steps(TrainConfig(epochs=3, max_steps=7), 10) == 7  # --max-steps wins


def test_steps_from_epochs_in_the_loop():
    """36 examples, batch 4 = 9 batches; accumulating 2 -> 5 updates per epoch; 2 epochs -> 10."""
    _, result = run_cfg(Toy(), toy_data(36), batch_size=4, grad_accum=2, epochs=2)
    assert result.steps == 10
    losses = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in losses] == list(range(1, 11))
    assert losses[-1]["lr"] == 0.0  # the linear schedule ends exactly at the last update
    assert result.n_train == 36


def test_grad_accumulation_equals_a_bigger_batch():
    """2 x batch 4 accumulated is one update on batch 8: same number of steps and the same weights."""
    data = toy_data(32)
    a, ra = run_cfg(Toy(), data, batch_size=4, grad_accum=2, epochs=1)
    b, rb = run_cfg(Toy(), data, batch_size=8, grad_accum=1, epochs=1)
    assert ra.steps == rb.steps == 4
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name
    assert not torch.allclose(a.head.weight, Toy().head.weight)  # and they did train


def test_loss_falls_on_data_it_can_memorize():
    _, result = run_cfg(Toy(), toy_data(16), batch_size=16, max_steps=60, lr=5e-2)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < 0.2 * losses[0]


def test_non_finite_loss_stops_with_the_step():
    with pytest.raises(NlptlError, match=r"loss became nan at step 3 .*lower --lr"):
        run_cfg(Toy(nan_from_call=3), toy_data(40), batch_size=4, max_steps=8)


def test_non_finite_loss_is_caught_at_the_next_log():
    with pytest.raises(NlptlError, match="at step 4 "):
        run_cfg(Toy(nan_from_call=3), toy_data(40), batch_size=4, max_steps=8, log_every=2)


def test_best_evaluation_is_kept():
    """With a selection metric, the returned model is the one of the best evaluation, not the last."""
    scores = iter([0.5, 0.9, 0.6, 0.7])
    snapshots = {}

    def evaluate_fn(model):
        step = len(snapshots) + 1
        snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"accuracy": next(scores)}

    model, result = run_cfg(Toy(), toy_data(16), evaluate_fn=evaluate_fn, select=("accuracy", "max"),
                            batch_size=4, max_steps=4, eval_every=1)
    assert result.best == {"accuracy": 0.9} and result.best_step == 2 and result.steps == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k
    assert not torch.equal(snapshots[2]["head.weight"], snapshots[4]["head.weight"])


def test_default_evaluations_are_spread_over_the_run():
    seen = []

    def evaluate_fn(model):
        seen.append(len(seen))
        return {"accuracy": 0.5}

    _, result = run_cfg(Toy(), toy_data(40), evaluate_fn=evaluate_fn, select=("accuracy", "max"), default_evals=4,
                        batch_size=4, max_steps=10)
    assert [h["step"] for h in result.history if "eval_accuracy" in h] == [3, 6, 9, 10]
    assert result.best_step == 3  # ties keep the first


def test_accelerators_of_different_precision_in_one_process():
    """Stages with different --precision can run one after another in one Python process."""
    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("fp32").mixed_precision == "no"
    assert make_accelerator("fp32", grad_accum=3).gradient_state.num_steps == 3


# --------------------------------------------------------------------------- metrics


def test_metric_modules_load_offline(monkeypatch):
    import evaluate

    from nlptl import evaluation

    monkeypatch.setattr(evaluation, "_metric_cache", {})
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("accuracy", "f1"):
        assert evaluation.load_metric(name) is evaluation.load_metric(name)  # cached


def test_accuracy_and_macro_f1_by_hand():
    from nlptl.evaluation import load_metric

    refs = [0, 0, 1, 1, 2, 2, 2, 0]
    preds = [0, 1, 1, 1, 2, 0, 2, 2]
    assert load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(5 / 8)
    # Per class F1 = 2tp / (2tp + fp + fn): 0: tp 1 fp 1 fn 2 -> 2/5; 1: tp 2 fp 1 fn 0 -> 4/5; 2: tp 2 fp 1 fn 1 -> 4/6
    expected = (2 / 5 + 4 / 5 + 4 / 6) / 3
    macro = load_metric("f1").compute(predictions=preds, references=refs, average="macro")["f1"]
    assert macro == pytest.approx(expected)
    # Binary F1 of class 1, and a class that is only predicted still counts in the macro mean.
    assert load_metric("f1").compute(predictions=[1, 1, 0], references=[1, 0, 0])["f1"] == pytest.approx(2 / 3)
    macro = load_metric("f1").compute(predictions=[0, 1, 2], references=[0, 1, 1], average="macro")["f1"]
    assert macro == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_classification_metrics_from_logits():
    from nlptl.evaluation import classification_metrics

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.2]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.5)
    # predictions 0 1 0 0 -> class 0: tp 1, fp 2 -> F1 1/2; class 1: tp 1, fn 2 -> F1 1/2
    assert m["f1_macro"] == pytest.approx(0.5)
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert m["loss"] == pytest.approx(expected_loss)
    assert math.isfinite(m["loss"])


def test_too_little_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import pytest
    import torch

    from nlptl.errors import NlptlError
    from nlptl.train import check_disk_space

    model = torch.nn.Linear(1000, 1000)  # 1M parameters: ~4 MB per copy, 3 copies per checkpoint
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 20 * 10**6, 20 * 10**6))
    with pytest.raises(NlptlError, match="not enough free disk"):
        check_disk_space(tmp_path / "out" / "checkpoints", model, keep=2)  # needs ~40 MB
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    check_disk_space(tmp_path / "out" / "checkpoints", model, keep=2)


def test_held_out_scoring_shows_progress(caplog, monkeypatch):
    """Perplexity before and after an LM stage can take minutes: it logs progress like training does."""
    import logging

    from nlptl.evaluation import lm_loss

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(16, 16)

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.emb(input_ids))

    blocks = [{"input_ids": list(range(i % 8, i % 8 + 6))} for i in range(40)]

    def collate(examples):
        ids = torch.tensor([e["input_ids"] for e in examples])
        return {"input_ids": ids, "labels": ids.clone()}

    import nlptl.evaluation

    monkeypatch.setattr(nlptl.evaluation, "EVAL_LOG_SECONDS", 0.0)  # a tiny evaluation logs too
    with caplog.at_level(logging.INFO, logger="nlptl"):
        scores = lm_loss(make_accelerator("fp32"), LM(), blocks, collate, 4)
    assert scores["tokens"] == 40 * 6 and math.isfinite(scores["loss"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("perplexity step")]
    assert lines and lines[-1].startswith("perplexity step 10/10"), caplog.text
