"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T that
divides a classifier's logits so that its scores are probabilities that mean what they say. finetune fits
T on the eval split, after the best checkpoint is kept, by minimising the negative log-likelihood
(LBFGS on log T, so T stays positive); a temperature changes no decision (the highest score stays the
highest; a multi-label threshold moves with it: shapes.sigmoid_threshold).

The expected calibration error (ECE) says how far the scores are from the accuracy they claim: the
predictions binned by confidence (15 equal-width bins), |mean confidence - share right| of each bin,
weighted by its size. One label: the top score against whether the label is right; multi-label: every
label's probability against whether the text has the label.

The temperature goes into the model's config (`nlptl_temperature`), which predict, serve and
nlptl.Classifier read (inference.py); a model without one (older runs, regression) answers as before.
"""

from __future__ import annotations

BINS = 15
# log T is kept within [-LOG_LIMIT, LOG_LIMIT]: an eval split that the model gets all right pulls T
# towards 0 without end (a sharper softmax is always "better" there), which would saturate the scores.
LOG_LIMIT = 4.6  # T in [0.01, 100]


def expected_calibration_error(confidence, outcome, bins: int = BINS) -> float:
    """ECE of 1-d tensors: each prediction's confidence and whether it came true (1.0 or 0.0)."""
    import torch

    confidence, outcome = confidence.double(), outcome.double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 goes into the first bin.
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1
    error = torch.zeros((), dtype=torch.float64)
    for b in which.unique().tolist():
        held = which == b
        error += held.double().mean() * (confidence[held].mean() - outcome[held].mean()).abs()
    return float(error)


def fit_temperature(logits, labels, shape) -> dict:
    """The record of calibrating `shape`'s logits on (logits, labels): temperature, ECE and NLL before and
    after. A temperature that would not lower the NLL is 1 (the scores were calibrated already)."""
    import torch

    cal = shape.calibration
    if cal is None:
        return {"method": "none", "reason": f"a {shape.name} model answers with numbers, not probabilities"}
    logits = logits.detach().double()
    # Every eval decision right (at the logits' own threshold, 0.5): the NLL falls the sharper the scores
    # are, without end, which says nothing about how sure the model should be on texts it gets wrong.
    if bool((shape.decide(logits, 0.5) == labels).all()):
        return _record(cal, logits, labels, 1.0, "no error on the eval split to fit a temperature to; the scores "
                       "are left as they are")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = cal.nll(logits / log_t.clamp(-LOG_LIMIT, LOG_LIMIT).exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().clamp(-LOG_LIMIT, LOG_LIMIT).exp())
    with torch.no_grad():
        if not cal.nll(logits / temperature, labels) < cal.nll(logits, labels):
            return _record(cal, logits, labels, 1.0, "the scores are calibrated already (no temperature lowers "
                           "the NLL)")
    return _record(cal, logits, labels, temperature)


def _record(cal, logits, labels, temperature: float, kept: str | None = None) -> dict:
    """What finetune records: ECE and NLL of the raw and of the calibrated scores; `kept`: why T is 1."""
    import torch

    with torch.no_grad():
        return {
            "method": "temperature",
            **({"kept": kept} if kept else {}),
            "temperature": temperature,
            "ece_before": expected_calibration_error(*cal.reliability(logits, labels)),
            "ece_after": expected_calibration_error(*cal.reliability(logits / temperature, labels)),
            "nll_before": float(cal.nll(logits, labels)),
            "nll_after": float(cal.nll(logits / temperature, labels)),
            "bins": BINS,
            "n_eval": len(labels),
        }
