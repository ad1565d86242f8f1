"""F1 score, binary or averaged over classes (shipped with nlptl: loads offline)."""

import datasets
import evaluate
import numpy as np

from nlptl.metrics import shipped

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), per class, then averaged."
_OPTIONS = """\
    average (str): 'macro' (unweighted mean over the classes present in predictions or references),
        'micro', 'weighted', or 'binary' (F1 of `pos_label`).
    pos_label (int): the positive class for 'binary'. Default 1.
"""


@shipped(_DESCRIPTION, datasets.Value("int64"), kind="list of int", what="labels",
         returns="f1 (float): in [0, 1].", options=_OPTIONS)
class F1(evaluate.Metric):
    def _compute(self, predictions, references, average="binary", pos_label=1):
        p, r = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            return {"f1": _f1(p, r, pos_label)}
        classes = np.union1d(p, r)
        if average == "micro":
            return {"f1": float((p == r).mean()) if len(r) else 0.0}
        scores = np.array([_f1(p, r, c) for c in classes])
        if average == "weighted":
            weights = np.array([(r == c).sum() for c in classes], dtype=float)
            return {"f1": float((scores * weights).sum() / max(weights.sum(), 1))}
        return {"f1": float(scores.mean()) if len(scores) else 0.0}


def _f1(p, r, c):
    tp = float(((p == c) & (r == c)).sum())
    fp = float(((p == c) & (r != c)).sum())
    fn = float(((p != c) & (r == c)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
