"""Multi-label classification scores (shipped with nlptl: loads offline): micro- and macro-averaged F1,
subset accuracy (every label of an example right) and F1 per label."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 over (example, label) decisions, micro- and macro-averaged; subset accuracy; F1 per label."
_KWARGS = """
Args:
    predictions (list of list of int): 0/1 decisions, one row per example, one column per label.
    references (list of list of int): the true 0/1 labels, same shape.
Returns:
    f1_micro, f1_macro, subset_accuracy (float, in [0, 1]); f1_per_label (list of float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MultiLabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int8")),
                                        "references": datasets.Sequence(datasets.Value("int8"))}),
        )

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
