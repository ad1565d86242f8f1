"""The rates a stage trains at (--lr, --head-lr) for every way of starting it: a body pretrained from
scratch, a pretrained one, a contrastive adapt run on either, --lr given, --lr auto (capped for a pretrained
body), and adapt's default by objective. Fast: the rule alone, on records, without training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import adapt_cfg, finetune_cfg

SCRATCH = {"stage": "pretrain", "source": "scratch", "handoff": {"origin": "scratch"}}
PRETRAINED: dict = {}  # a checkpoint nlptl did not make
CONTRASTIVE = {"stage": "adapt", "objective": "contrastive", "handoff": {"origin": "contrastive", "body": "pretrained"}}
CONTRASTIVE_ON_SCRATCH = {"stage": "adapt", "objective": "contrastive",
                          "handoff": {"origin": "contrastive", "body": "scratch"}}


def ref(lineage: dict):
    return SimpleNamespace(spec="runs/x", lineage=lineage)


def finetune_rates(lineage: dict, **kw) -> tuple:
    """(lr, head_lr, the choice's value or None) finetune trains at without --lr auto, as its config holds them."""
    from nlptl import handoff, rates

    cfg = finetune_cfg(**kw)
    chosen = rates.resolve(cfg, origin=handoff.origin(ref(lineage)))
    trained = chosen.apply(cfg)
    assert (trained.lr, trained.head_lr) == (chosen.lr, chosen.head_lr)
    return trained.lr, trained.head_lr, chosen.choice.value if chosen.choice else None


@pytest.mark.parametrize(("lineage", "rates"), [
    (SCRATCH, (1e-3, None, 1e-3)),
    (PRETRAINED, (1e-4, None, 1e-4)),
    (CONTRASTIVE, (1e-5, 1e-2, 1e-5)),
    (CONTRASTIVE_ON_SCRATCH, (1e-3, None, 1e-3)),
])
def test_finetune_default_rates_by_origin(lineage, rates):
    assert finetune_rates(lineage, lr=None) == rates


def test_a_given_head_lr_wins_over_the_default_head():
    assert finetune_rates(CONTRASTIVE, lr=None, head_lr=5e-3) == (1e-5, 5e-3, 1e-5)
    assert finetune_rates(PRETRAINED, lr=None, head_lr=5e-3) == (1e-4, 5e-3, 1e-4)


@pytest.mark.parametrize("lineage", [SCRATCH, PRETRAINED, CONTRASTIVE])
def test_a_given_lr_is_kept_whatever_the_body(lineage):
    assert finetune_rates(lineage, lr=3e-4) == (3e-4, None, None)
    assert finetune_rates(lineage, lr=3e-4, head_lr=1e-2) == (3e-4, 1e-2, None)


@pytest.mark.parametrize(("lineage", "found", "trained"), [
    (PRETRAINED, 3.5e-3, 3e-4),  # capped: higher rates collapse a pretrained encoder
    (PRETRAINED, 1e-4, 1e-4),
    (CONTRASTIVE, 3.5e-3, 1e-4),
    (SCRATCH, 3.5e-3, 3.5e-3),  # no cap for a body trained from scratch
])
def test_lr_auto_is_capped_by_origin(lineage, found, trained):
    from nlptl import handoff, rates

    rate, choice = rates.capped(found, handoff.origin(ref(lineage)))
    assert rate == choice.value == trained
    assert ("capped" in choice.why) == (trained != found)
    # The record of the range test keeps the rate trained with (`lr`) and, when capped, the one found.
    record = {"lr": rate, **({"found": found} if rate != found else {})}
    chosen = rates.resolve(finetune_cfg(lr="auto"), origin=handoff.origin(ref(lineage)), range_test=record)
    assert (chosen.lr, chosen.choice) == (trained, choice)


def test_lr_auto_for_a_language_model_is_the_range_tests_rate():
    from nlptl import rates

    chosen = rates.resolve(adapt_cfg(lr="auto", corpus="reviews"), objective="mlm", range_test={"lr": 2e-3})
    assert (chosen.lr, chosen.head_lr, chosen.choice) == (2e-3, None, None)


@pytest.mark.parametrize(("objective", "lr"), [("mlm", 1e-4), ("clm", 1e-4), ("auto", 1e-4), ("contrastive", 2e-5)])
def test_adapt_default_rate_by_objective(objective, lr):
    from nlptl import rates

    task = {"corpus": "task:x", "train_file": "train.csv"} if objective == "contrastive" else {"corpus": "reviews"}
    resolved = "mlm" if objective == "auto" else objective  # what the stage resolves --objective auto to first
    unset = adapt_cfg(lr=None, objective=objective, **task)
    chosen = rates.resolve(unset, objective=resolved)
    assert chosen.apply(unset).lr == chosen.choice.value == lr
    assert rates.resolve(adapt_cfg(lr=5e-4, objective=objective, **task), objective=resolved).lr == 5e-4
