"""Regression scores (shipped with nlptl: loads offline): RMSE, MAE, Pearson's r and Spearman's rho."""

import datasets
import evaluate
import numpy as np

from nlptl.metrics import shipped

_DESCRIPTION = "Root mean squared error, mean absolute error, Pearson and Spearman correlation."


@shipped(_DESCRIPTION, datasets.Value("float64"), kind="list of float", what="values",
         returns="rmse, mae (float, >= 0); pearson, spearman (float in [-1, 1], 0 when either side is constant).")
class Regression(evaluate.Metric):
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
