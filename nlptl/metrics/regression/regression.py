"""Regression scores (shipped with nlptl: loads offline): RMSE, MAE, Pearson's r and Spearman's rho."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Root mean squared error, mean absolute error, Pearson and Spearman correlation."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    rmse, mae (float, >= 0); pearson, spearman (float in [-1, 1], 0 when either side is constant).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        err = p - r
        return {
            "rmse": float(np.sqrt(np.mean(err**2))) if len(r) else 0.0,
            "mae": float(np.mean(np.abs(err))) if len(r) else 0.0,
            "pearson": _pearson(p, r),
            "spearman": _pearson(_ranks(p), _ranks(r)),
        }


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _ranks(x):
    """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
