"""The Python API of a trained classifier (nlptl.Classifier, nlptl.BatchClassifier in inference.py): what
`nlptl predict` answers, from Python, and from an engine that hands over batches of columns (Ray Data's
map_batches, pandas)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nlptl

TEXTS = ["Everyone agreed the bakery was great by any measure.", "In the end the podcast was awful if you ask me.",
         "", "To be fair, the jacket was great.", "Last week the camera was awful, as was the strap."]


def test_import_is_light_and_the_names_come_when_asked():
    """`import nlptl` (and `nlptl --help`) stays without torch: the classes load on first use."""
    script = ("import sys, nlptl\nassert 'torch' not in sys.modules, 'torch at import'\n"
              "nlptl.Classifier, nlptl.BatchClassifier\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    with pytest.raises(AttributeError, match="no_such_name"):
        nlptl.no_such_name  # noqa: B018


def test_from_pretrained_predicts_labels_and_scores(trained_classifier):
    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    out, _ = trained_classifier
    classifier = nlptl.Classifier.from_pretrained(out)
    results = classifier.predict(TEXTS, batch_size=2)
    assert results == predict.run(PredictConfig(model=str(out), texts=TEXTS, batch_size=2))
    assert [r.get("label") for r in results] == ["positive", "negative", None, "positive", "negative"]
    assert all(0.5 <= r["score"] <= 1 for r in results if "label" in r)


def test_batch_classifier_adds_columns_to_a_batch(trained_classifier):
    """A batch as Ray Data gives it (a dict of numpy arrays) or a pandas DataFrame: the same batch back with
    the answer's columns added, the same columns for every batch (a blank text has them empty)."""
    import numpy as np
    import pandas as pd

    out, _ = trained_classifier
    batcher = nlptl.BatchClassifier(str(out), text_column="review")
    got = batcher({"id": np.arange(5), "review": np.array(TEXTS, dtype=object)})
    assert list(got) == ["id", "review", "label", "score", "scores", "truncated", "error"]
    assert list(got["id"]) == list(range(5))
    assert list(got["label"]) == ["positive", "negative", None, "positive", "negative"]
    assert got["error"][2] and got["score"][2] is None and not any(got["truncated"])
    frame = batcher(pd.DataFrame({"id": range(5), "review": TEXTS}))
    # (pandas may keep a missing label as NaN.)
    assert [x if isinstance(x, str) else None for x in frame["label"]] == list(got["label"])
    assert list(frame["id"]) == list(range(5))
    blank = batcher({"review": np.array(["", " "], dtype=object)})
    assert list(blank) == ["review", "label", "score", "scores", "truncated", "error"]


@pytest.mark.slow  # ~40 s on 2 cores: Ray starts its local cluster and an actor
def test_ray_data_map_batches(trained_classifier):
    """In Ray Data (a local cluster of this machine): map_batches with the class, one actor per worker."""
    ray = pytest.importorskip("ray")
    out, _ = trained_classifier
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS * 4)])
        rows = ds.map_batches(nlptl.BatchClassifier, fn_constructor_kwargs={"model": str(out)}, batch_size=8,
                              concurrency=1, batch_format="numpy").take_all()
    finally:
        ray.shutdown()
    assert sorted(r["id"] for r in rows) == list(range(20))
    by_id = {r["id"]: r for r in rows}
    want = nlptl.Classifier.from_pretrained(out).predict(TEXTS * 4)
    assert [by_id[i]["label"] for i in range(20)] == [w.get("label") for w in want]
