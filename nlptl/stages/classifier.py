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
    return TaskData(config, tokenizer, names, train_tok, eval_tok, eval_from, max_length)


def fit(cfg: FinetuneConfig, ref, data: TaskData, train_ds, accelerator, out: Path | None = None, runlog=None):
    """A new classifier on `ref`, trained on `train_ds`; returns (best model, TrainResult, best metrics).
    With --lora the model is the PeftModel around the trained classifier. `out`: the run directory
    its checkpoints go to (none for the points of a learning curve)."""
    import copy

    from nlptl import models
    from nlptl.data.collate import classification_collator
    from nlptl.evaluation import classification_metrics, classify
    from nlptl.train import train

    model = models.load_classifier(ref, copy.deepcopy(data.config), data.names, data.tokenizer, cfg.pooling)
    peft_model = models.apply_lora(model, cfg) if cfg.lora else None
    collate = classification_collator(data.tokenizer)

    def evaluate_fn(m):
        logits, labels = classify(accelerator, m, data.eval, collate, cfg.batch_size * 2)
        return classification_metrics(logits, labels)

    model, result = train(accelerator, model, train_ds, collate, cfg, description="finetune",
                          evaluate_fn=evaluate_fn, select=("accuracy", "max"), default_evals=4,
                          lengths=[len(ids) for ids in train_ds["input_ids"]], runlog=runlog, **resume_args(cfg, out))
    best = result.best or evaluate_fn(model)
    # With LoRA, train() trained the model inside the PeftModel (the adapters live in it, in place);
    # the PeftModel is what saves the adapter and merges.
    return (peft_model if peft_model is not None else model), result, best


def held_out_slice(ds, names: list[str], fraction: float, seed: int):
    """A seeded, stratified slice of the training data for model selection when no --eval is given."""
    import datasets

    ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError:  # a class too small to stratify
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def trained_task(ref):
    """The task the classifier was fine-tuned on (its lineage names it), for the label spellings that
    finetune accepted (sentiment's pos/neg, 0/1...); plain classification when unknown."""
    from nlptl.data.registry import task_entry

    name = (((ref.run or {}).get("lineage") or {}).get("task")) or "classification"
    try:
        return task_entry(name)
    except UsageError:  # a task registered on another machine
        return task_entry("classification")
