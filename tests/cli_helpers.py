"""Helpers for the command-line tests (test_cli.py, test_bad_input.py, test_e2e.py).

Three ways to run `nlptl`, from the most to the least faithful:

- `run_cli`: a real process, `python -m nlptl ...`, as a user runs it (pays ~5-10 s of imports when a
  stage gets past its quick checks);
- `run_light`: a real process that calls `nlptl.cli.main()` and then reports whether torch was imported,
  for the failures that must happen on the command line, file headers or config.json alone (<1 s);
- `call_main`: in this process (torch already imported once), for failures that need the data read.

Data are slices of the samples shipped in `nlptl/assets`; models are tiny (2 layers, 64 wide), built
from a config with a tokenizer trained on the spot. Everything goes into temporary directories.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "nlptl" / "assets"
MARK = "@@nlptl-test "

# Calls main() like the console script does, then says how it ended and whether torch got imported.
LIGHT_DRIVER = f"""
import sys
from nlptl.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
sys.stdout.flush()
print("{MARK}" + f"code={{code}} torch={{'torch' in sys.modules}}")
"""

# A hub endpoint that refuses connections at once: "offline" whatever the machine's network.
OFFLINE_ENDPOINT = "http://127.0.0.1:9"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    torch: bool | None = None  # run_light: whether torch was imported

    def json(self) -> dict:
        """The --json result: exactly one line holding one JSON object."""
        lines = self.stdout.splitlines()
        assert len(lines) == 1, (
            f"expected one line of JSON on stdout, got {len(lines)}:\n{self.stdout[:2000]}"
        )
        obj = json.loads(lines[0])
        assert isinstance(obj, dict)
        return obj

    def jsonl(self) -> list[dict]:
        rows = [json.loads(line) for line in self.stdout.splitlines()]
        assert all(isinstance(r, dict) for r in rows)
        return rows


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NLPTL_DEBUG", None)
    env.update(NLPTL_HOME=str(home), NO_COLOR="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    home: Path,
    *,
    input: str | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> Result:
    """`python -m nlptl ARGS` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "nlptl", *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(home),
        cwd=home,
    )
    return Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def run_light(
    args: list[str], home: Path, *, env: dict[str, str] | None = None, timeout: float = 60
) -> Result:
    """main(ARGS) in a fresh process; `.torch` tells whether it imported torch on the way."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", LIGHT_DRIVER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(home),
        cwd=home,
    )
    seconds = time.perf_counter() - t0
    out, _, mark = p.stdout.rpartition(MARK)
    assert mark, f"the driver did not finish (exit {p.returncode}):\n{p.stderr[-3000:]}"
    fields = dict(kv.split("=") for kv in mark.split())
    return Result(int(fields["code"]), out, p.stderr, seconds, torch=fields["torch"] == "True")


@contextlib.contextmanager
def isolated(home: Path):
    """Environment, logger and console state as they were, after an in-process run."""
    from nlptl import console

    env = dict(os.environ)
    log = logging.getLogger("nlptl")
    handlers, level, propagate = log.handlers[:], log.level, log.propagate
    state = dict(console._state)
    os.environ.update(NLPTL_HOME=str(home), NO_COLOR="1")
    os.environ.pop("NLPTL_DEBUG", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate
        console._state.clear()
        console._state.update(state)


def call_main(args: list[str], home: Path) -> int:
    """main(ARGS) in this process; returns the exit code (read the output with capsys)."""
    from nlptl.cli import main

    with isolated(home):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def assert_one_line_error(res: Result, code: int, *needles: str) -> str:
    """A failure as the contract wants it: the exit code, one 'error:' line naming the problem and the
    fix, no traceback, nothing on stdout. Returns the line."""
    assert res.code == code, f"exit {res.code}, expected {code}; stderr:\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    assert res.stdout == "", res.stdout[:1000]
    return line


def assert_nothing_written(out: Path) -> None:
    """No --out directory, and no staging leftovers next to it."""
    assert not out.exists(), f"{out} was created by a failing command"
    if out.parent.exists():
        left = [p.name for p in out.parent.iterdir() if p.name.lstrip(".").startswith(out.name)]
        assert not left, f"left behind next to --out: {left}"


# --------------------------------------------------------------------------- data


def head(src: Path, n: int, skip: int = 0) -> list[str]:
    with open(src, encoding="utf-8") as f:
        return [line.rstrip("\n") for i, line in enumerate(f) if skip <= i < skip + n]


def labelled(n: int, skip: int = 0) -> list[tuple[str, str]]:
    """Rows (text, 0/1 label) of the shipped sentiment sample."""
    with open(ASSETS / "sentiment_train.csv", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    return rows[skip : skip + n]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tiny_data(root: Path) -> dict[str, Path]:
    """A few hundred short lines of each kind: general text, reviews, labelled train/eval/test."""
    return {
        "general": write_lines(root / "general.txt", head(ASSETS / "general.txt", 300)),
        "reviews": write_lines(root / "reviews.txt", head(ASSETS / "reviews.txt", 300)),
        "train": write_csv(root / "train.csv", labelled(160)),
        "eval": write_csv(root / "eval.csv", labelled(40, skip=160)),
        "test": write_csv(root / "test.csv", labelled(40, skip=200)),
    }


def write_registry(home: Path, corpora: dict[str, Path], tasks: dict[str, dict[str, Path]]) -> Path:
    """$NLPTL_HOME/registry.yaml: local copies under hub names (offline sites do this)."""
    import yaml

    data = {
        "corpora": {k: str(v) for k, v in corpora.items()},
        "tasks": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in tasks.items()},
    }
    path = home / "registry.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- tiny models


def tiny_lm(out: Path, arch: str = "gpt") -> Path:
    """A random-init tiny GPT-2 (or BERT) LM checkpoint with a tokenizer trained on the sample text:
    a plain Hugging Face directory (no nlptl record), as a user's local checkpoint would be."""
    from nlptl.models import build_scratch, train_tokenizer

    texts = head(ASSETS / "general.txt", 400) + head(ASSETS / "reviews.txt", 400)
    tokenizer = train_tokenizer(arch, iter([texts]), 500, 256)
    model = build_scratch(arch, "tiny", tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_classifier(lm: Path, out: Path, labels: tuple[str, ...] = ("negative", "positive")) -> Path:
    """A sequence classifier made from `lm` (what a fine-tuned checkpoint looks like)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        lm, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(lm).save_pretrained(out)
    return out


def tokenizer_only(lm: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for f in lm.iterdir():
        if f.name.startswith("tokenizer") or f.name in (
            "vocab.txt",
            "vocab.json",
            "merges.txt",
            "special_tokens_map.json",
        ):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def kill_after_checkpoint(cmd: list[str], out: Path, step: int, env: dict) -> None:
    """Start `cmd` (a torchrun launch writing into `out`) and SIGKILL every process of it once its
    checkpoint at `step` is published: the launcher and its workers, which torchrun starts in their own
    sessions (found by `out` on their command lines)."""
    import signal

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{step:06d}" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint"
        time.sleep(0.05)
    subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    proc.wait(timeout=60)
