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

    sums, counts = [], []
    for batch, labels, logits in forward_passes(accelerator, model, dataset, collate_fn, batch_size, description):
        if labels.shape == batch["input_ids"].shape and _is_causal(model):
            logits, labels = logits[:, :-1], labels[:, 1:]
        token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        valid = labels != -100
        s, n = accelerator.gather_for_metrics(((token_loss * valid).sum(1), valid.sum(1)))
        sums.append(s.double().cpu())
        counts.append(n.cpu())
    total = torch.cat(sums).sum().item()
    n = int(torch.cat(counts).sum().item())
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n}


def forward_passes(accelerator, model, dataset, collate_fn, batch_size: int, description: str):
    """(batch, its labels or None, logits) for each batch of `dataset`, the model in eval mode, without
    gradients or --compile (`eager`). The caller's code between two batches runs under the same no-grad
    mode: the generator holds it until the last batch."""
    import torch
    from torch.utils.data import DataLoader

    from nlptl.console import Progress

    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn))
    model.eval()
    # Held-out scoring of a large model can take minutes: it shows progress like training does.
    progress = Progress(description, len(loader), max(1, len(loader) // 10), min_seconds=EVAL_LOG_SECONDS)
    with torch.no_grad(), eager():
        for i, batch in enumerate(loader, 1):
            progress.update(i, {})
            labels = batch.pop("labels", None)
            yield batch, labels, model(**batch).logits
    progress.close()


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

    if "input_ids" in dataset.column_names:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        order = sorted(range(len(dataset)), key=lengths.__getitem__)
        dataset = dataset.select(order)
    all_logits, all_labels = [], []
    for _, labels, logits in forward_passes(accelerator, model, dataset, collate_fn, batch_size, description):
        logits = logits.float()
        if labels is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_labels.append(labels.cpu())
        else:
            logits = accelerator.gather_for_metrics(logits)
        all_logits.append(logits.cpu())
    return torch.cat(all_logits), (torch.cat(all_labels) if all_labels else None)


_metric_cache: dict = {}


def load_metric(name: str):
    """An `evaluate` metric from the modules shipped in nlptl/metrics (works offline)."""
    if name not in _metric_cache:
        import evaluate

        _metric_cache[name] = evaluate.load(str(METRICS_DIR / name))
    return _metric_cache[name]


def classification_metrics(logits, labels, problem: str = "single_label_classification", threshold: float = 0.5,
                           per_label: bool = False) -> dict:
    """The scores of a classifier's logits against the labels, for its task shape (transformers'
    `problem_type`; shapes.py says which scores): each with the loss. `threshold`: a multi-label
    decision threshold; `per_label`: also the F1 of each label."""
    from nlptl.shapes import of_problem

    return of_problem(problem).scores(logits, labels, threshold, per_label)


def per_class(logits, labels, problem: str, threshold: float, names: list[str]) -> dict:
    """Precision, recall, F1 and support of each class (of each label, multi-label: at `threshold`) and the
    confusion matrix, by scikit-learn, in the order of `names`. One label: rows are the true class,
    columns the predicted one; multi-label: one [[TN, FP], [FN, TP]] per label. Nothing for a shape
    without classes (regression)."""
    from nlptl.shapes import of_problem

    shape = of_problem(problem)
    if not shape.classes:
        return {}
    from sklearn.metrics import precision_recall_fscore_support

    ids = list(range(len(names)))
    truth, preds = labels.int().numpy(), shape.decide(logits, threshold).int().numpy()
    matrix = shape.confusion(truth, preds, ids)
    # zero_division=0: a class absent from both truth and predictions scores 0, without a warning.
    precision, recall, f1, support = precision_recall_fscore_support(truth, preds, labels=ids, zero_division=0)
    rows = [{"label": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, name in enumerate(names)]
    return {"per_class": rows, "confusion_matrix": {"labels": list(names), "matrix": matrix.tolist()}}


def label_set_shares(logits, threshold: float) -> tuple[float, float]:
    """The share of texts for which a multi-label classifier predicts every label, and the share for
    which it predicts none: micro-F1 can look fine on either (a low threshold gives recall 1)."""
    from nlptl.shapes import multilabel_decide

    preds = multilabel_decide(logits, threshold)
    n = max(len(preds), 1)
    return float(preds.all(-1).sum().item() / n), float((~preds.any(-1)).sum().item() / n)


def tune_threshold(logits, labels) -> tuple[float, dict]:
    """The decision threshold (0.05 ... 0.95) with the best micro-F1 on these (eval) logits; ties go
    to the one nearest 0.5."""
    from nlptl.shapes import multilabel_scores

    best = None
    for t in [round(0.05 * i, 2) for i in range(1, 20)]:
        scores = multilabel_scores(logits, labels, t, per_label=False)
        key = (scores["f1_micro"], -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, t, scores)
    return best[1], best[2]
