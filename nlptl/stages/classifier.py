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


@dataclass
class TaskData:
    config: object  # the model's transformers config
    tokenizer: object
    names: list[str]
    train: object  # tokenized, with `labels`
    eval: object
    eval_from: dict
    max_length: int
    pooling: str = "auto"  # --pooling, with auto resolved from the checkpoint where it says (trained_pooling)


def prepare(cfg: FinetuneConfig, ref, spec, accelerator) -> TaskData:
    """Read, label-encode and tokenize the task data for `ref`'s tokenizer."""
    from nlptl import models
    from nlptl.data.collate import tokenize
    from nlptl.data.tasks import encode, label_names, read_labelled
    from nlptl.evaluation import load_metric

    models.hub_guard(ref)
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    max_length = cfg.max_length or models.default_max_length(config)
    with accelerator.main_process_first():
        train_raw = read_labelled(spec.train, spec)
        names = label_names(spec, train_raw["label"], cfg.numeric_classes)
        train_ds = encode(train_raw, names, spec, "--train", spec.train.spec)
        if len(set(train_ds["label"])) < 2:
            raise UsageError(f"--train {spec.train.spec}: holds a single class ('{names[train_ds[0]['label']]}'); "
                             "a classifier needs examples of at least two labels")
        if spec.eval is not None:
            eval_ds = encode(read_labelled(spec.eval, spec), names, spec, "--eval", spec.eval.spec)
            eval_from = spec.eval.record()
        else:
            train_ds, eval_ds = held_out_slice(train_ds, names, cfg.eval_fraction, cfg.seed)
            eval_from = {"slice_of_train": cfg.eval_fraction, "seed": cfg.seed}
            log.info("no --eval: holding out %d of the training examples (seeded) for model selection", len(eval_ds))
        train_tok = tokenize(train_ds, tokenizer, max_length, "--train")
        eval_tok = tokenize(eval_ds, tokenizer, max_length, "--eval")
    load_metric("accuracy"), load_metric("f1")  # fail before training, not after, if metrics cannot load
    log.info("%s: %d labels (%s), %d train / %d eval examples, max length %d",
             cfg.task, len(names), ", ".join(names[:6]), len(train_tok), len(eval_tok), max_length)
    pooling = cfg.pooling if cfg.pooling != "auto" else (models.trained_pooling(ref) or "auto")
    return TaskData(config, tokenizer, names, train_tok, eval_tok, eval_from, max_length, pooling)


def fit(cfg: FinetuneConfig, ref, data: TaskData, train_ds, accelerator, out: Path | None = None, runlog=None):
    """A new classifier on `ref`, trained on `train_ds`; returns (best model, TrainResult, best metrics).
    With --lora the model is the PeftModel around the trained classifier. `out`: the run directory
    its checkpoints go to (none for the points of a learning curve)."""
    import copy

    from nlptl import models
    from nlptl.data.collate import classification_collator
    from nlptl.evaluation import classification_metrics, classify
    from nlptl.train import train

    cfg = with_min_steps(cfg, len(train_ds), accelerator.num_processes)
    model = models.load_classifier(ref, copy.deepcopy(data.config), data.names, data.tokenizer, data.pooling)
    peft_model = models.apply_lora(model, cfg) if cfg.lora else None
    collate = classification_collator(data.tokenizer)

    def evaluate_fn(m):
        logits, labels = classify(accelerator, m, data.eval, collate, cfg.batch_size * 2)
        return classification_metrics(logits, labels)

    model, result = train(accelerator, model, train_ds, collate, cfg, description="finetune",
                          evaluate_fn=evaluate_fn, select=("accuracy", "max"), default_evals=4,
                          lengths=[len(ids) for ids in train_ds["input_ids"]], runlog=runlog, head_lr=cfg.head_lr,
                          **resume_args(cfg, out))
    best = result.best or evaluate_fn(model)
    # With LoRA, train() trained the model inside the PeftModel (the adapters live in it, in place);
    # the PeftModel is what saves the adapter and merges.
    return (peft_model if peft_model is not None else model), result, best


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


def held_out_slice(ds, names: list[str], fraction: float, seed: int):
    """A seeded, stratified slice of the training data for model selection when no --eval is given."""
    import datasets

    ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError:  # a class too small to stratify
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]
