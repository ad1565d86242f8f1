"""Checks on data files that need no heavy import: they run before torch is loaded, so a bad path
or a missing column is reported within a second.

Also the content hash recorded in lineage, computed in the same pass that checks UTF-8.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from nlptl.errors import UsageError, did_you_mean

log = logging.getLogger("nlptl")

FORMATS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet"}
CHUNK = 1 << 22


def expand(spec: str, flag: str) -> list[Path]:
    """A file, a directory (its data files, sorted) or a glob -> the list of files."""
    p = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise UsageError(f"{flag} {spec}: the pattern matches no file")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FORMATS)
        if not files:
            raise UsageError(f"{flag} {spec}: the directory holds no .txt/.csv/.jsonl/.parquet file")
    elif p.is_file():
        files = [p]
    else:
        raise UsageError(f"{flag} {spec}: no such file or directory")
    kinds = {file_format(f, flag) for f in files}
    if len(kinds) > 1:
        raise UsageError(f"{flag} {spec}: mixes file formats ({', '.join(sorted(kinds))}); use one format per corpus")
    return files


def file_format(path: Path, flag: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{flag} {path}: unsupported file type '{path.suffix}'; "
                         "use .txt (one document per line), .csv, .tsv, .jsonl or .parquet")
    return fmt


def scan_text(path: Path, flag: str, digest=None) -> int:
    """Check that a text file is non-empty, valid UTF-8 and not only blank lines; feed its bytes to
    `digest`. Returns the number of non-blank lines. One pass, in chunks (big corpora stay cheap)."""
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{flag} {path}: the file is empty")
    lines_before = 0
    nonblank = 0
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if digest is not None:
                digest.update(chunk)
            data = tail + chunk
            # Keep an incomplete last line (and any split UTF-8 sequence) for the next chunk.
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < 64 * CHUNK:
                tail = data
                continue
            block, tail = (data[:cut], data[cut:]) if cut else (data, b"")
            nonblank += _check_block(block, path, flag, lines_before)
            lines_before += block.count(b"\n")
    if tail:
        nonblank += _check_block(tail, path, flag, lines_before)
    if nonblank == 0:
        raise UsageError(f"{flag} {path}: the file holds only blank lines")
    return nonblank


def _check_block(block: bytes, path: Path, flag: str, lines_before: int) -> int:
    if b"\x00" in block:
        line = lines_before + block[: block.index(b"\x00")].count(b"\n") + 1
        raise UsageError(f"{flag} {path}: line {line} holds binary data (NUL bytes); pass a UTF-8 text file")
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lines_before + block[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{flag} {path}: line {line} is not valid UTF-8 (byte 0x{block[e.start]:02x}); re-encode the file as UTF-8"
        ) from None
    return sum(1 for line in text.split("\n") if line.strip())


def columns_of(path: Path, fmt: str, flag: str) -> list[str]:
    """The column names of a table file, from its header alone."""
    if fmt in ("csv", "tsv"):
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            try:
                header = next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","))
            except StopIteration:
                raise UsageError(f"{flag} {path}: the file is empty") from None
        names = [h.strip() for h in header]
        for i, name in enumerate(names):
            if name in names[:i]:  # the reader would rename the second one (name.1) and use the first silently
                raise UsageError(f"{flag} {path}: column '{name}' appears twice in the header (columns "
                                 f"{names.index(name) + 1} and {i + 1}); rename one")
        return names
    if fmt == "json":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise UsageError(f"{flag} {path}: the first record is not valid JSON "
                                         "(expected JSON Lines)") from None
                    if not isinstance(row, dict):
                        raise UsageError(f"{flag} {path}: expected one JSON object per line")
                    return list(row)
        raise UsageError(f"{flag} {path}: the file is empty")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception:
            raise UsageError(f"{flag} {path}: not a readable Parquet file") from None
    return ["text"]


def require_columns(path: Path, fmt: str, flag: str, needed: dict[str, str]) -> None:
    """`needed` maps a column name to the flag that names it (for the message)."""
    cols = columns_of(path, fmt, flag)
    missing = {col: col_flag for col, col_flag in needed.items() if col not in cols}
    if missing:  # all of them at once: one run to learn every fix
        raise UsageError(
            f"{flag} {path}: " + "; ".join(f"no column '{col}'{did_you_mean(col, cols)}" for col in missing)
            + f"; columns are {', '.join(cols) or '(none)'}; pass "
            + " and ".join(f"{col_flag} NAME" for col_flag in dict.fromkeys(missing.values()))
        )


def check_data_file(spec: str, flag: str, columns: dict[str, str] | None = None) -> tuple[list[Path], str, str]:
    """Expand, check and hash the files behind `spec`. Returns (files, format, sha256)."""
    files = expand(spec, flag)
    fmt = file_format(files[0], flag)
    digest = hashlib.sha256()
    for f in files:
        if f.stat().st_size == 0:
            raise UsageError(f"{flag} {f}: the file is empty")
        if fmt in ("text", "csv", "tsv", "json"):
            lines = scan_text(f, flag, digest)
            if fmt in ("csv", "tsv") and lines < 2:
                raise UsageError(f"{flag} {f}: holds a header but no rows")
        else:
            with open(f, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
        if fmt != "text" and columns:
            require_columns(f, fmt, flag, columns)
    return files, fmt, digest.hexdigest()


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, reason) of the first line of a JSON Lines file that is not one JSON object."""
    return next(((number, why) for number, _, why in json_lines(path) if why), None)


def json_lines(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object, None) for each non-blank line of a JSON Lines file, as it is read; (line
    number, None, reason) for a line that is not one JSON object."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, None, e.msg
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, "not a JSON object")
    return None


def read_lines(spec: str) -> list[str]:
    """Texts for predict: one per line of a file, or of standard input for '-' (blank lines included)."""
    return list(iter_lines(spec))


def iter_lines(spec: str) -> Iterator[str]:
    """The lines of a file, or of standard input for '-', as they are read (memory stays flat however long
    the file): universal newlines (\\n, \\r\\n, \\r), blank lines included, the newline that ends the last
    line is no line of its own."""
    import sys

    if spec == "-":
        yield from _lines(sys.stdin.buffer, "standard input")
        return
    p = Path(spec)
    # Pipes and devices too (`--input <(cmd)`, /dev/stdin): anything that exists and is no directory.
    if not p.exists():
        raise UsageError(f"--input {spec}: no such file")
    if p.is_dir():
        raise UsageError(f"--input {spec}: is a directory; pass a file of texts, one per line")
    with open(p, "rb") as f:
        yield from _lines(f, spec)


def _lines(f, name: str) -> Iterator[str]:
    for number, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--input {name}: line {number} is not valid UTF-8; re-encode it as UTF-8") from None
        line = line[:-1] if line.endswith("\n") else line
        line = line[:-1] if line.endswith("\r") else line
        # Blank lines too: predict answers each as blank (inference.BLANK), so result N is line N.
        yield from line.split("\r")  # a lone \r ends a line too (old Mac files)


def input_format(spec: str) -> str:
    """How predict reads --input: a table (.csv, .tsv, .jsonl/.json, .parquet) by its columns, anything else
    (.txt, a pipe, a device, standard input) as one text per line."""
    return "text" if spec == "-" else FORMATS.get(Path(spec).suffix.lower(), "text")


def iter_table(path: Path, fmt: str, columns: list[str], flag: str = "--input") -> Iterator[tuple]:
    """The cells of `columns`, row by row, as the file is read (a CSV or JSON Lines file line by line, a
    Parquet file batch by batch): memory stays flat however long the file. CSV cells are strings as
    written; a JSON or Parquet cell is its value (None where a row lacks it). The caller checks the
    header first (`require_columns`)."""
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
            header = [h.strip() for h in next(reader)]
            at = [header.index(c) for c in columns]
            for row in reader:
                if row:  # csv gives [] for a blank line: no row
                    yield tuple(row[i] if i < len(row) else "" for i in at)
    elif fmt == "json":
        for number, row, why in json_lines(path):
            if why:
                raise UsageError(f"{flag} {path}: line {number} is not a JSON object ({why}); fix or drop it "
                                 "(JSON Lines: one object per line)")
            yield tuple(row.get(c) for c in columns)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=list(dict.fromkeys(columns))):
            cells = batch.to_pydict()
            yield from zip(*(cells[c] for c in columns), strict=True)
    else:
        raise ValueError(f"not a table format: {fmt}")
