"""The classifier training that `finetune` and its learning curve (curve.py) share: a new classifier
trained on the task data (`fit`; the data itself: data/task_data.py `prepare`), its rates (`choose_rates`,
`auto_lr`) and the guarded --lr auto run (`train_classifier`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from nlptl.config import FinetuneConfig
from nlptl.data.task_data import TaskData, class_weights
from nlptl.stages.common import Run

log = logging.getLogger("nlptl")


COLLAPSED = 0.95  # a classifier that predicts one class for more than this share of the eval set
# --lr auto's guard judges the first evaluation only from this many updates on: before, a classifier is
# still its random head, which predicts one class for everything at any rate.
GUARD_FROM_STEP = 20


class Collapsed(Exception):
    """The first evaluation of a guarded run (--lr auto) found one class predicted for nearly everything."""

    def __init__(self, step: int, share: float):
        super().__init__(f"one class for {share:.0%} of the eval set at step {step}")
        self.step, self.share = step, share


def fit(cfg: FinetuneConfig, ref, data: TaskData, train_ds, accelerator, run: Run | None = None, runlog=None,
        *, lr_source: str = "given", guard: bool = False, by_class: bool = True, calibrate: bool = True):
    """A new classifier on `ref`, trained on `train_ds`; returns (best model, TrainResult, best metrics).
    With --lora the model is the PeftModel around the trained classifier. `run`: the stage's Run, whose
    directory its checkpoints go to (none for the points of a learning curve). `lr_source`: where the rate came
    from (given, default, auto), for the advice of the one-class warning. `guard`: stop at the first
    evaluation and raise Collapsed when it predicts one class for nearly the whole eval set. `by_class`: the
    best metrics also hold the kept checkpoint's results per class and its confusion matrix (a learning
    curve's points need only the scores). `calibrate`: fit a temperature on the eval split (calibration.py),
    kept in the model's config, its record (ECE before and after) in the best metrics' "calibration"."""
    from nlptl.evaluation import classification_metrics, classify, per_class
    from nlptl.train import train

    cfg = with_min_steps(cfg, len(train_ds), accelerator.num_processes)
    guard = guard and first_evaluation(cfg, len(train_ds), accelerator.num_processes) >= GUARD_FROM_STEP
    model = new_classifier(cfg, ref, data)
    peft_model = models_lora(model, cfg)
    objective = classification(cfg, data, train_ds)
    collate = objective.collate
    threshold = cfg.threshold
    shape = data.task_shape
    collapsed: list[float] = []  # the top prediction share of a guarded run's first evaluation

    def evaluate_fn(m):
        logits, labels = classify(accelerator, m, data.eval, collate, cfg.batch_size * 2)
        metrics = classification_metrics(logits, labels, data.problem, threshold)
        if guard and not collapsed:
            collapsed.append(metrics.get("top_prediction_share", 0.0))
        return metrics

    def stop_when(step: int, loss) -> bool:
        # Checked at the step after the first evaluation (the loop asks before it evaluates).
        return bool(collapsed) and collapsed[0] > COLLAPSED

    # Four evaluations by default, the best by the task shape's score kept; a guarded run stops at a collapse.
    objective = dataclasses.replace(objective, evaluate=evaluate_fn, select=shape.select, evaluations=4,
                                    stop_when=stop_when if guard else None)
    model, result = train(accelerator, model, train_ds, cfg, objective, description="finetune",
                          checkpoints=run.checkpoints() if run is not None else None, runlog=runlog)
    if guard and collapsed and collapsed[0] > COLLAPSED:
        raise Collapsed(result.best_step or result.steps, collapsed[0])
    best = result.best or evaluate_fn(model)
    logits = labels = None
    if shape.threshold:
        # One more pass over the eval split: the threshold (--tune-threshold) and the F1 of each label.
        from nlptl.evaluation import tune_threshold

        logits, labels = classify(accelerator, model, data.eval, collate, cfg.batch_size * 2)
        if cfg.tune_threshold:
            threshold, _ = tune_threshold(logits, labels)
            log.info("--tune-threshold: %.2f gives the best micro-F1 on the eval split", threshold)
        best = classification_metrics(logits, labels, data.problem, threshold, per_label=True)
        best["threshold"] = threshold
        model.config.nlptl_threshold = threshold
        warn_degenerate_label_sets(logits, threshold, cfg)
    elif shape.one_label and best.get("top_prediction_share", 0) > COLLAPSED:
        log.warning("the classifier predicts one class for %.0f%% of the eval set: it may have learned only the "
                    "majority class (try %s)", 100 * best["top_prediction_share"], remedies(cfg, lr_source))
    if by_class and shape.classes:
        if logits is None:  # one label: the kept checkpoint's predictions (the loop kept only its scores)
            logits, labels = classify(accelerator, model, data.eval, collate, cfg.batch_size * 2)
        best = {**best, **per_class(logits, labels, data.problem, threshold, data.names)}
    if calibrate:
        if logits is None and shape.calibration is not None:
            logits, labels = classify(accelerator, model, data.eval, collate, cfg.batch_size * 2)
        best = {**best, "calibration": calibrate_model(model, logits, labels, shape)}
    # With LoRA, train() trained the model inside the PeftModel (the adapters live in it, in place);
    # the PeftModel is what saves the adapter and merges.
    return (peft_model if peft_model is not None else model), result, best


def calibrate_model(model, logits, labels, shape) -> dict:
    """The temperature of the kept model's eval logits (calibration.py) into its config, where predict,
    serve and nlptl.Classifier read it; returns the record (a regression's says it has none)."""
    from nlptl.calibration import fit_temperature

    record = fit_temperature(logits, labels, shape)
    if "temperature" in record:
        model.config.nlptl_temperature = record["temperature"]
        log.info("calibration: temperature %.3g on the eval split; expected calibration error %.4f -> %.4f",
                 record["temperature"], record["ece_before"], record["ece_after"])
    return record


def classification(cfg: FinetuneConfig, data: TaskData, train_ds):
    """A classifier's objective on `train_ds` (objective.py): the task's batches, of similar lengths, and
    its loss, weighted by class with --class-weights. What fit() trains on, and the range test too."""
    from nlptl.data.collate import classification_collator
    from nlptl.objective import Objective

    return Objective(classification_collator(data.tokenizer), loss=weighted_loss(cfg, data, train_ds), by_length=True)


def first_evaluation(cfg: FinetuneConfig, n_train: int, processes: int) -> int:
    """The step of fit()'s first evaluation (--eval-every, else a quarter of the run)."""
    import math

    from nlptl.train import total_steps

    steps = total_steps(cfg, math.ceil(n_train / (cfg.batch_size * processes)))
    return min(steps, cfg.eval_every or math.ceil(steps / 4))


def remedies(cfg: FinetuneConfig, lr_source: str) -> str:
    """What to try after a one-class classifier: never the setting that gave it (--lr auto picked the rate
    that collapsed a pretrained encoder, and the warning used to suggest --lr auto)."""
    tries = ["--class-weights auto"] if cfg.class_weights == "none" else []
    if lr_source == "auto":
        tries.append(f"a --lr below the {cfg.lr:.3g} the range test chose")
    elif lr_source == "given":
        tries.append("another --lr")
    else:
        tries.append(f"another --lr than the default {cfg.lr:g} (or --lr auto)")
    return ", ".join(tries + ["or more epochs"])


def warn_degenerate_label_sets(logits, threshold: float, cfg: FinetuneConfig) -> None:
    """The multi-label twin of the majority-class warning: a classifier that predicts every label (or
    none) for nearly every text has learned nothing a threshold can use."""
    from nlptl.evaluation import label_set_shares

    every, none = label_set_shares(logits, threshold)
    source = "--tune-threshold chose it" if cfg.tune_threshold else "--threshold"
    for share, what in ((every, "every label"), (none, "no label")):
        if share > 0.95 and logits.shape[-1] > 1:
            log.warning("at threshold %g (%s) the classifier predicts %s for %.0f%% of the eval set: try another "
                        "--threshold, more epochs or --class-weights auto", threshold, source, what, 100 * share)


def new_classifier(cfg: FinetuneConfig, ref, data: TaskData):
    """A classifier with a new head on `ref`, its config recording the task's shape."""
    import copy

    from nlptl import models

    config = copy.deepcopy(data.config)
    for key, value in (data.shape or {}).items():
        setattr(config, key, value)
    return models.load_classifier(ref, config, data.names, data.tokenizer, data.pooling)


def models_lora(model, cfg: FinetuneConfig):
    from nlptl import models

    return models.apply_lora(model, cfg) if cfg.lora else None


def weighted_loss(cfg: FinetuneConfig, data: TaskData, train_ds):
    """The training loss with --class-weights, or None (the model's own loss)."""
    weights = class_weights(cfg, data, train_ds)
    if weights is None:
        return None
    import torch

    from nlptl.models.heads import classification_loss

    log.info("class weights: %s", ", ".join(f"{n} {w:.3g}" for n, w in zip(data.names, weights, strict=True)))
    tensor = torch.tensor(weights, dtype=torch.float32)

    def loss_fn(model, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        config = getattr(model, "config", None) or model.module.config
        return classification_loss(logits, batch["labels"], config, tensor.to(logits.device))

    return loss_fn


def with_min_steps(cfg: FinetuneConfig, n_train: int, processes: int = 1) -> FinetuneConfig:
    """`cfg` with --max-steps raised to --min-steps when --epochs would give fewer steps: the step count
    must not collapse with the label count (3 epochs of 64 labels at batch 32 are 6 updates, too few for
    any head to learn). An explicit --max-steps wins."""
    import dataclasses
    import math

    from nlptl.train import total_steps

    if cfg.max_steps or not cfg.min_steps:
        return cfg
    batches = math.ceil(n_train / (cfg.batch_size * processes))
    if total_steps(cfg, batches) >= cfg.min_steps:
        return cfg
    log.info("%d examples give %d steps in %g epoch(s); training --min-steps %d", n_train, total_steps(cfg, batches),
             cfg.epochs, cfg.min_steps)
    return dataclasses.replace(cfg, max_steps=cfg.min_steps)


def choose_rates(cfg: FinetuneConfig, ref, data: TaskData, accelerator, out: Path | None):
    """finetune's rates (rates.resolve): --lr as given, the range test's (--lr auto, capped for a pretrained
    body) or the default for the body's origin. Returns (config with them, the range test's record or None,
    the handoff.Choice or None when --lr was given)."""
    from nlptl import handoff, rates

    record = auto_lr(cfg, ref, data, accelerator, out) if cfg.lr == "auto" else None
    chosen = rates.resolve(cfg, origin=handoff.origin(ref), range_test=record)
    return chosen.apply(cfg), record, chosen.choice


def auto_lr(cfg: FinetuneConfig, ref, data: TaskData, accelerator, out: Path | None) -> dict:
    """--lr auto: the range test's record, on a new classifier like the one the stage then trains; its rate
    capped for a pretrained body (rates.capped); lr_find.range_test_record: a resumed run reuses it."""
    from nlptl import handoff, lr_find, rates

    def search() -> dict:
        model = new_classifier(cfg, ref, data)
        models_lora(model, cfg)
        record = lr_find.range_test(accelerator, model, data.train, cfg, classification(cfg, data, data.train))
        capped, _ = rates.capped(record["lr"], handoff.origin(ref))
        if capped != record["lr"]:
            record.update(found=record["lr"], lr=capped)
        return record

    return lr_find.range_test_record(cfg, out, accelerator, search)


AUTO_RETRIES = 2  # --lr auto: a collapsed run is retried at a tenth of its rate, this many times at most


def train_classifier(run: Run, train_cfg: FinetuneConfig, ref, data: TaskData, accelerator, lr_found: dict | None):
    """fit() inside the run's log. Under --lr auto, a run whose first evaluation predicts one class for
    nearly the whole eval set stops there and starts again at a tenth of the rate (the record in
    lr_find.json says so, and a resumed run takes the lower rate). Returns (train_cfg, model, result,
    best)."""
    import dataclasses
    import shutil

    from nlptl import lr_find
    from nlptl.rundir import checkpoints_dir
    from nlptl.runtime import seed_everything

    cfg, out = run.cfg, run.out
    source = "auto" if lr_found is not None else ("given" if cfg.lr is not None else "default")
    while True:  # ends: the run after the last retry is not guarded
        # A resumed run is past its first evaluation, or gets it with the rate it was resumed with.
        guard = source == "auto" and not cfg.resuming and len(lr_found.get("retries", [])) < AUTO_RETRIES
        try:
            with run.open_log(accelerator) as runlog:
                model, result, best = fit(train_cfg, ref, data, data.train, accelerator, run, runlog,
                                          lr_source=source, guard=guard)
            return train_cfg, model, result, best
        except Collapsed as e:
            lower = train_cfg.lr / 10
            log.warning("--lr auto: at lr %.3g the classifier predicts one class for %.0f%% of the eval set at its "
                        "first evaluation (step %d); starting again at %.3g",
                        train_cfg.lr, 100 * e.share, e.step, lower)
            lr_found.setdefault("retries", []).append({"lr": train_cfg.lr, "step": e.step,
                                                       "top_prediction_share": e.share})
            lr_found["lr"] = lower
            if accelerator.is_main_process:
                lr_find.save(out, lr_found)
                shutil.rmtree(checkpoints_dir(out), ignore_errors=True)  # the collapsed attempt's
            accelerator.wait_for_everyone()
            train_cfg = dataclasses.replace(train_cfg, lr=lower)
            seed_everything(cfg.seed)
