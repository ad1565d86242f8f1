"""Caches are keyed by content: a data file rewritten with its modification time kept (`cp -p`,
`touch -r`, `rsync -t`, a restored backup) is read anew, and a run records the hash of what it read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import adapt_cfg, labelled_rows, write_csv

from nlptl.config import EvaluateConfig
from nlptl.stages import adapt, evaluate


def rewrite_keeping_mtime(path: Path, text: str) -> None:
    st = path.stat()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def test_corpus_rewritten_with_the_same_mtime_is_read_anew(tmp_path):
    from nlptl.data.corpora import load_corpus, resolve_corpus

    path = tmp_path / "corpus.txt"
    path.write_text("the first version .\nof the corpus .\n", encoding="utf-8")
    first = resolve_corpus(str(path))
    assert list(load_corpus(first)["text"]) == ["the first version .", "of the corpus ."]
    rewrite_keeping_mtime(path, "a second version , longer .\nwith other words .\nand a third line .\n")
    second = resolve_corpus(str(path))
    assert second.sha256 != first.sha256
    assert list(load_corpus(second)["text"]) == ["a second version , longer .", "with other words .",
                                                 "and a third line ."]


def test_labelled_file_rewritten_with_the_same_mtime_is_read_anew(tmp_path):
    from nlptl.data.tasks import read_labelled, resolve_task

    path = write_csv(tmp_path / "train.csv", [("good film", "positive"), ("bad film", "negative")])
    spec = resolve_task("classification", str(path), None, "text", "label")
    assert list(read_labelled(spec.train, spec)["label"]) == ["positive", "negative"]
    rewrite_keeping_mtime(path, "text,label\ngood film,negative\nbad film,positive\nfine film,positive\n")
    spec = resolve_task("classification", str(path), None, "text", "label")
    assert list(read_labelled(spec.train, spec)["label"]) == ["negative", "positive", "positive"]


def test_evaluate_scores_the_file_as_it_is_now(trained_classifier, tmp_path):
    """The issue's example: labels flipped and rows cut, modification time kept."""
    out, _ = trained_classifier
    rows = labelled_rows(40, seed=7)
    data = write_csv(tmp_path / "test.csv", rows)
    before = evaluate.run(EvaluateConfig(model=str(out), data=str(data)))
    flip = {"positive": "negative", "negative": "positive"}
    half = [(t, flip[label]) for t, label in rows[:20]]
    rewrite_keeping_mtime(data, write_csv(tmp_path / "new.csv", half).read_text(encoding="utf-8"))
    after = evaluate.run(EvaluateConfig(model=str(out), data=str(data)))
    assert (before["n_eval"], after["n_eval"]) == (40, 20)
    assert after["accuracy"] != before["accuracy"]


def test_adapt_trains_on_and_records_the_corpus_as_it_is_now(checkpoints, tmp_path):
    corpus = tmp_path / "domain.txt"
    corpus.write_text("".join(f"the {i} th old review was fine .\n" for i in range(300)), encoding="utf-8")
    first = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus), out=str(tmp_path / "a")))
    rewrite_keeping_mtime(corpus, "".join(f"review {i} : a new text , much longer than the old ones were .\n"
                                          for i in range(300)))
    second = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus), out=str(tmp_path / "b")))
    assert second["n_train"] + second["n_eval"] > first["n_train"] + first["n_eval"]  # more text, more blocks
    import hashlib

    record = json.loads((tmp_path / "b" / "nlptl-run.json").read_text())
    assert record["lineage"]["corpus"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
