"""Multi-label classification scores (shipped with nlptl: loads offline): micro- and macro-averaged F1,
subset accuracy (every label of an example right) and F1 per label."""

import datasets
import evaluate
import numpy as np

from nlptl.metrics import shipped

_DESCRIPTION = "F1 over (example, label) decisions, micro- and macro-averaged; subset accuracy; F1 per label."


@shipped(_DESCRIPTION, datasets.Sequence(datasets.Value("int8")), kind="list of list of int",
         what="0/1 labels, one row per example, one column per label",
         returns="f1_micro, f1_macro, subset_accuracy (float, in [0, 1]); f1_per_label (list of float).")
class MultiLabel(evaluate.Metric):
    def _compute(self, predictions, references):
        p, r = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
        tp, fp, fn = (p & r).sum(0), (p & ~r).sum(0), (~p & r).sum(0)
        per_label = [_f1(*x) for x in zip(tp, fp, fn, strict=True)]
        return {
            "f1_micro": _f1(tp.sum(), fp.sum(), fn.sum()),
            "f1_macro": float(np.mean(per_label)) if per_label else 0.0,
            "subset_accuracy": float((p == r).all(1).mean()) if len(r) else 0.0,
            "f1_per_label": per_label,
        }


def _f1(tp, fp, fn):
    # A label never predicted nor present scores 1 (nothing to get wrong), as sklearn's zero_division=1.
    return 1.0 if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))
