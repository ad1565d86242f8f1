"""The classifier plumbing that `finetune` and its learning curve (curve.py) share: the task data read,
label-encoded and tokenized for a model (`prepare`), and a new classifier trained on it (`fit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nlptl.config import FinetuneConfig
from nlptl.errors import UsageError
from nlptl.stages.common import resume_args

log = logging.getLogger("nlptl")


PROBLEM_TYPES = {"single": "single_label_classification", "multilabel": "multi_label_classification",
                 "regression": "regression"}


@dataclass
class TaskData:
    config: object  # the model's transformers config
    tokenizer: object
    names: list[str]
    train: object  # tokenized, with `labels`
    eval: object
    eval_from: dict
    max_length: int
    problem: str = "single_label_classification"  # transformers' problem_type
    # What the classifier's config records of the task's shape (pairs, threshold, windows): what
    # `pipeline()`, `nlptl predict` and a server need to use it as it was trained.
    shape: dict = None
    pooling: str = "auto"  # --pooling, with auto resolved by the hand-off (nlptl/handoff.py pooling)
    pooling_choice: object = None  # handoff.Choice: the pooling and why


def prepare(cfg: FinetuneConfig, ref, spec, accelerator) -> TaskData:
    """Read, label-encode and tokenize the task data for `ref`'s tokenizer."""
    from nlptl import models
    from nlptl.data.collate import tokenize
    from nlptl.data.tasks import encode, label_names, read_labelled
    from nlptl.evaluation import METRICS, load_metric

    models.hub_guard(ref)
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    problem = PROBLEM_TYPES[spec.problem]
    shape = {"problem_type": problem}
    if spec.pairs:
        if cfg.long_docs == "chunk":
            raise UsageError("--long-docs chunk cuts one text into windows; it does not take sentence pairs "
                             "(--text-column with two columns): drop one of them")
        separate_pairs(tokenizer)
        shape["nlptl_text_pair"] = True
    if problem == "multi_label_classification":
        shape["nlptl_threshold"] = cfg.threshold
    if cfg.class_weights != "none" and problem == "regression":
        raise UsageError("--class-weights weighs classes; --task regression has none: drop it")
    if problem != "multi_label_classification" and (cfg.tune_threshold or cfg.threshold != 0.5):
        raise UsageError(f"{'--tune-threshold' if cfg.tune_threshold else '--threshold'} sets the decision threshold "
                         f"of --task multilabel; --task {cfg.task} takes the most likely label: drop it")
    if cfg.long_docs != "chunk" and cfg.doc_pooling != "mean":
        raise UsageError("--doc-pooling pools the windows of --long-docs chunk: add --long-docs chunk, or drop it")
    max_length = cfg.max_length or models.default_max_length(config)
    if cfg.long_docs == "chunk":
        shape.update(window_shape(cfg, config, tokenizer))
        max_length = cfg.max_length or 8 * shape["nlptl_window"]
    with accelerator.main_process_first():
        train_raw = read_labelled(spec.train, spec)
        names = label_names(spec, train_raw["label"], cfg.numeric_classes)
        train_ds = encode(train_raw, names, spec, "--train", spec.train.spec)
        check_variety(train_ds, names, problem, spec)
        if spec.eval is not None:
            eval_ds = encode(read_labelled(spec.eval, spec), names, spec, "--eval", spec.eval.spec)
            eval_from = spec.eval.record()
        else:
            train_ds, eval_ds = held_out_slice(train_ds, names, cfg.eval_fraction, cfg.seed,
                                               stratify=problem == "single_label_classification")
            eval_from = {"slice_of_train": cfg.eval_fraction, "seed": cfg.seed}
            log.info("no --eval: holding out %d of the training examples (seeded) for model selection", len(eval_ds))
        train_tok = tokenize(train_ds, tokenizer, max_length, "--train")
        eval_tok = tokenize(eval_ds, tokenizer, max_length, "--eval")
    for name in METRICS[problem]:
        load_metric(name)  # fail before training, not after, if metrics cannot load
    what = (f"a number ('{names[0]}')" if problem == "regression" else
            f"{len(names)} labels{', any number per text' if problem == 'multi_label_classification' else ''} "
            f"({', '.join(names[:6])})")
    log.info("%s: %s%s, %d train / %d eval examples, max length %d", cfg.task, what,
             ", sentence pairs" if spec.pairs else "", len(train_tok), len(eval_tok), max_length)
    from nlptl import handoff

    pooling = handoff.pooling(ref, config, cfg.pooling)
    return TaskData(config, tokenizer, names, train_tok, eval_tok, eval_from, max_length, problem, shape,
                    pooling.value, pooling)


def check_variety(ds, names: list[str], problem: str, spec) -> None:
    """Enough signal to learn from: two classes, two target values, or each label both set and unset."""
    labels = ds["label"]
    if problem == "regression":
        if len(set(labels)) < 2:
            raise UsageError(f"--train {spec.train.spec}: every target is {labels[0]:g}; a regression needs "
                             "varying targets")
    elif problem == "multi_label_classification":
        never = [n for j, n in enumerate(names) if not any(row[j] for row in labels)]
        if never:
            log.warning("--train %s: label(s) %s are never set in the training data", spec.train.spec,
                        ", ".join(f"'{n}'" for n in never[:5]))
    elif len(set(labels)) < 2:
        raise UsageError(f"--train {spec.train.spec}: holds a single class ('{names[labels[0]]}'); "
                         "a classifier needs examples of at least two labels")


def separate_pairs(tokenizer) -> None:
    """Make the tokenizer put a separator between the two texts of a pair where it puts none (GPT-style
    tokenizers just concatenate them): the EOS token, in its post-processor, so that every user of the
    saved tokenizer (pipeline, predict, a server) joins pairs the same way."""
    from tokenizers import processors

    enc = tokenizer("a", "b")
    seq = enc.sequence_ids()
    first_end = max(i for i, s in enumerate(seq) if s == 0)
    second_start = min(i for i, s in enumerate(seq) if s == 1)
    if any(s is None for s in seq[first_end + 1:second_start]):
        return  # [SEP], </s></s>, <s>...: the tokenizer's own pair format
    if tokenizer.eos_token is None:
        raise UsageError("sentence pairs need a separator token: this tokenizer has neither a pair format nor an "
                         "EOS token")
    eos = (tokenizer.eos_token, tokenizer.eos_token_id)
    pair = processors.TemplateProcessing(single="$A", pair=f"$A:0 {eos[0]}:0 $B:1", special_tokens=[eos])
    backend = tokenizer.backend_tokenizer
    current = backend.post_processor
    backend.post_processor = pair if current is None else processors.Sequence([current, pair])


def window_shape(cfg: FinetuneConfig, config, tokenizer) -> dict:
    """--long-docs chunk: the window settings the model's forward reads (heads.py)."""
    from nlptl import models

    positions = models.positions_of(config)
    window = cfg.window or models.default_max_length(config)
    if positions and window > positions:
        raise UsageError(f"--window {window} is larger than the model's {positions} positions; pass --window "
                         f"{positions} or less")
    seq = tokenizer("a b c").sequence_ids()
    pre = next(i for i, s in enumerate(seq) if s is not None)
    post = len(seq) - 1 - max(i for i, s in enumerate(seq) if s is not None)
    if window - pre - post < 2:
        raise UsageError(f"--window {window} leaves no room for text besides the {pre + post} special tokens")
    stride = cfg.stride if cfg.stride is not None else (window - pre - post) // 4
    if stride >= window - pre - post:
        raise UsageError(f"--stride {stride} must be smaller than the {window - pre - post} text tokens of a window")
    return {"nlptl_window": window, "nlptl_stride": stride, "nlptl_doc_pooling": cfg.doc_pooling,
            "nlptl_window_specials": [pre, post]}


COLLAPSED = 0.95  # a classifier that predicts one class for more than this share of the eval set
# --lr auto's guard judges the first evaluation only from this many updates on: before, a classifier is
# still its random head, which predicts one class for everything at any rate.
GUARD_FROM_STEP = 20


class Collapsed(Exception):
    """The first evaluation of a guarded run (--lr auto) found one class predicted for nearly everything."""

    def __init__(self, step: int, share: float):
        super().__init__(f"one class for {share:.0%} of the eval set at step {step}")
        self.step, self.share = step, share


def fit(cfg: FinetuneConfig, ref, data: TaskData, train_ds, accelerator, out: Path | None = None, runlog=None,
        *, lr_source: str = "given", guard: bool = False, by_class: bool = True):
    """A new classifier on `ref`, trained on `train_ds`; returns (best model, TrainResult, best metrics).
    With --lora the model is the PeftModel around the trained classifier. `out`: the run directory
    its checkpoints go to (none for the points of a learning curve). `lr_source`: where the rate came
    from (given, default, auto), for the advice of the one-class warning. `guard`: stop at the first
    evaluation and raise Collapsed when it predicts one class for nearly the whole eval set. `by_class`: the
    best metrics also hold the kept checkpoint's results per class and its confusion matrix (a learning
    curve's points need only the scores)."""
    from nlptl.data.collate import classification_collator
    from nlptl.evaluation import SELECT, classification_metrics, classify, per_class
    from nlptl.train import train

    cfg = with_min_steps(cfg, len(train_ds), accelerator.num_processes)
    guard = guard and first_evaluation(cfg, len(train_ds), accelerator.num_processes) >= GUARD_FROM_STEP
    model = new_classifier(cfg, ref, data)
    peft_model = models_lora(model, cfg)
    collate = classification_collator(data.tokenizer)
    threshold = cfg.threshold
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

    loss_fn = weighted_loss(cfg, data, train_ds)
    model, result = train(accelerator, model, train_ds, collate, cfg, description="finetune",
                          evaluate_fn=evaluate_fn, select=SELECT[data.problem], default_evals=4,
                          lengths=[len(ids) for ids in train_ds["input_ids"]], runlog=runlog, loss_fn=loss_fn,
                          head_lr=cfg.head_lr, stop_when=stop_when if guard else None, **resume_args(cfg, out))
    if guard and collapsed and collapsed[0] > COLLAPSED:
        raise Collapsed(result.best_step or result.steps, collapsed[0])
    best = result.best or evaluate_fn(model)
    logits = None
    if data.problem == "multi_label_classification":
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
    elif data.problem == "single_label_classification" and best.get("top_prediction_share", 0) > COLLAPSED:
        log.warning("the classifier predicts one class for %.0f%% of the eval set: it may have learned only the "
                    "majority class (try %s)", 100 * best["top_prediction_share"], remedies(cfg, lr_source))
    if by_class and data.problem != "regression":
        if logits is None:  # one label: the kept checkpoint's predictions (the loop kept only its scores)
            logits, labels = classify(accelerator, model, data.eval, collate, cfg.batch_size * 2)
        best = {**best, **per_class(logits, labels, data.problem, threshold, data.names)}
    # With LoRA, train() trained the model inside the PeftModel (the adapters live in it, in place);
    # the PeftModel is what saves the adapter and merges.
    return (peft_model if peft_model is not None else model), result, best


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


SHAPE_KEYS = ("problem_type", "nlptl_text_pair", "nlptl_threshold", "nlptl_window", "nlptl_stride",
              "nlptl_doc_pooling", "nlptl_window_specials")


def shape_from_lineage(lineage: dict) -> dict:
    """The config keys of a classifier's task shape, as its run's lineage records them (finetune writes
    them without the nlptl_ prefix): what rebuilding the classifier (nlptl merge) must set again."""
    out = {}
    for key in SHAPE_KEYS:
        value = lineage.get(key.removeprefix("nlptl_"))
        if value is not None:
            out[key] = value
    return out


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


def class_weights(cfg: FinetuneConfig, data: TaskData, train_ds) -> list[float] | None:
    """--class-weights as numbers: inverse frequency (auto; multi-label: negatives / positives per label),
    given, or none."""
    from nlptl.config import class_weights as parse

    weights = parse(cfg.class_weights)
    if weights == "none":
        return None
    labels = train_ds["labels"]
    n = len(data.names)
    if weights == "auto":
        if data.problem == "multi_label_classification":
            pos = [sum(row[j] for row in labels) for j in range(n)]
            return [(len(labels) - p) / p if p else 1.0 for p in pos]
        counts = [labels.count(j) for j in range(n)]
        # Inverse frequency scaled so that a balanced set gets 1 for every class (sklearn's "balanced").
        return [len(labels) / (n * c) if c else 0.0 for c in counts]
    if len(weights) != n:
        raise UsageError(f"--class-weights gives {len(weights)} weight(s) for {n} labels ({', '.join(data.names)})")
    return weights


def weighted_loss(cfg: FinetuneConfig, data: TaskData, train_ds):
    """The training loss with --class-weights, or None (the model's own loss)."""
    weights = class_weights(cfg, data, train_ds)
    if weights is None:
        return None
    import torch

    from nlptl.heads import classification_loss

    log.info("class weights: %s", ", ".join(f"{n} {w:.3g}" for n, w in zip(data.names, weights, strict=True)))
    tensor = torch.tensor(weights, dtype=torch.float32)

    def loss_fn(model, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        config = getattr(model, "config", None) or model.module.config
        return classification_loss(logits, batch["labels"], config, tensor.to(logits.device))

    return loss_fn


def rates_for(cfg: FinetuneConfig, ref) -> FinetuneConfig:
    """`cfg` with --lr (and --head-lr) resolved for the checkpoint `ref` (handoff.finetune_rates: the rule
    by where the body comes from), the choice logged."""
    from nlptl import handoff

    cfg, choice = handoff.finetune_rates(cfg, ref)
    handoff.announce(choice)
    return cfg


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


def held_out_slice(ds, names: list[str], fraction: float, seed: int, stratify: bool = True):
    """A seeded slice of the training data for model selection when no --eval is given (stratified by
    class for single-label tasks)."""
    import datasets

    if not stratify:
        parts = ds.train_test_split(test_size=fraction, seed=seed)
        return parts["train"], parts["test"]
    ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError:  # a class too small to stratify
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    return every_class_trains(parts["train"], parts["test"], names)


def every_class_trains(train, held, names: list[str]):
    """(train, held-out) with each class in training: a class whose every example fell into the held-out
    slice (one or two examples: too few to stratify) gets them back, and the run says so."""
    import datasets

    missing = sorted(set(held["label"]) - set(train["label"]))
    if not missing:
        return train, held
    back = {i for i, label in enumerate(held["label"]) if label in missing}
    if len(back) == len(held):  # nothing would be left to select with: keep the slice, and say so
        log.warning("no --eval: %d classes have no training example (each held-out example is the only one of "
                    "its class); pass --eval FILE", len(missing))
        return train, held
    log.warning("no --eval: %s %s too few examples to hold any out: kept for training only, not scored; pass "
                "--eval FILE to score every class", ", ".join(f"'{names[c]}'" for c in missing),
                "has" if len(missing) == 1 else "have")
    return (datasets.concatenate_datasets([train, held.select(sorted(back))]),
            held.select([i for i in range(len(held)) if i not in back]))


def choose_rates(cfg: FinetuneConfig, ref, data: TaskData, accelerator, out: Path | None):
    """finetune's rates: --lr as given, the range test's (--lr auto, capped for a pretrained body) or the
    default for the body's origin. Returns (config with them, the range test's record or None, the
    handoff.Choice or None when --lr was given)."""
    from nlptl import handoff

    if cfg.lr != "auto":
        train_cfg, choice = handoff.finetune_rates(cfg, ref)
        return train_cfg, None, choice
    train_cfg, record = auto_lr(cfg, ref, data, accelerator, out)
    return train_cfg, record, handoff.capped_auto_rate(record.get("found", record["lr"]), ref)[1]


def auto_lr(cfg: FinetuneConfig, ref, data: TaskData, accelerator, out: Path | None):
    """--lr auto: the rate a range test on the training split picks, on a new classifier like the one the
    stage then trains, capped for a pretrained body (handoff.capped_auto_rate); lr_find.rate_for: a resumed
    run reuses it. Returns (config with it, record)."""
    from nlptl import handoff, lr_find
    from nlptl.data.collate import classification_collator

    def search() -> dict:
        model = new_classifier(cfg, ref, data)
        models_lora(model, cfg)
        record = lr_find.range_test(accelerator, model, data.train, classification_collator(data.tokenizer), cfg,
                                    lengths=[len(ids) for ids in data.train["input_ids"]],
                                    loss_fn=weighted_loss(cfg, data, data.train))
        capped, _ = handoff.capped_auto_rate(record["lr"], ref)
        if capped != record["lr"]:
            record.update(found=record["lr"], lr=capped)
        return record

    return lr_find.rate_for(cfg, out, accelerator, search)


AUTO_RETRIES = 2  # --lr auto: a collapsed run is retried at a tenth of its rate, this many times at most


def train_classifier(cfg: FinetuneConfig, train_cfg: FinetuneConfig, ref, data: TaskData, accelerator, out: Path,
                     lr_found: dict | None):
    """fit() inside the run's log. Under --lr auto, a run whose first evaluation predicts one class for
    nearly the whole eval set stops there and starts again at a tenth of the rate (the record in
    lr_find.json says so, and a resumed run takes the lower rate). Returns (train_cfg, model, result,
    best, runlog)."""
    import dataclasses
    import shutil

    from nlptl import lr_find
    from nlptl.checkpoint import checkpoints_dir
    from nlptl.config import to_dict
    from nlptl.runtime import seed_everything
    from nlptl.tracking import RunLog

    source = "auto" if lr_found is not None else ("given" if cfg.lr is not None else "default")
    while True:  # ends: the run after the last retry is not guarded
        # A resumed run is past its first evaluation, or gets it with the rate it was resumed with.
        guard = source == "auto" and not cfg.resuming and len(lr_found.get("retries", [])) < AUTO_RETRIES
        try:
            with RunLog(accelerator, out, "finetune", to_dict(cfg), resume=cfg.resuming) as runlog:
                model, result, best = fit(train_cfg, ref, data, data.train, accelerator, out, runlog,
                                          lr_source=source, guard=guard)
            return train_cfg, model, result, best, runlog
        except Collapsed as e:
            lower = train_cfg.lr / 10
            log.warning("--lr auto: at lr %.3g the classifier predicts one class for %.0f%% of the eval set at its "
                        "first evaluation (step %d); starting again at %.3g", train_cfg.lr, 100 * e.share, e.step, lower)
            lr_found.setdefault("retries", []).append({"lr": train_cfg.lr, "step": e.step, "top_prediction_share": e.share})
            lr_found["lr"] = lower
            if accelerator.is_main_process:
                lr_find.save(out, lr_found)
                shutil.rmtree(checkpoints_dir(out), ignore_errors=True)  # the collapsed attempt's
            accelerator.wait_for_everyone()
            train_cfg = dataclasses.replace(train_cfg, lr=lower)
            seed_everything(cfg.seed)


def trained_task(ref):
    """The task the classifier was fine-tuned on (its lineage names it), for the label spellings that
    finetune accepted (sentiment's pos/neg, 0/1...); plain classification when unknown."""
    from nlptl.data.registry import task_entry

    name = ref.lineage.get("task") or "classification"
    try:
        return task_entry(name)
    except UsageError:  # a task registered on another machine
        return task_entry("classification")
