"""Accuracy: the fraction of predictions equal to the references (shipped with nlptl: loads offline)."""

import datasets
import evaluate
import numpy as np

from nlptl.metrics import shipped

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."


@shipped(_DESCRIPTION, datasets.Value("int64"), kind="list of int", what="labels",
         returns="accuracy (float): in [0, 1].")
class Accuracy(evaluate.Metric):
    def _compute(self, predictions, references):
        p, r = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((p == r).mean()) if len(r) else 0.0}
