"""The task shapes of a classifier, one table: one label of a set (`single`), any number of labels
(`multilabel`), a number (`regression`). Each `TaskShape` holds what the rest of nlptl asks of a shape:
how its labels are read and encoded, its loss, its scores and the one that keeps the best checkpoint,
its learning curve's scores, its card's words and plot labels, how its logits become the answer, and how
its probabilities are calibrated (a temperature, Guo et al. 2017: nlptl/calibration.py).

A new shape is a new entry in SHAPES and its functions here (and its loss in heads.LOSSES: heads.py is
copied into run directories and imports nothing of nlptl). Modules ask the shape (`by_name`, `of_problem`,
`of_config`); none switches on its name.

Light at import (no torch): `nlptl --help` reads the task names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from nlptl.errors import UsageError

log = logging.getLogger("nlptl")


@dataclass(frozen=True)
class Calibration:
    """How a shape's scores are probabilities that one temperature T calibrates (logits / T)."""

    nll: Callable  # (logits, labels) -> the mean negative log-likelihood that the temperature minimises
    reliability: Callable  # (logits, labels) -> (confidence, outcome) 1-d tensors, what ECE bins
    threshold: Callable  # (decision threshold on the raw scores, T) -> the same threshold on the calibrated ones


@dataclass(frozen=True)
class TaskShape:
    name: str  # the task's shape in registry.yaml (`problem:`) and in a TaskEntry
    problem_type: str  # transformers' config.problem_type: what the saved classifier records
    one_label: bool  # one class per text: held-out slices and curve subsets are stratified by it
    classes: bool  # labels are classes: per-class results and --class-weights apply
    threshold: bool  # answers with every label at or above a decision threshold (--threshold)
    several_label_columns: bool  # takes several 0/1 --label-column columns
    metric_modules: tuple[str, ...]  # the `evaluate` modules of nlptl/metrics its scores load
    select: tuple[str, str]  # the score that keeps the best checkpoint, and its direction
    curve: tuple[str, str]  # a learning curve's two scores (the first is plotted)
    plot_scores: tuple[tuple[str, str], ...]  # `nlptl report`'s score panel: (score, label)
    score_floor: float  # the lower end of that panel (correlations go to -1)
    loss_name: str  # the y label of the report's loss panel
    card_scores: str  # the card's words for the scores
    pipeline_args: tuple[str, ...]  # what transformers' pipeline() needs for this shape (the card's usage)
    label_names: Callable  # (spec, train label cells, numeric_classes) -> the label names
    encode: Callable  # (rows, names, spec, flag, where, trained) -> rows with what the model learns
    check_variety: Callable  # (encoded labels, names, spec): enough signal to learn from
    describe: Callable  # (names) -> the log's words for the label set
    scores: Callable  # (logits, labels, threshold, per_label) -> dict of scores, with the loss
    decide: Callable  # (logits, threshold) -> the decisions: class ids, 0/1 rows or values
    confusion: Callable | None  # (truth, decisions, ids) -> the confusion matrix (None: no classes)
    auto_weights: Callable | None  # (encoded labels, n) -> --class-weights auto (None: no classes)
    outputs: Callable  # (logits, names, threshold) -> one answer per row: what predict and serve return
    calibration: Calibration | None  # None: its answers are no probabilities (nothing to calibrate)


# --- single: one label of a set -------------------------------------------------------------------

def single_label_names(spec, labels: list[str], numeric_classes: bool = False) -> list[str]:
    from nlptl.data.tasks import check_not_multilabel, class_names

    if spec.entry.labels:
        return list(spec.entry.labels)
    check_not_multilabel(labels, spec)
    return class_names(labels, numeric_classes)


def encode_classes(ds, names: list[str], spec, src_flag: str, src_spec: str, trained: bool = False):
    """Class ids by label name (any case) or the task's alias; `trained`: `names` are a trained
    classifier's (nlptl evaluate), which also takes its integer ids and names the labels it does not know."""
    from nlptl.data.tasks import check_not_multilabel, label_ids, nonempty, refuse_empty

    refuse_empty(ds["label"], spec, src_flag, src_spec)
    ids, unknown = label_ids(ds["label"], names, spec.entry.aliases, by_id=trained)
    if unknown:
        shown = ", ".join(f"'{k}'" for k in list(unknown)[:5])
        if trained:
            raise UsageError(f"{src_flag} {src_spec}: labels the classifier does not know: {shown}; its labels are "
                             f"{', '.join(names)}")
        check_not_multilabel(list(unknown), spec, f"{src_flag} {src_spec}")
        if src_flag == "--eval" or not spec.entry.labels:
            why = "labels not seen in the training data"
        else:
            why = f"labels outside the task's set ({', '.join(names)})"
        fix = "fix the labels" if spec.entry.name == "classification" or not spec.entry.labels else \
            "fix the labels or use --task classification"
        raise UsageError(f"{src_flag} {src_spec}: {why}: {shown}; {fix}")
    blank = sum(1 for t in ds["text"] if t is None or not t.strip())
    if blank:
        log.warning("%s %s: dropped %d row(s) with an empty text", src_flag, src_spec, blank)
    return nonempty(ds, ids, src_flag, src_spec)


def two_classes(labels: list, names: list[str], spec) -> None:
    """Examples of at least two classes: with one, there is nothing to tell apart."""
    if len(set(labels)) < 2:
        raise UsageError(f"--train {spec.train.spec}: holds a single class ('{names[labels[0]]}'); "
                         "a classifier needs examples of at least two labels")


def single_scores(logits, labels, threshold: float, per_label: bool) -> dict:
    """Accuracy, macro-F1 and the share of the most predicted class (near 1: the "predicts one class" trap)."""
    import torch.nn.functional as F

    from nlptl.evaluation import load_metric

    preds = logits.argmax(-1)
    return {
        "accuracy": float(load_metric("accuracy").compute(predictions=preds, references=labels)["accuracy"]),
        "f1_macro": float(load_metric("f1").compute(predictions=preds, references=labels, average="macro")["f1"]),
        "loss": float(F.cross_entropy(logits, labels).item()),
        "top_prediction_share": float(preds.bincount().max().item() / max(len(preds), 1)),
    }


def single_confusion(truth, preds, ids: list[int]):
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, preds, labels=ids)


def inverse_frequency(labels: list[int], n: int) -> list[float]:
    counts = [labels.count(j) for j in range(n)]
    # Inverse frequency scaled so that a balanced set gets 1 for every class (sklearn's "balanced").
    return [len(labels) / (n * c) if c else 0.0 for c in counts]


def single_outputs(logits, names: list[str], threshold: float) -> list[dict]:
    """Softmax: {"label", "score", "scores"}."""
    out = []
    for row in logits.softmax(-1).tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row, strict=True))})
    return out


def single_nll(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels)


def top_confidence(logits, labels):
    """The probability of the predicted class, and whether the prediction is right."""
    confidence, preds = logits.softmax(-1).max(-1)
    return confidence, (preds == labels).to(confidence.dtype)


# --- multilabel: any number of labels of a set ------------------------------------------------------

def multilabel_names(spec, labels: list[str], numeric_classes: bool = False) -> list[str]:
    """The task's labels, the label columns, or every distinct part of the cells ('sports;politics')."""
    from nlptl.data.tasks import class_names, split_cell

    if spec.entry.labels:
        return list(spec.entry.labels)
    if len(spec.label_columns) > 1:
        return spec.label_columns
    return class_names([part for v in labels for part in split_cell(v, spec.separator)], numeric_classes)


def encode_label_sets(ds, names: list[str], spec, src_flag: str, src_spec: str, trained: bool = False):
    """Multi-hot rows; an empty cell is a text with none of the labels."""
    from nlptl.data.tasks import nonempty, split_cell

    if len(spec.label_columns) > 1 and set(spec.label_columns) != set(names):  # a trained classifier's labels
        missing = [n for n in names if n not in spec.label_columns]
        raise UsageError(f"--label-column {spec.label_column}: the classifier's labels are {', '.join(names)}; "
                         + (f"name a 0/1 column for each (missing: {', '.join(missing)})" if missing else
                            "it does not know " + ", ".join(c for c in spec.label_columns if c not in names)))
    labels = ds["label"]
    if len(spec.label_columns) == 1:
        empty = [i for i, v in enumerate(labels) if v is None or str(v).strip() == ""]
        if empty:
            log.info("%s %s: %d row(s) have no label (an empty cell: none of the labels)", src_flag, src_spec,
                     len(empty))
    index = {n.lower(): i for i, n in enumerate(names)}
    rows, unknown = [], {}
    for v in labels:
        row = [0.0] * len(names)
        for part in split_cell(v, spec.separator):
            if part.lower() in index:
                row[index[part.lower()]] = 1.0
            else:
                unknown[part] = unknown.get(part, 0) + 1
        rows.append(row)
    if unknown:
        shown = ", ".join(f"'{k}'" for k in list(unknown)[:5])
        raise UsageError(f"{src_flag} {src_spec}: labels not seen in the training data: {shown}; fix the labels")
    return nonempty(ds, rows, src_flag, src_spec)


def each_label_set(labels: list, names: list[str], spec) -> None:
    """Each label set somewhere: one never set is learnt as never (a warning, not an error)."""
    never = [n for j, n in enumerate(names) if not any(row[j] for row in labels)]
    if never:
        log.warning("--train %s: label(s) %s are never set in the training data", spec.train.spec,
                    ", ".join(f"'{n}'" for n in never[:5]))


def multilabel_scores(logits, labels, threshold: float, per_label: bool) -> dict:
    """Micro/macro-F1 and subset accuracy at `threshold` (and F1 per label with `per_label`)."""
    import torch
    import torch.nn.functional as F

    from nlptl.evaluation import load_metric

    preds = multilabel_decide(logits, threshold).to(torch.int8)
    scores = load_metric("multilabel").compute(predictions=preds.tolist(), references=labels.to(torch.int8).tolist())
    out = {k: float(scores[k]) for k in ("f1_micro", "f1_macro", "subset_accuracy")}
    if per_label:
        out["f1_per_label"] = [float(x) for x in scores["f1_per_label"]]
    return {**out, "loss": float(F.binary_cross_entropy_with_logits(logits, labels.float()).item())}


def multilabel_decide(logits, threshold: float):
    return logits.sigmoid() >= threshold


def multilabel_confusion(truth, preds, ids: list[int]):
    """One [[TN, FP], [FN, TP]] per label."""
    from sklearn.metrics import multilabel_confusion_matrix

    return multilabel_confusion_matrix(truth, preds, labels=ids)


def negatives_per_positive(labels: list, n: int) -> list[float]:
    pos = [sum(row[j] for row in labels) for j in range(n)]
    return [(len(labels) - p) / p if p else 1.0 for p in pos]


def multilabel_outputs(logits, names: list[str], threshold: float) -> list[dict]:
    """Sigmoid; every label at or above the threshold: {"labels", "scores", "threshold"}."""
    out = []
    for row in logits.sigmoid().tolist():
        out.append({"labels": [n for n, p in zip(names, row, strict=True) if p >= threshold],
                    "scores": dict(zip(names, row, strict=True)), "threshold": threshold})
    return out


def multilabel_nll(logits, labels):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def every_label_probability(logits, labels):
    """Every label's probability of a text, and whether the text has that label."""
    return logits.sigmoid().flatten(), labels.to(logits.dtype).flatten()


def sigmoid_threshold(threshold: float, temperature: float) -> float:
    """sigmoid(z / T) >= t' exactly where sigmoid(z) >= t: t' = sigmoid(logit(t) / T). The decisions stay."""
    import math

    return 1 / (1 + math.exp(-math.log(threshold / (1 - threshold)) / temperature))


# --- regression: a number ------------------------------------------------------------------------

def regression_names(spec, labels: list[str], numeric_classes: bool = False) -> list[str]:
    """The one output, named by its column."""
    return [spec.label_columns[0]]


def varying_targets(labels: list, names: list[str], spec) -> None:
    """More than one target value: a constant has nothing to fit."""
    if len(set(labels)) < 2:
        raise UsageError(f"--train {spec.train.spec}: every target is {labels[0]:g}; a regression needs "
                         "varying targets")


def encode_numbers(ds, names: list[str], spec, src_flag: str, src_spec: str, trained: bool = False):
    import math

    from nlptl.data.tasks import nonempty, refuse_empty

    refuse_empty(ds["label"], spec, src_flag, src_spec)
    out = []
    for i, v in enumerate(ds["label"]):
        try:
            x = float(str(v).strip())
        except ValueError:
            x = None
        if x is None or not math.isfinite(x):
            raise UsageError(f"{src_flag} {src_spec}: data row {i + 1} has the label '{v}', not a finite number; "
                             "--task regression needs numeric targets (fix or drop the row)")
        out.append(x)
    return nonempty(ds, out, src_flag, src_spec)


def regression_scores(logits, labels, threshold: float, per_label: bool) -> dict:
    """RMSE, MAE, Pearson, Spearman."""
    import torch.nn.functional as F

    from nlptl.evaluation import load_metric

    values = logits[:, 0].double()
    scores = load_metric("regression").compute(predictions=values.tolist(), references=labels.double().tolist())
    return {**{k: float(v) for k, v in scores.items()}, "loss": float(F.mse_loss(values, labels.double()).item())}


def regression_outputs(logits, names: list[str], threshold: float) -> list[dict]:
    """The number itself: {"value"}."""
    return [{"value": v} for v in logits[:, 0].tolist()]


def _classes(names: list[str]) -> str:
    return f"{len(names)} labels ({', '.join(names[:6])})"


SINGLE = TaskShape(
    "single", "single_label_classification", one_label=True, classes=True, threshold=False,
    several_label_columns=False, metric_modules=("accuracy", "f1"), select=("accuracy", "max"),
    curve=("accuracy", "f1_macro"), plot_scores=(("accuracy", "accuracy"), ("f1_macro", "macro-F1")), score_floor=0.0,
    loss_name="cross-entropy loss (nats)", card_scores="accuracy and macro-F1", pipeline_args=(),
    label_names=single_label_names, encode=encode_classes, check_variety=two_classes, describe=_classes,
    scores=single_scores, decide=lambda logits, threshold: logits.argmax(-1), confusion=single_confusion,
    auto_weights=inverse_frequency, outputs=single_outputs,
    # The threshold is unused: one label is the highest score, which a temperature does not change.
    calibration=Calibration(single_nll, top_confidence, threshold=lambda threshold, temperature: threshold),
)
MULTILABEL = TaskShape(
    "multilabel", "multi_label_classification", one_label=False, classes=True, threshold=True,
    several_label_columns=True, metric_modules=("multilabel",), select=("f1_micro", "max"),
    curve=("f1_micro", "f1_macro"), plot_scores=(("f1_micro", "micro-F1"), ("f1_macro", "macro-F1")), score_floor=0.0,
    loss_name="binary cross-entropy", card_scores="micro/macro-F1 and subset accuracy (at the threshold below)",
    pipeline_args=("top_k=None",),
    label_names=multilabel_names, encode=encode_label_sets, check_variety=each_label_set,
    describe=lambda names: f"{len(names)} labels, any number per text ({', '.join(names[:6])})",
    scores=multilabel_scores, decide=multilabel_decide, confusion=multilabel_confusion,
    auto_weights=negatives_per_positive, outputs=multilabel_outputs,
    calibration=Calibration(multilabel_nll, every_label_probability, sigmoid_threshold),
)
REGRESSION = TaskShape(
    "regression", "regression", one_label=False, classes=False, threshold=False,
    several_label_columns=False, metric_modules=("regression",), select=("rmse", "min"),
    curve=("rmse", "pearson"), plot_scores=(("pearson", "Pearson r"), ("spearman", "Spearman rho")), score_floor=-1.0,
    loss_name="mean squared error", card_scores="RMSE, MAE, Pearson and Spearman correlation",
    # else the pipeline squashes the number with a sigmoid
    pipeline_args=('function_to_apply="none"',),
    label_names=regression_names, encode=encode_numbers, check_variety=varying_targets,
    describe=lambda names: f"a number ('{names[0]}')",
    scores=regression_scores, decide=lambda logits, threshold: logits[:, 0], confusion=None,
    auto_weights=None, outputs=regression_outputs, calibration=None,
)

SHAPES = {s.name: s for s in (SINGLE, MULTILABEL, REGRESSION)}
BY_PROBLEM_TYPE = {s.problem_type: s for s in SHAPES.values()}


def by_name(name: str) -> TaskShape:
    """A task's shape by its name (a TaskEntry's `problem`)."""
    return SHAPES[name]


def of_problem(problem_type: str | None) -> TaskShape:
    """The shape of transformers' `problem_type` (one label when unset)."""
    return BY_PROBLEM_TYPE.get(problem_type, SINGLE)


def of_config(config) -> TaskShape:
    """The shape a classifier's config says it was trained for (transformers' own rule when unset: one
    output is a regression)."""
    problem = getattr(config, "problem_type", None)
    if problem in BY_PROBLEM_TYPE:
        return BY_PROBLEM_TYPE[problem]
    return REGRESSION if getattr(config, "num_labels", 2) == 1 else SINGLE
