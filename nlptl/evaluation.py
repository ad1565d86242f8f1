"""Evaluation passes: perplexity of a language model on held-out blocks, logits of a classifier.

Both gather per-example results with `gather_for_metrics`, which drops the duplicates that the
padded last batch of a multi-process run would otherwise count twice.
"""

from __future__ import annotations

import math
from pathlib import Path

METRICS_DIR = Path(__file__).parent / "metrics"
EVAL_LOG_SECONDS = 5.0  # in logs, a progress line of an evaluation at most this often


def lm_loss(accelerator, model, dataset, collate_fn, batch_size: int, description: str = "perplexity") -> dict:
    """Mean loss per predicted token, and its perplexity, over `dataset` (fixed masks for MLM:
    the collator is built fresh with a seed by the caller)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from nlptl.console import Progress

    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn))
    model.eval()
    sums, counts = [], []
    # Held-out scoring of a large model can take minutes: it shows progress like training does.
    progress = Progress(description, len(loader), max(1, len(loader) // 10), min_seconds=EVAL_LOG_SECONDS)
    with torch.no_grad(), eager():
        for i, batch in enumerate(loader, 1):
            progress.update(i, {})
            labels = batch.pop("labels")
            logits = model(**batch).logits
            if labels.shape == batch["input_ids"].shape and _is_causal(model):
                logits, labels = logits[:, :-1], labels[:, 1:]
            token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
            valid = labels != -100
            s, n = accelerator.gather_for_metrics(((token_loss * valid).sum(1), valid.sum(1)))
            sums.append(s.double().cpu())
            counts.append(n.cpu())
    progress.close()
    total = torch.cat(sums).sum().item()
    n = int(torch.cat(counts).sum().item())
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n}


def eager():
    """Evaluation ignores `--compile`: a compiled training graph does not fit a no-grad pass, and
    compiling another one (a minute for a base-sized model) for a few held-out batches costs more
    than it saves."""
    import torch

    return torch.compiler.set_stance("force_eager")


def _is_causal(model) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    unwrapped = getattr(model, "module", model)
    return type(unwrapped).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def classify(accelerator, model, dataset, collate_fn, batch_size: int, description: str = "scoring"):
    """(logits, labels or None) for every example of `dataset`. Examples are scored sorted by length
    (batches pad to their longest text, so sorting cuts padding); rows come back in that order,
    logits and labels aligned."""
    import torch
    from torch.utils.data import DataLoader

    if "input_ids" in dataset.column_names:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        order = sorted(range(len(dataset)), key=lengths.__getitem__)
        dataset = dataset.select(order)
    from nlptl.console import Progress

    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn))
    model.eval()
    all_logits, all_labels = [], []
    progress = Progress(description, len(loader), max(1, len(loader) // 10), min_seconds=EVAL_LOG_SECONDS)
    with torch.no_grad(), eager():
        for i, batch in enumerate(loader, 1):
            progress.update(i, {})
            labels = batch.pop("labels", None)
            logits = model(**batch).logits.float()
            if labels is not None:
                logits, labels = accelerator.gather_for_metrics((logits, labels))
                all_labels.append(labels.cpu())
            else:
                logits = accelerator.gather_for_metrics(logits)
            all_logits.append(logits.cpu())
    progress.close()
    return torch.cat(all_logits), (torch.cat(all_labels) if all_labels else None)


_metric_cache: dict = {}


def load_metric(name: str):
    """An `evaluate` metric from the modules shipped in nlptl/metrics (works offline)."""
    if name not in _metric_cache:
        import evaluate

        _metric_cache[name] = evaluate.load(str(METRICS_DIR / name))
    return _metric_cache[name]


# What each task shape selects its best checkpoint by, and in which direction.
SELECT = {"single_label_classification": ("accuracy", "max"), "multi_label_classification": ("f1_micro", "max"),
          "regression": ("rmse", "min")}
METRICS = {"single_label_classification": ("accuracy", "f1"), "multi_label_classification": ("multilabel",),
           "regression": ("regression",)}


def classification_metrics(logits, labels, problem: str = "single_label_classification", threshold: float = 0.5,
                           per_label: bool = False) -> dict:
    """The scores of a classifier's logits against the labels, for its task shape. Single label: accuracy,
    macro-F1, and the share of the most predicted class (near 1: the "predicts one class" trap);
    multi-label: micro/macro-F1 and subset accuracy at `threshold` (and F1 per label with `per_label`);
    regression: RMSE, MAE, Pearson, Spearman. Each with the loss."""
    import torch
    import torch.nn.functional as F

    if problem == "regression":
        values = logits[:, 0].double()
        scores = load_metric("regression").compute(predictions=values.tolist(), references=labels.double().tolist())
        return {**{k: float(v) for k, v in scores.items()}, "loss": float(F.mse_loss(values, labels.double()).item())}
    if problem == "multi_label_classification":
        preds = (logits.sigmoid() >= threshold).to(torch.int8)
        scores = load_metric("multilabel").compute(predictions=preds.tolist(), references=labels.to(torch.int8).tolist())
        out = {k: float(scores[k]) for k in ("f1_micro", "f1_macro", "subset_accuracy")}
        if per_label:
            out["f1_per_label"] = [float(x) for x in scores["f1_per_label"]]
        return {**out, "loss": float(F.binary_cross_entropy_with_logits(logits, labels.float()).item())}
    preds = logits.argmax(-1)
    return {
        "accuracy": float(load_metric("accuracy").compute(predictions=preds, references=labels)["accuracy"]),
        "f1_macro": float(load_metric("f1").compute(predictions=preds, references=labels, average="macro")["f1"]),
        "loss": float(F.cross_entropy(logits, labels).item()),
        "top_prediction_share": float(preds.bincount().max().item() / max(len(preds), 1)),
    }


def per_class(logits, labels, problem: str, threshold: float, names: list[str]) -> dict:
    """Precision, recall, F1 and support of each class (of each label, multi-label: at `threshold`) and the
    confusion matrix, by scikit-learn, in the order of `names`. One label: rows are the true class,
    columns the predicted one; multi-label: one [[TN, FP], [FN, TP]] per label. Nothing for regression."""
    if problem not in ("single_label_classification", "multi_label_classification"):
        return {}
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(names)))
    if problem == "multi_label_classification":
        truth, preds = labels.int().numpy(), (logits.sigmoid() >= threshold).int().numpy()
        matrix = multilabel_confusion_matrix(truth, preds, labels=ids)
    else:
        truth, preds = labels.numpy(), logits.argmax(-1).numpy()
        matrix = confusion_matrix(truth, preds, labels=ids)
    # zero_division=0: a class absent from both truth and predictions scores 0, without a warning.
    precision, recall, f1, support = precision_recall_fscore_support(truth, preds, labels=ids, zero_division=0)
    rows = [{"label": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, name in enumerate(names)]
    return {"per_class": rows, "confusion_matrix": {"labels": list(names), "matrix": matrix.tolist()}}


def label_set_shares(logits, threshold: float) -> tuple[float, float]:
    """The share of texts for which a multi-label classifier predicts every label, and the share for
    which it predicts none: micro-F1 can look fine on either (a low threshold gives recall 1)."""
    preds = logits.sigmoid() >= threshold
    n = max(len(preds), 1)
    return float(preds.all(-1).sum().item() / n), float((~preds.any(-1)).sum().item() / n)


def tune_threshold(logits, labels) -> tuple[float, dict]:
    """The decision threshold (0.05 ... 0.95) with the best micro-F1 on these (eval) logits; ties go
    to the one nearest 0.5."""
    best = None
    for t in [round(0.05 * i, 2) for i in range(1, 20)]:
        scores = classification_metrics(logits, labels, "multi_label_classification", t)
        key = (scores["f1_micro"], -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, t, scores)
    return best[1], best[2]
