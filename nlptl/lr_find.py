"""`--lr auto`: the learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's `lr_find`,
ULMFiT's own way to set the rate).

A short run on a copy of the model, on the training data only, with a rate that grows exponentially
from 1e-7 to 10 (`--set lr_find_steps=N` steps, 100 by default, as fastai); it stops once the loss
diverges (the smoothed loss above 4x its minimum). The rate is then picked from the smoothed loss
curve by the rule "divergence/100": the rate from which the smoothed loss stays more than 25% above
where it started, divided by 100 (when it never rises that far, fastai's "valley"). fastai's own rules
("valley": two thirds down the longest fall of the curve; "minimum/10"; "steepest") are computed
and recorded too. Why this rule: a fine-tuning run of a hundred steps sees too little of each rate
for the loss to fall visibly at the rates that train best, so the curve's fall (which fastai's rules
read) is late or absent (a small GPT's curve is flat until it diverges), while the point where
training blows up is unambiguous; two decades below it was the best rate of a grid, on validation
data, for both all-MiniLM-L6-v2 and a small GPT (docs/benchmarks.md, where valley landed 4-10x too low).
The model the stage then trains starts from the same initial weights and random state as a run
given that rate by hand.

The curve and the choice go into the run directory (lr_find.json), `nlptl report` plots them, and a
resumed run reads the choice back instead of searching again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("nlptl")

START_LR, END_LR = 1e-7, 10.0  # the rates tried: the schedule "range-test" spans them (optim.py)
# An exponential moving average of the loss; fastai's 0.98 remembers ~50 of the 100 steps (four
# decades of rate), which drags the curve far behind the loss it smooths.
SMOOTHING = 0.95
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum
RISEN = 1.25  # "divergence": the smoothed loss this many times its starting level
MARGIN = 100.0  # the rate chosen is the divergence rate divided by this
RULE = "divergence/100"
FILE = "lr_find.json"


def range_test(accelerator, model, train_dataset, cfg, objective, description: str = "lr range test") -> dict:
    """Run the test on a copy of `model` (left as it was), trained for the stage's `objective` (objective.py)
    without its evaluations, and return the curve with the chosen rate."""
    from nlptl.runtime import seed_everything
    from nlptl.train import train

    steps = cfg.lr_find_steps
    # Every parameter trains at the tested rate: no freezing of any kind (--head-warmup is the LM stages').
    frozen_off = {"head_warmup": 0.0} if hasattr(cfg, "head_warmup") else {}
    test_cfg = dataclasses.replace(cfg, lr=END_LR, max_steps=steps, warmup_ratio=0.0, log_every=steps,
                                   save_every=0, gradual_unfreeze=False, unfreeze_every=None, eval_every=None,
                                   compile=False, resume=False, resume_from=None, patience=None, min_delta=0.0,
                                   **frozen_off)
    test_cfg.schedule = "range-test"  # internal: not a user's schedule (optim.schedule_factor)
    losses: list[float] = []
    smoothed: list[float] = []  # the bias-corrected moving average, as fastai's Recorder
    average = 0.0

    def stop_when(step: int, loss) -> bool:
        nonlocal average
        value = float(loss.item())
        losses.append(value)
        if not math.isfinite(value):
            return True
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed.append(average / (1 - SMOOTHING ** len(losses)))
        return len(smoothed) > 1 and smoothed[-1] > DIVERGED * min(smoothed)

    # The masking's random stream (MLM): the real run starts from the same state.
    random_source = objective.random_source
    state = random_source.generator.get_state() if getattr(random_source, "generator", None) is not None else None
    started = time.perf_counter()
    trial = copy.deepcopy(model)
    train(accelerator, trial, train_dataset, test_cfg, objective.without_evaluation(stop_when), description=description)
    del trial
    accelerator.free_memory()
    # The real run starts where a run with this rate given by hand would: same seed, same masks.
    seed_everything(cfg.seed)
    if state is not None:
        random_source.generator.set_state(state)
    lrs = [START_LR * (END_LR / START_LR) ** (i / max(1, steps - 1)) for i in range(len(smoothed))]
    suggestions = suggest(lrs, smoothed, losses[: len(lrs)])
    lr = suggestions[RULE]
    log.info("lr range test: %d steps -> chose %.3g (%s; valley %.3g, minimum/10 %.3g, steepest %.3g)",
             len(losses), lr, RULE, suggestions["valley"], suggestions["minimum/10"], suggestions["steepest"])
    return {"lr": lr, "rule": RULE, "suggestions": suggestions, "steps": len(losses),
            "seconds": round(time.perf_counter() - started, 2), "start_lr": START_LR,
            "end_lr": END_LR, "lrs": lrs, "losses": losses[: len(lrs)], "smoothed": smoothed}


def suggest(lrs: list[float], smoothed: list[float], losses: list[float] | None = None) -> dict[str, float]:
    """nlptl's rule ("divergence/100") and fastai's three on a smoothed loss curve (`losses`: the raw
    ones, whose first tenth is the starting level; the smoothed curve's start is a single loss)."""
    if len(smoothed) < 3:
        raise ValueError("the learning-rate range test needs at least 3 steps")
    n = len(smoothed)
    head = max(1, n // 10)
    start = sum((losses or smoothed)[:head]) / head
    lowest = min(range(n), key=smoothed.__getitem__)
    # "steepest": the most negative slope of the loss against log(lr).
    grads = [(smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(n - 1)]
    steepest = min(range(n - 1), key=grads.__getitem__)
    # "valley" (fastai.callback.schedule.valley): the longest decreasing run of the curve, 2/3 down it.
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    valley = max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))
    # Divergence: where the smoothed loss rises above RISEN x its start for good (a noisy loss, such as a
    # regression's, crosses that line early and falls back; the blow-up at the end stays above it).
    risen = None
    for i in range(n - 1, head - 1, -1):
        if smoothed[i] <= RISEN * start:
            break
        risen = i
    return {"divergence/100": lrs[risen] / MARGIN if risen is not None else lrs[valley], "valley": lrs[valley],
            "minimum/10": lrs[lowest] / 10, "steepest": lrs[steepest]}


def range_test_record(cfg, out: Path | None, accelerator, search: Callable[[], dict]) -> dict:
    """--lr auto for a stage: the range test's record, whose `lr` rates.resolve makes the run's rate. A
    resumed run reads back the record its first start wrote; otherwise `search()` runs the range test,
    and its record is saved in `out` before training, so that a killed run resumes with the same rate."""
    previous = Path(out) / FILE if out is not None else None
    if cfg.resuming and previous is not None and previous.is_file():
        return json.loads(previous.read_text(encoding="utf-8"))
    record = search()
    if out is not None and accelerator.is_main_process:
        save(out, record)
    return record


def save(out: Path, result: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def found_before_lowered(record: dict) -> float | None:
    """The rate the range test found, where the rate trained with is lower (capped for a pretrained body:
    `found`; retried after a one-class start: the first retry's); None when the test's rate was kept."""
    if "found" in record:
        return record["found"]
    retries = record.get("retries") or []
    return retries[0]["lr"] if retries else None

