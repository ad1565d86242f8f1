"""All terminal output: logs and progress on stderr (main process only), `--json` results on stdout.

Library code logs through `logging.getLogger("nlptl")` and reports training progress through
`Progress`; only this module writes to the terminal. Rich formatting on a terminal; plain lines when stderr
is a pipe or NO_COLOR is set; nothing but warnings with `--quiet`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("nlptl")

_state: dict[str, Any] = {"quiet": False, "json": False, "configured": False, "header": None}


CLOSED_STDOUT = ("standard output is closed, so the results have nowhere to go; redirect it instead (> FILE, "
                 "or > /dev/null)")


class _ClosedStdout:
    """sys.stdout when file descriptor 1 was closed (`nlptl predict ... >&-`): Python leaves None there,
    and the first result written would fail with an AttributeError. Writing a result says why, in one line."""

    def write(self, text: str) -> int:
        from nlptl.errors import UsageError

        raise UsageError(CLOSED_STDOUT)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def guard_stdout() -> None:
    """Called first by the CLI: a closed standard output becomes `_ClosedStdout`."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()


def require_stdout() -> None:
    """A command whose whole point is its output (predict) checks before any work that it can write it."""
    if sys.stdout is None or isinstance(sys.stdout, _ClosedStdout):
        from nlptl.errors import UsageError

        raise UsageError(CLOSED_STDOUT)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def is_quiet() -> bool:
    return bool(_state["quiet"])


def fancy() -> bool:
    """Rich output only on a real terminal, and never with NO_COLOR."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")))


def configure(quiet: bool = False, json_mode: bool = False) -> None:
    """Route the nlptl logger to stderr. Other processes than the main one only report errors."""
    _state.update(quiet=quiet, json=json_mode, configured=True, header=None)
    log.handlers.clear()
    log.propagate = False
    if fancy():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr_console(), show_time=False, show_path=False,
                                               markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nlptl: %(message)s"))
    handler.addFilter(_header_first)
    log.addHandler(handler)
    if not is_main_process():
        log.setLevel(logging.ERROR)
    else:
        log.setLevel(logging.WARNING if quiet else logging.INFO)


class _JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, message, and the record's `fields` (extra=)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname.lower(), "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        return json.dumps(entry, default=str, ensure_ascii=False)


def json_logs() -> None:
    """Logs as JSON Lines on stderr, for machines (`nlptl serve --json`); call after configure()."""
    for handler in log.handlers:
        handler.setFormatter(_JsonLines())
    if fancy():  # a rich handler would wrap and colour the lines: plain ones
        log.handlers.clear()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLines())
        log.addHandler(handler)


def error(message: str) -> None:
    """The one line a failing command leaves on stderr."""
    _state["header"] = None  # a command that fails its quick checks shows only this line
    if fancy():
        _stderr_console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


def header(title: str, config: dict[str, Any]) -> None:
    """The resolved config, before a stage starts. Held back until the stage's first log line, progress
    bar or result, so that a command failing its quick checks leaves one line on stderr: the error."""
    if _state["quiet"] or not is_main_process():
        return
    _state["header"] = (title, config)


def _header_first(record: logging.LogRecord) -> bool:
    """Log filter: the pending header goes out before the first log line."""
    flush_header()
    return True


def flush_header() -> None:
    if _state["header"] is None:
        return
    title, config = _state["header"]
    _state["header"] = None
    if not fancy():
        log.info("%s: %s", title, ", ".join(f"{k}={v}" for k, v in config.items() if v not in (None, [], "")))
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    for k, v in config.items():
        if v not in (None, [], ""):
            table.add_row(k, str(v))
    _stderr_console().print(table)


def results(title: str, rows: dict[str, Any]) -> None:
    """A command's result: its scalar values, then a classifier's results per class as a table of their own
    (the confusion matrix is in --json, the record and `nlptl report`)."""
    by_class = rows.get("per_class") or []
    leakage = rows.get("leakage")
    _values(title, {k: v for k, v in rows.items() if k not in ("per_class", "confusion_matrix", "leakage")})
    if isinstance(leakage, dict) and leakage.get("checked"):  # evaluate's check: its warnings name the sources
        _values("leakage check", {"texts seen in the lineage": f"{leakage['seen']} of {leakage['n_checked']}"})
    if by_class and not _state["json"]:
        table(f"{title} per class", ["label", "precision", "recall", "F1", "support"],
              [[r["label"], r["precision"], r["recall"], r["f1"], r["support"]] for r in by_class])


def _values(title: str, rows: dict[str, Any]) -> None:
    flush_header()
    if not is_main_process():
        return
    if _state["json"]:
        return
    if _state["quiet"]:
        return
    if not fancy():
        log.info("%s: %s", title, ", ".join(f"{k}={_fmt(v)}" for k, v in rows.items()))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, padding=(0, 2))
    for k, v in rows.items():
        table.add_row(k, _fmt(v))
    _stderr_console().print(table)


def table(title: str, columns: list[str], rows: list[list[Any]], stdout: bool = False) -> None:
    """A table on stderr; with `stdout` (a command's own result, e.g. `nlptl corpora`) on stdout, so it
    pipes, and shown even with --quiet."""
    flush_header()
    if not is_main_process() or (_state["quiet"] and not stdout):
        return
    if not fancy() and not (stdout and sys.stdout.isatty()):
        if stdout:
            print("\t".join(columns), file=sys.stdout)
            for r in rows:
                print("\t".join(_fmt(v) for v in r), file=sys.stdout)
            sys.stdout.flush()
            return
        log.info(title)
        log.info(" | ".join(columns))
        for r in rows:
            log.info(" | ".join(_fmt(v) for v in r))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    (Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR"))) if stdout else _stderr_console()).print(t)


def audit(result: dict[str, Any]) -> None:
    """`nlptl audit`: one row per (checked file, source) on stdout, then the duplicates it found."""
    rows = [[r["checked"], r["source"], f"{r['role']} ({r['stage']})", r["n_checked"], r["exact"], r["near"],
             f"{100 * r['share']:.1f}%"] for r in result["overlaps"]]
    rows += [["-", s["source"], "not checked", "-", "-", "-", s["why"]] for s in result["not_checked"]]
    table("leakage audit", ["checked", "source", "role (stage)", "texts", "exact", "near", "seen"], rows, stdout=True)
    for r in result["overlaps"]:
        for e in r["examples"]:
            log.warning("%s duplicate in %s: %r (containment %.2f)", e["kind"], r["source"], e["text"][:100],
                        e["containment"])


def report(result: dict[str, Any]) -> None:
    """`nlptl report`: the chain of stages, their data and metrics, and where the plots went (stdout)."""
    stages = result["stages"]
    print(f"{result['run_dir']}: a chain of {len(stages)} stage(s), starting from {result['general_model']}",
          file=sys.stdout)
    rows = []
    for s in stages:
        data = "; ".join(f"{d['role']} {d['name']} (sha256 {d['sha256'][:12] if d['sha256'] else 'n/a'})"
                         for d in s["data"]) or "-"
        rows.append([s["index"], s["stage"], s["dir"] or "(moved or deleted)", s["base_model"] or "-",
                     s["objective"] or "-", data])
    table("lineage", ["#", "stage", "run directory", "base model", "objective", "data (sha256)"], rows, stdout=True)
    keys = [k for k in ("perplexity_before", "perplexity", "pair_loss_before", "pair_loss",
                        "accuracy", "f1_micro", "f1_macro", "subset_accuracy",
                        "rmse", "pearson", "loss", "best_step", "steps",
                        "train_tokens", "train_seconds") if any(k in s["metrics"] for s in stages)]
    table("metrics", ["#", "stage", *keys],
          [[s["index"], s["stage"], *[s["metrics"].get(k, "") for k in keys]] for s in stages], stdout=True)
    table("plots", ["file"], [[p] for p in result["plots"]] or [["(no training history to plot)"]], stdout=True)


def sweep(result: dict[str, Any]) -> None:
    """`nlptl sweep` and `nlptl report SWEEP_DIR`: the trials, the best one and its command (stdout)."""
    rows = [[t["trial"], ", ".join(f"{k}={_fmt(v)}" for k, v in t["params"].items()), _fmt(t["score"]), t["state"],
             t.get("error") or t.get("out") or ""] for t in result["trials"]]
    table(f"sweep {result['sweep']}: {result['score']} on the eval split ({result['direction']}), "
          f"{result['n_finished']} trial(s) finished", ["trial", "params", result["score"], "state", "run / error"],
          rows, stdout=True)
    best = result.get("best")
    if best:
        print(f"best: trial {best['trial']}, {result['score']} {_fmt(best['score'])} ({best['out']})\n"
              f"rerun it with:\n  {result['best_command']}", file=sys.stdout)


def emit_json(obj: Any) -> None:
    """One JSON document on one line of stdout (main process only)."""
    if is_main_process():
        sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """Training progress: a rich bar with loss, tokens/s and ETA on a terminal, plain log lines elsewhere."""

    def __init__(self, description: str, total: int, log_every: int = 10, min_seconds: float = 0.0):
        """`min_seconds`: in logs, a line at most that often (and none for a phase shorter than that)."""
        self.total, self.log_every, self.description = total, log_every, description
        self.min_seconds, self.last_line, self.logged = min_seconds, time.perf_counter(), False
        self.enabled = is_main_process() and not _state["quiet"]
        self.bar = None
        self.t0 = time.perf_counter()
        flush_header()
        if self.enabled and fancy():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=_stderr_console(), transient=False)
            self.task = self.bar.add_task(description, total=total, info="")
            self.bar.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=text)
        elif step % self.log_every == 0 or step == self.total:
            now = time.perf_counter()
            # The last step's line whenever an earlier one was shown (a phase that logged ends with it).
            if now - self.last_line >= self.min_seconds or (step == self.total and self.logged):
                self.last_line, self.logged = now, True
                log.info("%s", f"{self.description} step {step}/{self.total}  {text}".rstrip())

    def note(self, message: str) -> None:
        if self.enabled:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
