"""`nlptl predict --input FILE --output FILE` at scale (stages/predict.py): tables with id columns, chunks
written as they are done, resumable after kill -9, sharded over processes (torchrun) and merged in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nlptl.config import PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import predict

BLANK = "blank text: nothing to classify"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPTL_HOME": ""}

WORDS = ["great", "awful", "the film was great", "the soup was awful", "", "great great great and more",
         "awful, simply awful, from start to end", "   "]


def texts(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] + ("" if not WORDS[i % len(WORDS)].strip() else f" #{i}") for i in range(n)]


def write_csv(path, rows: list[str]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["doc", "body"])
        writer.writerows([f"d{i}", t] for i, t in enumerate(rows))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_table_to_file_keeps_order_and_ids(trained_classifier, tmp_path):
    """Chunks of 7 rows, batches of 3 sorted by length inside a chunk: row N of the output is row N of the
    input, with its id, and the same answer as predicting the texts in memory."""
    out, _ = trained_classifier
    rows = texts(40)
    write_csv(tmp_path / "in.csv", rows)
    result = predict.run_to_file(PredictConfig(model=str(out), input=str(tmp_path / "in.csv"), text_column="body",
                                               id_column="doc", output=str(tmp_path / "out.jsonl"), chunk_size=7,
                                               batch_size=3))
    assert result["rows"] == 40 and result["chunks"] == 6 and result["resumed_chunks"] == 0
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [r["doc"] for r in got] == [f"d{i}" for i in range(40)]
    assert [r["text"] for r in got] == rows
    reference = predict.run(PredictConfig(model=str(out), texts=rows, batch_size=40))
    for mine, ref in zip(got, reference, strict=True):
        assert {k: v for k, v in mine.items() if k not in ("doc", "scores", "score")} == \
               {k: v for k, v in ref.items() if k not in ("scores", "score")}
        if "score" in ref:
            assert mine["score"] == pytest.approx(ref["score"], abs=1e-5)
    assert [r.get("error") for r in got] == [BLANK if not t.strip() else None for t in rows]
    assert not (tmp_path / "out.jsonl.parts").exists()  # merged, then cleaned up


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt"])
def test_every_input_format_gives_the_same_output(fmt, trained_classifier, tmp_path):
    out, _ = trained_classifier
    rows = texts(20)
    path = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"body": t, "doc": i}) + "\n" for i, t in enumerate(rows)), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"doc": list(range(20)), "body": rows}), path, row_group_size=6)
    else:
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    table = fmt != "txt"
    cfg = PredictConfig(model=str(out), input=str(path), output=str(tmp_path / "out.jsonl"), chunk_size=8,
                        **({"text_column": "body", "id_column": "doc"} if table else {}))
    predict.run_to_file(cfg)
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [r["text"] for r in got] == rows
    if table:
        assert [r["doc"] for r in got] == list(range(20))  # the id as the file holds it (here a number)
    assert [r.get("label") for r in got] == [r.get("label") for r in predict.run(PredictConfig(model=str(out),
                                                                                               texts=rows))]


def test_table_input_without_output_reads_the_text_column(trained_classifier, tmp_path):
    out, _ = trained_classifier
    write_csv(tmp_path / "in.csv", ["great", "awful"])
    results = predict.run(PredictConfig(model=str(out), input=str(tmp_path / "in.csv"), text_column="body"))
    assert [r["text"] for r in results] == ["great", "awful"]


def test_flags_are_checked(trained_classifier, tmp_path):
    out, _ = trained_classifier
    write_csv(tmp_path / "in.csv", ["great"])
    (tmp_path / "in.txt").write_text("great\n", encoding="utf-8")
    base = {"model": str(out), "output": str(tmp_path / "out.jsonl")}
    with pytest.raises(UsageError, match="--output needs --input FILE"):
        predict.run_to_file(PredictConfig(**base, texts=["great"]))
    with pytest.raises(UsageError, match="--input -"):
        predict.run_to_file(PredictConfig(**base, input="-"))
    with pytest.raises(UsageError, match="no column 'text'.*--text-column"):
        predict.run_to_file(PredictConfig(**base, input=str(tmp_path / "in.csv")))
    with pytest.raises(UsageError, match="no column 'id'"):
        predict.run_to_file(PredictConfig(**base, input=str(tmp_path / "in.csv"), text_column="body", id_column="id"))
    with pytest.raises(UsageError, match="--id-column.*text file"):
        predict.run_to_file(PredictConfig(**base, input=str(tmp_path / "in.txt"), id_column="doc"))
    with pytest.raises(UsageError, match="--output.*jsonl"):
        predict.run_to_file(PredictConfig(**{**base, "output": str(tmp_path / "out.csv")},
                                          input=str(tmp_path / "in.txt")))
    with pytest.raises(UsageError, match="--id-column label"):
        predict.run_to_file(PredictConfig(**base, input=str(tmp_path / "in.csv"), text_column="body",
                                          id_column="label"))


def test_parts_of_another_command_are_not_mixed_in(trained_classifier, tmp_path):
    """A rerun continues only the same command: another chunk size (or model, input, columns) refuses,
    naming the directory to remove."""
    out, _ = trained_classifier
    write_csv(tmp_path / "in.csv", texts(10))
    cfg = {"model": str(out), "input": str(tmp_path / "in.csv"), "text_column": "body",
           "output": str(tmp_path / "out.jsonl")}
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "command.json").write_text(json.dumps({"chunk_size": 3}), encoding="utf-8")
    with pytest.raises(UsageError, match="out.jsonl.parts.*another command"):
        predict.run_to_file(PredictConfig(**cfg, chunk_size=4))


def reference_run(model, tmp_path, rows: int, chunk_size: int):
    """in.csv of `rows` rows, and the output of one uninterrupted process on it (as `_command` asks)."""
    write_csv(tmp_path / "in.csv", texts(rows))
    path = tmp_path / "reference.jsonl"
    predict.run_to_file(PredictConfig(model=str(model), input=str(tmp_path / "in.csv"), text_column="body",
                                      id_column="doc", output=str(path), chunk_size=chunk_size, batch_size=2))
    return path


def _command(model, path, output, chunk_size=5) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(path), "--text-column", "body", "--id-column", "doc",
            "--output", str(output), "--chunk-size", str(chunk_size), "--batch-size", "2", "--quiet"]


def test_killed_run_resumes_without_loss_or_duplicates(trained_classifier, tmp_path):
    """SIGKILL a run once it has written some chunks; the same command again continues from there (the
    chunks done are kept, not redone) and its output is the uninterrupted run's, line for line."""
    out, _ = trained_classifier
    whole = reference_run(out, tmp_path, 600, 5)
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "nlptl", *_command(out, tmp_path / "in.csv", killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.jsonl.parts"
    deadline = time.time() + 120
    while len(list(parts.glob("chunk-*.jsonl"))) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it was killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    done = len(list(parts.glob("chunk-*.jsonl")))
    assert 3 <= done < 120
    result = predict.run_to_file(PredictConfig(model=str(out), input=str(tmp_path / "in.csv"), text_column="body",
                                               id_column="doc", output=str(killed), chunk_size=5, batch_size=2))
    assert result["resumed_chunks"] == done and result["chunks"] == 120  # chunks appear whole (renamed)
    got, want = read_jsonl(killed), read_jsonl(whole)
    assert [r["doc"] for r in got] == [f"d{i}" for i in range(600)]
    assert [(r["doc"], r.get("label")) for r in got] == [(r["doc"], r.get("label")) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.get("score") == pytest.approx(b.get("score"), abs=1e-5)


def test_two_processes_shard_the_chunks_and_merge_in_order(trained_classifier, tmp_path):
    """Under torchrun each rank takes every other chunk; the main process merges them in input order: the
    same output as one process."""
    out, _ = trained_classifier
    one = reference_run(out, tmp_path, 200, 16)
    two = tmp_path / "two.jsonl"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlptl"]
    proc = subprocess.run(launcher + _command(out, tmp_path / "in.csv", two, 16) + ["--json"], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(summary) == 1 and summary[0]["rows"] == 200 and summary[0]["processes"] == 2  # the main process's
    got, want = read_jsonl(two), read_jsonl(one)
    assert [r["doc"] for r in got] == [f"d{i}" for i in range(200)]
    assert [r.get("label") for r in got] == [r.get("label") for r in want]
    assert not (tmp_path / "two.jsonl.parts").exists()


def test_output_shows_progress_and_says_when_it_resumes(trained_classifier, tmp_path, monkeypatch, caplog):
    """From the newcomer run: a long --output run logged nothing until it ended, and a rerun did not say
    it was resuming."""
    import logging

    out, _ = trained_classifier
    write_csv(tmp_path / "in.csv", texts(30))
    cfg = PredictConfig(model=str(out), input=str(tmp_path / "in.csv"), text_column="body",
                        output=str(tmp_path / "out.jsonl"), chunk_size=10)
    parts = tmp_path / "out.jsonl.parts"
    monkeypatch.setattr(predict, "PROGRESS_SECONDS", 0)
    monkeypatch.setattr(predict, "_merge", lambda *a: None)  # keep the parts, as a killed run leaves them
    with caplog.at_level(logging.INFO, logger="nlptl"):
        predict.run_to_file(cfg)
    assert sum("rows read" in r.getMessage() for r in caplog.records) == 3
    (parts / predict.chunk_name(2)).unlink()  # the last chunk was not written: a killed run
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nlptl"):
        result = predict.run_to_file(cfg)
    assert result["resumed_chunks"] == 2
    assert any("resuming: 2 chunk(s) of 10 rows" in r.getMessage() for r in caplog.records)
