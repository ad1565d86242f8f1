"""The labelled data of a classifier, ready for a model: the task's files read and label-encoded by the
one reader (data/tasks.py, by the task's shape), tokenized for the model's tokenizer, with the held-out
slice that selects the checkpoint when no --eval is given (`prepare`). finetune and its learning curve
train on it; evaluate and export read their files with the same reader and the trained task's entry
(`trained_task`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nlptl.config import FinetuneConfig
from nlptl.data.tasks import encode, label_names, read_encoded, read_labelled
from nlptl.errors import UsageError
from nlptl.shapes import SHAPES, TaskShape, of_problem

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
    problem: str = "single_label_classification"  # transformers' problem_type, naming its TaskShape
    # What the classifier's config records of the task's shape (pairs, threshold, windows): what
    # `pipeline()`, `nlptl predict` and a server need to use it as it was trained.
    shape: dict = None
    pooling: str = "auto"  # --pooling, with auto resolved by the hand-off (nlptl/handoff.py pooling)
    pooling_choice: object = None  # handoff.Choice: the pooling and why

    @property
    def task_shape(self) -> TaskShape:
        """The task's shape (nlptl/shapes.py): its scores, selection, decisions."""
        return of_problem(self.problem)


def prepare(cfg: FinetuneConfig, ref, spec, accelerator) -> TaskData:
    """Read, label-encode and tokenize the task data for `ref`'s tokenizer."""
    from nlptl import models
    from nlptl.data.collate import tokenize
    from nlptl.evaluation import load_metric

    config, tokenizer = models.load_config_and_tokenizer(ref)
    task = spec.shape
    shape = {"problem_type": task.problem_type}
    if spec.pairs:
        if cfg.long_docs == "chunk":
            raise UsageError("--long-docs chunk cuts one text into windows; it does not take sentence pairs "
                             "(--text-column with two columns): drop one of them")
        separate_pairs(tokenizer)
        shape["nlptl_text_pair"] = True
    if task.threshold:
        shape["nlptl_threshold"] = cfg.threshold
    if cfg.class_weights != "none" and not task.classes:
        raise UsageError(f"--class-weights weighs classes; --task {task.name} has none: drop it")
    if not task.threshold and (cfg.tune_threshold or cfg.threshold != 0.5):
        with_threshold = " or ".join(f"--task {s.name}" for s in SHAPES.values() if s.threshold)
        raise UsageError(f"{'--tune-threshold' if cfg.tune_threshold else '--threshold'} sets the decision threshold "
                         f"of {with_threshold}; --task {cfg.task} takes the most likely label: drop it")
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
        task.check_variety(train_ds["label"], names, spec)  # enough signal to learn from
        if spec.eval is not None:
            eval_ds = read_encoded(spec.eval, names, spec)
            eval_from = spec.eval.record()
        else:
            train_ds, eval_ds = held_out_slice(train_ds, names, cfg.eval_fraction, cfg.seed,
                                               stratify=task.one_label)
            eval_from = {"slice_of_train": cfg.eval_fraction, "seed": cfg.seed}
            log.info("no --eval: holding out %d of the training examples (seeded) for model selection", len(eval_ds))
        train_tok = tokenize(train_ds, tokenizer, max_length, "--train")
        eval_tok = tokenize(eval_ds, tokenizer, max_length, "--eval")
    for name in task.metric_modules:
        load_metric(name)  # fail before training, not after, if metrics cannot load
    log.info("%s: %s%s, %d train / %d eval examples, max length %d", cfg.task, task.describe(names),
             ", sentence pairs" if spec.pairs else "", len(train_tok), len(eval_tok), max_length)
    from nlptl import handoff

    pooling = handoff.pooling(ref, config, cfg.pooling)
    return TaskData(config, tokenizer, names, train_tok, eval_tok, eval_from, max_length, task.problem_type, shape,
                    pooling.value, pooling)


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
        return data.task_shape.auto_weights(labels, n)
    if len(weights) != n:
        raise UsageError(f"--class-weights gives {len(weights)} weight(s) for {n} labels ({', '.join(data.names)})")
    return weights


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


def trained_task(ref):
    """The task the classifier was fine-tuned on (its lineage names it), for the label spellings that
    finetune accepted (sentiment's pos/neg, 0/1...); plain classification when unknown."""
    from nlptl.data.registry import task_entry

    name = ref.lineage.get("task") or "classification"
    try:
        return task_entry(name)
    except UsageError:  # a task registered on another machine
        return task_entry("classification")
