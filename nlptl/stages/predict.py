"""Use a classifier: labels with scores for texts given as arguments, in a file, or on stdin.

    nlptl predict "What a lovely film" "Dull and far too long"      # the latest finetune run
    nlptl predict --model runs/finetune-... --input texts.txt --json
    cat texts.txt | nlptl predict --model DIR --input - --json      # JSON Lines, one object per text
    printf 'A man sleeps\tA person rests\n' | nlptl predict --model NLI_DIR --input -   # a pair model
    nlptl predict --model EXPORT_DIR "Great"      # an `nlptl export --format onnx` directory (onnxruntime)
    nlptl predict --model EXPORT_DIR --int8 "Great"   # its int8 model (`export --quantize int8`), not model.onnx
    nlptl predict --model DIR --abstain-below 0.8 "Fine, I guess"   # label null under 80% (calibrated)
    nlptl predict --model DIR --input reviews.parquet --text-column body --id-column id --output preds.jsonl
    torchrun --nproc_per_node 2 -m nlptl predict --model DIR --input reviews.csv --output preds.jsonl

Each result has the form nlptl/inference.py describes for the model's task shape, with the scores
calibrated by the temperature finetune fitted (--raw-scores: the logits' own), and "abstain" under
--abstain-below P. A blank text (an
empty argument, a blank line) is not classified: its result, in its place, says so (as `nlptl serve`
answers it), so with --input result N is line N (row N of a table).

With --output the input is read as it goes, in chunks of --chunk-size texts; each chunk's results are
written to OUTPUT.parts/ as soon as they are done (a whole file, renamed into place), so memory stays
flat and the same command after a kill continues with the chunks not yet written. Several processes
(torchrun, accelerate launch) take every N-th chunk each; the main process then joins the chunks in
input order into OUTPUT and removes OUTPUT.parts/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nlptl.config import PredictConfig
from nlptl.data.files import check_data_file, input_format, iter_lines, iter_table
from nlptl.data.tasks import columns
from nlptl.errors import UsageError
from nlptl.inference import check_abstain, is_onnx_export, onnx_file
from nlptl.models import inspect_model
from nlptl.rundir import default_from
from nlptl.stages.common import check_max_length

log = logging.getLogger("nlptl")
PROGRESS_SECONDS = 10  # --output: a progress line at most this often

# What a result may hold (inference.py, every task shape): an --id-column of another name goes beside them.
RESULT_KEYS = ("text", "text_pair", "label", "labels", "score", "scores", "threshold", "value", "abstain", "truncated",
               "error")
Row = tuple  # (text, text pair or None, id or None)


def run(cfg: PredictConfig) -> list[dict]:
    spec = cfg.model or default_from("predict")
    _check_model(cfg, spec)
    read = _open_input(cfg)[1] if cfg.input else None
    rows = [(t, None, None) for t in cfg.texts] + (list(read()) if read else [])
    if not rows:
        raise UsageError("no texts to classify; pass them as arguments, or --input FILE, or --input - for "
                         "standard input")
    classifier = _load(cfg, spec)
    return _classify(classifier, list(_paired(rows, classifier, cfg, spec)), cfg)


def run_to_file(cfg: PredictConfig, poll_seconds: float = 0.1) -> dict:
    """`--output FILE`: the results of --input in chunks (see the module docstring); returns a summary."""
    if not cfg.input:
        raise UsageError("--output needs --input FILE (one text per line, or a table); without --output the results "
                         "of texts given as arguments go to standard output")
    if cfg.texts:
        raise UsageError("--output writes the results of --input FILE only; give the texts as lines of that file")
    if cfg.input == "-":
        raise UsageError("--output needs --input FILE, not --input -: standard input cannot be read again to resume, "
                         "nor shared by processes; save it to a file first")
    output = Path(cfg.output)
    if output.suffix.lower() not in (".jsonl", ".json"):
        raise UsageError(f"--output {cfg.output}: the results are written as JSON Lines; name the file .jsonl")
    spec = cfg.model or default_from("predict")
    _check_model(cfg, spec)
    files, read = _open_input(cfg)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    parts = output.with_name(output.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"rank-{rank}.json").unlink(missing_ok=True)  # a killed run's: this run's comes when it is done
    _claim(parts, _command(cfg, spec, files), cfg.output)

    from nlptl import runtime

    classifier = _load(cfg, spec, runtime.worker_device(int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else None)
    written = len(list(parts.glob("chunk-*.jsonl")))
    if written:
        log.info("resuming: %d chunk(s) of %d rows were written by an earlier run of this command (%s)", written,
                 cfg.chunk_size, parts)
    rows, resumed, done, started, last = 0, 0, 0, time.perf_counter(), time.perf_counter()
    for k, chunk in enumerate(_chunks(_paired(read(), classifier, cfg, spec), cfg.chunk_size)):
        rows += len(chunk)
        path = parts / chunk_name(k)
        if k % world != rank:
            continue
        if path.exists():  # written whole by an earlier run of this command (renamed into place)
            resumed += 1
            continue
        write_atomic(path, _classify(classifier, chunk, cfg))
        done += len(chunk)
        if time.perf_counter() - last >= PROGRESS_SECONDS:
            last = time.perf_counter()
            log.info("predict: %d rows read, %d classified by this process (%.0f texts/s), chunk %d written", rows,
                     done, done / (last - started), k)
    if rows == 0:
        raise UsageError(f"--input {cfg.input}: holds no texts to classify")
    chunks = -(-rows // cfg.chunk_size)
    write_atomic(parts / f"rank-{rank}.json", [{"rows": rows, "resumed_chunks": resumed}])
    summary = {"output": str(output), "rows": rows, "chunks": chunks, "resumed_chunks": resumed, "processes": world}
    if rank != 0:
        return summary
    summary["resumed_chunks"] = _wait(parts, chunks, world, poll_seconds)
    _merge(parts, chunks, output)
    return summary


def chunk_name(k: int) -> str:
    return f"chunk-{k:09d}.jsonl"


def _check_model(cfg: PredictConfig, spec: str) -> None:
    onnx_file(spec, cfg.int8)  # --int8 checked before the texts are read
    if not is_onnx_export(spec):
        # Checked before the texts are read, without torch (an export is checked as it loads).
        ref = inspect_model(spec, "--model")
        if not ref.is_classifier:
            raise UsageError(f"--model {ref.spec} is not a classifier; predict needs a finetune run")
        check_max_length(cfg.max_length, ref.config)
        check_abstain(ref.config, cfg.abstain_below)


def _load(cfg: PredictConfig, spec: str, device=None):
    from nlptl import runtime
    from nlptl.inference import load_classifier

    runtime.quiet_libraries()
    return load_classifier(spec, cfg.backend, cfg.max_length, int8=cfg.int8, device=device, raw_scores=cfg.raw_scores,
                           abstain_below=cfg.abstain_below)


def _open_input(cfg: PredictConfig) -> tuple[list[Path], Callable[[], Iterator[Row]]]:
    """The files of --input, checked now (before torch loads), and a reader of its rows as they come."""
    fmt = input_format(cfg.input)
    if fmt == "text":
        if cfg.id_column:
            raise UsageError(f"--id-column {cfg.id_column}: --input {cfg.input} is a text file (one text per line) "
                             "with no columns; pass a table (.csv, .tsv, .jsonl, .parquet), or leave out --id-column "
                             "(result N is line N)")
        return [Path(cfg.input)], lambda: ((line, None, None) for line in iter_lines(cfg.input))
    text_columns = columns(cfg.text_column)
    if not 1 <= len(text_columns) <= 2:
        raise UsageError(f"--text-column takes one column, or two for a pair model (got {cfg.text_column})")
    if cfg.id_column in RESULT_KEYS:
        raise UsageError(f"--id-column {cfg.id_column}: a result has a key of that name already; rename the column")
    needed = {c: "--text-column" for c in text_columns} | ({cfg.id_column: "--id-column"} if cfg.id_column else {})
    files, fmt, _ = check_data_file(cfg.input, "--input", needed)

    def rows() -> Iterator[Row]:
        for file in files:
            for cells in iter_table(file, fmt, list(needed)):
                pair = _cell(cells[1]) if len(text_columns) == 2 else None
                yield _cell(cells[0]), pair, cells[-1] if cfg.id_column else None

    return files, rows


def _cell(value) -> str:
    """A text cell as a string: an empty cell (None in JSON or Parquet) is a blank text."""
    return "" if value is None else str(value)


def _paired(rows, classifier, cfg: PredictConfig, spec: str) -> Iterator[Row]:
    """Rows as the model takes them. A pair model's text lines (and arguments) are "first<TAB>second"; a
    blank line is a blank pair (answered as blank, like a blank text). A table names two text columns."""
    table = cfg.input not in (None, "-") and input_format(cfg.input) != "text"
    two = len(columns(cfg.text_column)) == 2
    if table and classifier.pairs and not two:
        raise UsageError(f"--model {spec} was trained on text pairs; name the two columns: --text-column first,second")
    if table and two and not classifier.pairs:
        raise UsageError(f"--text-column {cfg.text_column} names two columns, but --model {spec} takes single texts")
    for number, (text, pair, id_) in enumerate(rows, 1):
        if classifier.pairs and pair is None:
            parts = text.split("\t", 1) if text.strip() else [text, ""]
            if len(parts) != 2:
                raise UsageError(f"--model {spec} was trained on text pairs; text {number} has no tab between "
                                 "its two texts (give each as 'first<TAB>second')")
            text, pair = parts
        yield text, pair, id_


def _classify(classifier, rows: list[Row], cfg: PredictConfig) -> list[dict]:
    """Results in the rows' order (the classifier sorts by length inside, and puts them back)."""
    pairs = [r[1] for r in rows] if classifier.pairs else None
    results = classifier([r[0] for r in rows], pairs, cfg.batch_size)
    if cfg.id_column:
        return [{cfg.id_column: row[2]} | result for row, result in zip(rows, results, strict=True)]
    return results


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _command(cfg: PredictConfig, spec: str, files: list[Path]) -> dict:
    """What makes the chunks of a run: a rerun continues only when all of it is the same (the input files
    unchanged, by size and modification time). Not the number of processes: a chunk is the same chunk
    whichever process writes it."""
    where = Path(spec).resolve() if Path(spec).exists() else spec
    inputs = [{"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
              if f.is_file() else {"path": str(f)} for f in files]
    return {"model": str(where), "input": inputs, "text_column": cfg.text_column, "id_column": cfg.id_column,
            "chunk_size": cfg.chunk_size, "max_length": cfg.max_length, "backend": cfg.backend, "int8": cfg.int8,
            "raw_scores": cfg.raw_scores, "abstain_below": cfg.abstain_below}


def _claim(parts: Path, command: dict, output: str) -> None:
    record = parts / "command.json"
    if record.exists():
        before = json.loads(record.read_text(encoding="utf-8"))
        if before != command:
            changed = sorted(k for k in command.keys() | before.keys() if before.get(k) != command.get(k))
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            verb = "differs" if len(changed) == 1 else "differ"
            raise UsageError(f"--output {output}: {parts} holds the chunks of another command (its {flags} {verb}); "
                             f"rerun that command to finish it, or remove {parts} to start over")
        return
    write_atomic(record, [command], lines=False)


def write_atomic(path: Path, records: list, lines: bool = True) -> None:
    """JSON Lines (or one JSON document) into `path` whole or not at all: written beside it, synced, then
    renamed, so a kill leaves either the complete file or none (a rerun redoes it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + ("\n" if lines else ""))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _wait(parts: Path, chunks: int, world: int, poll_seconds: float) -> int:
    """Until every chunk is written and every process has said it is done (the other ranks' chunks come
    as they finish them: polling the files needs no process group). Returns the chunks resumed in all."""
    import time

    k = 0
    while True:
        while k < chunks and (parts / chunk_name(k)).exists():
            k += 1
        done = [parts / f"rank-{r}.json" for r in range(world)]
        if k == chunks and all(p.exists() for p in done):
            return sum(json.loads(p.read_text(encoding="utf-8"))["resumed_chunks"] for p in done)
        time.sleep(poll_seconds)


def _merge(parts: Path, chunks: int, output: Path) -> None:
    """The chunks, in order, into `output` (renamed into place); then the parts go. A kill while merging
    leaves the parts: the rerun finds every chunk written and merges again."""
    import shutil

    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for k in range(chunks):
            with open(parts / chunk_name(k), "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output)
    shutil.rmtree(parts)
