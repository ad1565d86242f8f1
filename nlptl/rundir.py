"""Run directories: where a run goes, how it is written (all or nothing), what it records, and the lock
that keeps one run per directory. Training checkpoints (OUT/checkpoints/, resume) are checkpoint.py's.

A stage directory is a normal Hugging Face checkpoint (config.json, model.safetensors, tokenizer
files) plus `nlptl-run.json` (stage, resolved config, metrics, lineage) and `config.yaml` (the
resolved config, usable as `--config`). `nlptl-run.json` marks a completed run. `nlptl export` and
`nlptl merge` write their directories the same way, with their own record (`Product`).

The files are written into a hidden staging directory next to `--out` and renamed into place at the
end, so a failed or interrupted run never leaves a half-written directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nlptl import __version__
from nlptl.config import runs_root
from nlptl.errors import UsageError

RUN_FILE = "nlptl-run.json"
# Written into --out while training runs (tracking.py), carried into the finished directory.
LIVE = ("logs", "metrics.csv", "lr_find.json")
PREVIOUS = {"adapt": ("pretrain",), "finetune": ("adapt", "pretrain"), "evaluate": ("finetune",),
            "predict": ("finetune",)}


def read_record(path: str | Path) -> dict | None:
    """The run's record, or None when it has none or it cannot be read (`record_problem` says which)."""
    f = Path(path) / RUN_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def record_problem(path: str | Path) -> str | None:
    """Why the nlptl-run.json in `path` cannot be read (truncated by a full disk or a bad copy...), or
    None when it is fine or absent: a run with a corrupt record is not a plain checkpoint."""
    f = Path(path) / RUN_FILE
    if not f.is_file() or read_record(path) is not None:
        return None
    try:
        json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        return f"{RUN_FILE} cannot be read ({e.strerror})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{RUN_FILE} is corrupt (not valid JSON: truncated?)"
    return f"{RUN_FILE} is corrupt (not a JSON object)"


def latest_run(stages: tuple[str, ...]) -> Path | None:
    """The most recently completed run of any of `stages` under the runs root."""
    root = runs_root()
    if not root.is_dir():
        return None
    found = []
    for f in root.glob(f"*/{RUN_FILE}"):
        rec = read_record(f.parent)
        if rec and rec.get("stage") in stages:
            found.append((rec.get("created", ""), f.stat().st_mtime, f.parent))
        elif problem := record_problem(f.parent):  # perhaps the very run meant: never passed over in silence
            import logging

            logging.getLogger("nlptl").warning("skipped %s: its %s", f.parent, problem)
    return max(found)[2] if found else None


def default_from(stage: str) -> str:
    """`--from` when omitted: the latest completed run of the previous stage."""
    stages = PREVIOUS[stage]
    run = latest_run(stages)
    if run is None:
        flag = "--model" if stage in ("evaluate", "predict") else "--from"
        raise UsageError(
            f"no completed {' or '.join(stages)} run under {runs_root()}; pass {flag} MODEL (a run directory, "
            "a checkpoint or a hub id)"
        )
    import logging

    rec = read_record(run) or {}
    flag = "--model" if stage in ("evaluate", "predict") else "--from"
    logging.getLogger("nlptl").info("%s %s: the latest %s run", flag,
                                    run, rec.get("stage", " or ".join(stages)))
    return str(run)


def default_out(stage: str, n: int = 1) -> Path:
    """A new run directory under the runs root, named by stage and time; `n` > 1 starts the search at
    the n-th name of this second (the earlier ones are taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = runs_root() / (f"{stage}-{stamp}" if n == 1 else f"{stage}-{stamp}-{n}")
    while out.exists() or _staging(out).exists():
        n += 1
        out = runs_root() / f"{stage}-{stamp}-{n}"
    return out


def resolve_out(out: str | Path) -> Path:
    """--out as a real absolute path. `.` and a symbolic link name the directory they stand for, so its
    staging directory and its lock lie next to that directory, never inside it, and a run through a link
    excludes a run on the directory itself (one lock). A file on the way is refused before anything runs."""
    try:
        path = Path(out).expanduser().resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links
        raise UsageError(f"--out {out}: the path cannot be resolved (a loop of symbolic links?); "
                         "pass another --out") from None
    if path.parent == path:
        raise UsageError(f"--out {out} is the root directory; pass a directory for the run")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is a file, not a directory; pass another --out")
            break
    return path


def check_writable(out: Path, fix: str = "choose another --out") -> None:
    """Refuse an --out where the run could not write: the lock and the staging directory are made next
    to it, its logs and checkpoints inside it."""
    where = unwritable(out.parent) or (unwritable(out) if out.is_dir() else None)
    if where is not None:
        raise UsageError(f"--out {out}: {where} is not writable; {fix}")


def unwritable(path: Path) -> Path | None:
    """None when a file can be made in `path` (or in its nearest existing parent, where `path` would be
    made), else that directory. Tried with a file: permission bits alone say nothing for root or on
    read-only mounts."""
    import tempfile

    where = Path(path)
    while not where.exists() and where.parent != where:
        where = where.parent
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".nlptl-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return where
    return None


@dataclass(frozen=True)
class Product:
    """What a command writes into --out, for the one check of --out (`check_out`): how its source is
    named, and which directory it may replace with --overwrite (`holds`: one it wrote itself). The
    training stages' runs (`RUN`) have rules of their own: an unfinished run, a failed run's logs."""

    source: str  # the directory the command reads, as the user named it: it must not be --out
    written: str  # what the command writes, for the messages
    kind: str = "run"  # what --out then holds: "an export", "a merged run"
    holds: Callable[[Path], bool] | None = None  # None: the training stages' rules


RUN = Product("the --from directory", "the new run")


def checkpoints_dir(out: Path) -> Path:
    """Where a training run keeps its checkpoints while it trains (checkpoint.py writes them)."""
    return Path(out) / "checkpoints"


def check_out(out: Path, overwrite: bool, source: str | Path | None = None, resume: bool = False,
              product: Product = RUN) -> None:
    """Refuse an --out we must not write to, before anything heavy runs. `source`: the local directory
    the command reads (not to be written over). With `resume`: a completed run is refused (the
    checkpoint to resume is checkpoint.find_resume_checkpoint's)."""
    if source is not None and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"--out {out} is {product.source}; write {product.written} to another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory path")
    if product.holds is not None:
        if out.is_dir() and any(out.iterdir()):
            if not product.holds(out):
                raise UsageError(f"--out {out} is a non-empty directory that is not {product.kind}; choose another "
                                 "--out")
            if not overwrite:
                raise UsageError(f"--out {out} already holds {product.kind}; pass --overwrite to replace it")
        return
    if resume:
        record = read_record(out)
        if record is not None:
            # A run that stopped early (--patience) is complete too: resuming it would train no further.
            metrics = record.get("metrics") or {}
            early = (f" (stopped early at step {metrics['stopped_at_step']}: {metrics.get('early_stop')})"
                     if metrics.get("stopped_early") else "")
            raise UsageError(f"--resume: {out} holds a completed run{early}; nothing to resume")
        return
    _check_run_out(out, overwrite)


def _check_run_out(out: Path, overwrite: bool) -> None:
    """A training stage's --out: empty, or a run (finished, or unfinished with --overwrite) it replaces."""
    unfinished = checkpoints_dir(out).is_dir() and read_record(out) is None
    if unfinished and not overwrite:
        raise UsageError(f"--out {out} holds an unfinished run (checkpoints/); pass --resume to continue it, "
                         "or --overwrite to start over")
    if unfinished and overwrite:
        shutil.rmtree(checkpoints_dir(out))
    if out.is_dir() and any(out.iterdir()) and not _only_live_files(out):
        rec = read_record(out)
        if rec is None and not overwrite and record_problem(out):
            raise UsageError(f"--out {out} holds a run whose {record_problem(out)}; pass --overwrite to replace it, "
                             "or choose another --out")
        if rec is None and not overwrite:
            raise UsageError(f"--out {out} is a non-empty directory; choose another --out (or --overwrite)")
        if rec is None and not (out / "config.json").is_file():
            raise UsageError(f"--out {out} is a non-empty directory that is not an nlptl run; nlptl will not delete it")
        if not overwrite:
            raise UsageError(
                f"--out {out} already holds a {rec.get('stage', '?')} run from {rec.get('created', '?')}; "
                "pass --overwrite to replace it, or choose another --out"
            )


def _only_live_files(out: Path) -> bool:
    """What a run that failed before its first checkpoint leaves: its metrics.csv (and tracker logs).
    The next run may replace them; a directory of anything else is not ours to write into."""
    from nlptl.tracking import COLUMNS, METRICS_FILE

    names = {p.name for p in out.iterdir()}
    if METRICS_FILE not in names or not names <= set(LIVE):
        return False
    with open(out / METRICS_FILE, encoding="utf-8", errors="replace") as f:
        # nlptl's columns first; any after them are the stage's other metrics (tracking.columns_of).
        return f.readline().strip().split(",")[: len(COLUMNS)] == list(COLUMNS)


def _staging(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


class StageWriter:
    """Collects a stage's files in a staging directory; `commit()` adds the run's record and moves them
    into --out at once (`finish()` alone for a directory with a record of its own: export, merge)."""

    def __init__(self, out: Path):
        self.out = out
        self.staging = _staging(out)

    def __enter__(self) -> StageWriter:
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    @property
    def path(self) -> Path:
        return self.staging

    def save_model(self, model, tokenizer, kept: dict | None = None) -> None:
        """Weights (safetensors), config and tokenizer; `kept`: extra parent tensors to carry along."""
        state = None
        if kept:
            state = dict(model.state_dict())
            state.update({k: v for k, v in kept.items() if k not in state})
        model.save_pretrained(self.staging, state_dict=state)
        tokenizer.save_pretrained(self.staging)

    def commit(self, record: dict[str, Any]) -> Path:
        import yaml

        from nlptl import card

        (self.staging / "config.yaml").write_text(yaml.safe_dump(record["config"], sort_keys=False), encoding="utf-8")
        card.write(self.staging, record, self.out)
        (self.staging / RUN_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        # The tracker logs and metrics of this run, written into --out as it trained (not those of a
        # finished run that this one replaces).
        for name in LIVE if read_record(self.out) is None else ():
            if (self.out / name).exists() and not (self.staging / name).exists():
                os.replace(self.out / name, self.staging / name)
        return self.finish()

    def finish(self) -> Path:
        """Rename the staging directory into --out at once."""
        rename_into_place(self.staging, self.out)
        return self.out


def rename_into_place(staging: Path, final: Path) -> None:
    """Make the finished directory `staging` be `final` in one rename (replacing what was there).
    Its weights first get the mode any other file gets (0o666 less the umask): safetensors >= 0.8
    writes through a temporary file created 0600 whatever the umask (safetensors issue 782), so a
    model trained by one user could not be read by the one serving it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in staging.rglob("*.safetensors"):
        path.chmod(0o666 & ~umask)
    if _is_working_directory(final):
        _fill_in_place(staging, final)
        return
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)


def _is_working_directory(path: Path) -> bool:
    try:
        return path.is_dir() and os.path.samefile(path, os.getcwd())
    except OSError:  # no working directory any more
        return False


def _fill_in_place(staging: Path, final: Path) -> None:
    """`--out .`: the directory the user is in is emptied and filled, not replaced by a new one of the same
    name (their shell would be left in a deleted directory that looks empty). The record that marks a
    completed run goes in last, so the directory never looks complete while half-written."""
    for old in final.iterdir():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in sorted(staging.iterdir(), key=lambda p: p.name == RUN_FILE):
        os.replace(new, final / new.name)
    staging.rmdir()


def resume_hint(out: Path, command: list[str] | None) -> str:
    """How to continue this run. `command`: the arguments `nlptl` was given (the same command line plus
    --resume continues it), or None for a stage called from Python."""
    if command is None:
        return f"Resume with the same config and resume=True (out={str(out)!r})."
    if command[:1] == ["run"]:  # a recipe resumes its interrupted stage when run again
        return "Resume with: nlptl " + " ".join(command)
    args = [a for a in command if a not in ("--resume", "--overwrite")]
    if not any(a in ("--out", "-o") or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    return "Resume with: nlptl " + " ".join(args + ["--resume"])


def make_record(stage: str, config: dict, metrics: dict, lineage: dict, command: list[str] | None = None) -> dict:
    """The content of nlptl-run.json. `command`: the arguments `nlptl` was given, when it was."""
    return {
        "nlptl_version": __version__,
        "stage": stage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["nlptl", *command]) if command is not None else None,
        "config": config,
        "metrics": metrics,
        "lineage": lineage,
    }


def lineage_of(stage: str, base=None, **fields: Any) -> dict:
    """This stage's lineage; the parent's record is nested when the base is an nlptl run."""
    out: dict[str, Any] = {"stage": stage}
    if base is not None:
        out["base_model"] = base.spec if not base.local else str(Path(base.path).resolve())
        if base.run:
            out["parent"] = base.run.get("lineage")
    out.update({k: v for k, v in fields.items() if v is not None})
    out["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return out


# --------------------------------------------------------------------------- one run per --out (lock)


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


class OutLock:
    """The lock of one --out, held by one run (stages/common.Run) from its opening to its closing.

    An flock on a hidden file next to --out: the kernel releases it whenever the holder exits, kill -9
    included, so a dead run's lock is never stale. Only the main process of a multi-process run locks."""

    def __init__(self, out: Path):
        self.out = out
        self.path = _lock_file(out)
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; returns None (held now, or not needed), or the pid of the run that holds it
        (-1 when it cannot be read)."""
        if int(os.environ.get("RANK", "0")) != 0:
            return None
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not guarded
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                return int(holder) if holder.isdigit() else -1
            # The previous holder may have removed the file between our open and our lock: lock the file
            # that is there now, or two runs would each hold a lock on a different file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return None

    def take(self) -> OutLock:
        """Acquire, or refuse in one line naming the run that holds --out."""
        holder = self.acquire()
        if holder is not None:
            who = f"pid {holder}" if holder > 0 else "another process"
            raise UsageError(f"--out {self.out} is in use by another nlptl run ({who}); wait for it to finish, "
                             "or choose another --out")
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: a waiting run re-checks the file it locked
        os.close(self.fd)
        self.fd = None
