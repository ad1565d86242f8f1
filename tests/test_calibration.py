"""Calibration (nlptl/calibration.py): finetune fits a temperature on the eval split and records the
expected calibration error before and after; predict, serve and nlptl.Classifier answer with the
calibrated scores (--raw-scores: the old ones) and abstain under --abstain-below."""

from __future__ import annotations

import json

import pytest

from nlptl.config import PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import predict

TEXTS = ["Everyone agreed the bakery was great by any measure.", "awful", "To be fair, the jacket was great.",
         "In the end the podcast was awful if you ask me.", "the sofa and the phone"]


def overconfident(n: int = 2000, scale: float = 6.0, seed: int = 0):
    """Logits of a 3-class model that is right 70% of the time and sure of itself: too sharp by `scale`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g)
    right = torch.rand(n, generator=g) < 0.7
    logits[right, labels[right]] += 2.0
    return logits * scale, labels


def test_temperature_lowers_nll_and_ece_of_an_overconfident_model():
    from nlptl import shapes
    from nlptl.calibration import fit_temperature

    logits, labels = overconfident()
    record = fit_temperature(logits, labels, shapes.SINGLE)
    assert record["method"] == "temperature" and record["bins"] == 15 and record["n_eval"] == 2000
    assert record["temperature"] > 3  # the logits are 6x too sharp
    assert record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"] / 3


def test_calibrated_scores_keep_their_temperature():
    """Logits already calibrated: the temperature stays near 1 and the NLL does not rise."""
    from nlptl import shapes
    from nlptl.calibration import fit_temperature

    logits, labels = overconfident(scale=1.0)
    import torch

    # Labels drawn from the model's own softmax: calibrated by construction.
    labels = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(1))[:, 0]
    record = fit_temperature(logits, labels, shapes.SINGLE)
    assert record["temperature"] == pytest.approx(1.0, abs=0.1)
    assert record["nll_after"] <= record["nll_before"]


def test_an_eval_split_without_errors_keeps_the_scores():
    """Every eval text right: a sharper softmax always wins, which is no reason to saturate the scores."""
    import torch

    from nlptl import shapes
    from nlptl.calibration import fit_temperature

    labels = torch.tensor([0, 1] * 20)
    logits = torch.nn.functional.one_hot(labels, 2).float() * 2.0
    record = fit_temperature(logits, labels, shapes.SINGLE)
    assert record["temperature"] == 1.0 and "kept" in record and record["nll_after"] == record["nll_before"]


def test_multilabel_temperature_over_every_label_probability():
    import torch

    from nlptl import shapes
    from nlptl.calibration import fit_temperature

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(1000, 4, generator=g) < 0.3).float()
    logits = (labels * 2 - 1) * 1.0 + torch.randn(1000, 4, generator=g) * 1.5
    record = fit_temperature(logits * 5, labels, shapes.MULTILABEL)
    assert record["temperature"] > 2 and record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]


def test_regression_says_it_has_no_calibration():
    from nlptl import shapes
    from nlptl.calibration import fit_temperature

    assert fit_temperature(None, None, shapes.REGRESSION) == {
        "method": "none", "reason": "a regression model answers with numbers, not probabilities"}


def test_ece_by_hand():
    """Two bins used: (0.9 sure, right) and (0.9, wrong) -> |0.9 - 0.5| in the bin (0.8667, 0.9333];
    (0.5, right) alone in its bin -> |0.5 - 1|. Weighted by 2/3 and 1/3."""
    import torch

    from nlptl.calibration import expected_calibration_error

    ece = expected_calibration_error(torch.tensor([0.9, 0.9, 0.5]), torch.tensor([1.0, 0.0, 1.0]))
    assert ece == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.5)


def test_finetune_records_ece_before_and_after_and_saves_the_temperature(finetuned):
    run_dir, result = finetuned["bert"]
    record = result["calibration"]
    assert record["method"] == "temperature" and record["n_eval"] == result["n_eval"]
    assert record["nll_after"] <= record["nll_before"]
    assert 0 <= record["ece_after"] <= 1 and 0 <= record["ece_before"] <= 1
    saved = json.loads((run_dir / "nlptl-run.json").read_text())["metrics"]
    assert saved["calibration"] == record
    config = json.loads((run_dir / "config.json").read_text())
    assert config["nlptl_temperature"] == record["temperature"]


# --------------------------------------------------------------------------- predict, serve, the API


def hand_built(tmp_path, checkpoints, temperature: float | None, problem="single_label_classification", labels=2,
               **config):
    """A random-init classifier saved as a checkpoint, with the temperature finetune would have fitted."""
    from test_export import _hand_built

    run_dir = _hand_built(tmp_path, checkpoints, problem, labels)
    path = run_dir / "config.json"
    saved = json.loads(path.read_text()) | config
    if temperature is not None:
        saved["nlptl_temperature"] = temperature
    path.write_text(json.dumps(saved))
    return run_dir


def raw_logits(run_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    with torch.inference_mode():
        return torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])


def test_predict_scores_are_softmax_of_logits_over_t_and_raw_scores_the_old_ones(checkpoints, tmp_path):
    run_dir = hand_built(tmp_path, checkpoints, temperature=0.25)
    logits = raw_logits(run_dir, TEXTS)
    calibrated = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS))
    raw = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS, raw_scores=True))
    for i, (cal, old) in enumerate(zip(calibrated, raw, strict=True)):
        assert list(cal["scores"].values()) == pytest.approx((logits[i] / 0.25).softmax(-1).tolist(), abs=1e-5)
        assert list(old["scores"].values()) == pytest.approx(logits[i].softmax(-1).tolist(), abs=1e-5)
        assert cal["label"] == old["label"]  # a temperature changes no decision


def test_a_model_without_a_temperature_answers_as_before(checkpoints, tmp_path):
    run_dir = hand_built(tmp_path, checkpoints, temperature=None)
    logits = raw_logits(run_dir, TEXTS)
    results = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS))
    assert [r["label"] for r in results] == [r["label"] for r in
                                             predict.run(PredictConfig(model=str(run_dir), texts=TEXTS,
                                                                       raw_scores=True))]
    for i, r in enumerate(results):
        assert list(r["scores"].values()) == pytest.approx(logits[i].softmax(-1).tolist(), abs=1e-5)
        assert set(r) == {"text", "label", "score", "scores"}


def test_multilabel_threshold_moves_with_the_temperature(checkpoints, tmp_path):
    """The labels are those of the raw scores at the trained threshold; the threshold answered is on the
    scale of the calibrated scores, so every label answered is at or above it."""
    import math

    run_dir = hand_built(tmp_path, checkpoints, 3.0, "multi_label_classification", 3, nlptl_threshold=0.45)
    calibrated = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS))
    raw = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS, raw_scores=True))
    moved = 1 / (1 + math.exp(-math.log(0.45 / 0.55) / 3))  # sigmoid(logit(0.45) / T)
    for cal, old in zip(calibrated, raw, strict=True):
        assert cal["labels"] == old["labels"] and old["threshold"] == 0.45
        assert cal["threshold"] == pytest.approx(moved)
        assert all((p >= cal["threshold"]) == (n in cal["labels"]) for n, p in cal["scores"].items())


def test_abstain_below_answers_abstain_for_low_confidence_texts(checkpoints, tmp_path):
    run_dir = hand_built(tmp_path, checkpoints, temperature=0.5)
    scores = sorted(r["score"] for r in predict.run(PredictConfig(model=str(run_dir), texts=TEXTS)))
    cut = (scores[1] + scores[2]) / 2  # two texts under it
    results = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS, abstain_below=cut))
    low = [r for r in results if r["score"] < cut]
    assert len(low) == 2
    for r in low:
        assert r["label"] is None and r["abstain"] is True and set(r["scores"]) == {"tag0", "tag1"}
    assert all(r["label"] in ("tag0", "tag1") and "abstain" not in r for r in results if r["score"] >= cut)


def test_abstain_below_needs_one_label_of_a_set(checkpoints, tmp_path):
    run_dir = hand_built(tmp_path, checkpoints, None, "regression", 1)
    with pytest.raises(UsageError, match="--abstain-below 0.8: .* a regression model has no single top label"):
        predict.run(PredictConfig(model=str(run_dir), texts=TEXTS, abstain_below=0.8))
    with pytest.raises(UsageError, match="--abstain-below must be a probability"):
        PredictConfig(abstain_below=1.5)


def test_the_python_api_applies_the_same_temperature(checkpoints, tmp_path):
    import nlptl

    run_dir = hand_built(tmp_path, checkpoints, temperature=0.25)
    want = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS))
    got = nlptl.Classifier.from_pretrained(run_dir).predict(TEXTS)
    raw = nlptl.Classifier.from_pretrained(run_dir, raw_scores=True).predict(TEXTS)
    want_raw = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS, raw_scores=True))
    for g, w, r, wr in zip(got, want, raw, want_raw, strict=True):
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-6)
        assert r["scores"] == pytest.approx(wr["scores"], abs=1e-6) != w["scores"]
