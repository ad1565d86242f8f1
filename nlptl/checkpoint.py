"""Stage directories: where a run goes, how it is written (all or nothing), and what it records.

A stage directory is a normal Hugging Face checkpoint (config.json, model.safetensors, tokenizer
files) plus `nlptl-run.json` (stage, resolved config, metrics, lineage) and `config.yaml` (the
resolved config, usable as `--config`). `nlptl-run.json` marks a completed run.

The files are written into a hidden staging directory next to `--out` and renamed into place at the
end, so a failed or interrupted run never leaves a half-written directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nlptl import __version__
from nlptl.config import option_keys, runs_root
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
    logging.getLogger("nlptl").info("%s %s: the latest %s run", "--model" if stage in ("evaluate", "predict") else "--from",
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
        raise UsageError(f"--out {out}: the path cannot be resolved (a loop of symbolic links?); pass another --out") from None
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


def check_out(out: Path, overwrite: bool, from_path: str | None = None, resume: bool = False,
              resume_from: str | None = None) -> Path | None:
    """Refuse an --out we must not write to, before anything heavy runs. With `resume`: the checkpoint
    to resume (verified once here: its checksums cover every file, gigabytes for a large model)."""
    if from_path is not None and Path(from_path).exists() and out.resolve() == Path(from_path).resolve():
        raise UsageError(f"--out {out} is the --from directory; write the new run to another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory path")
    unfinished = checkpoints_dir(out).is_dir() and read_record(out) is None
    if resume:
        record = read_record(out)
        if record is not None:
            # A run that stopped early (--patience) is complete too: resuming it would train no further.
            metrics = record.get("metrics") or {}
            early = (f" (stopped early at step {metrics['stopped_at_step']}: {metrics.get('early_stop')})"
                     if metrics.get("stopped_early") else "")
            raise UsageError(f"--resume: {out} holds a completed run{early}; nothing to resume")
        return find_resume_checkpoint(out, resume_from)  # "nothing to resume" is an error, not a fresh start
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
    """Collects a stage's files in a staging directory; `commit()` moves them into --out at once."""

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
        publish(self.staging, self.out)
        return self.out


def publish(staging: Path, final: Path) -> None:
    """Make the finished directory `staging` be `final` in one rename (replacing what was there).
    Its weights first get the mode any other file gets (0o666 less the umask): safetensors >= 0.8
    writes through a temporary file created 0600 whatever the umask (safetensors issue 782), so a
    model trained by one user could not be read by the one serving it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in staging.rglob("*.safetensors"):
        path.chmod(0o666 & ~umask)
    if _is_working_directory(final):
        _publish_in_place(staging, final)
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


def _publish_in_place(staging: Path, final: Path) -> None:
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


# --------------------------------------------------------------------------- training checkpoints (resume)

CKPT_MANIFEST = "manifest.json"


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_training_state(root: Path, step: int, files: dict[str, object], state: dict, keep_last: int) -> Path:
    """Write `OUT/checkpoints/step-NNNNNN/` atomically: everything goes into a temporary directory,
    each file's sha256 into a manifest, and one rename makes it visible. A kill at any moment leaves
    the previous complete checkpoint or the new one, never a half one that looks complete.

    `files`: name -> callable(path) that writes the file."""
    import hashlib

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, write in files.items():
        write(tmp / name)
    (tmp / "trainer_state.json").write_text(json.dumps(state, default=str), encoding="utf-8")
    manifest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(tmp.iterdir())}
    (tmp / CKPT_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    publish(tmp, final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong."""
    import hashlib

    manifest_path = path / CKPT_MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable manifest"
    for name, digest in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            return f"{name} is corrupted (checksum mismatch)"
    return None


def find_resume_checkpoint(out: Path, resume_from: str | None) -> Path:
    """The checkpoint to resume: --resume-from PATH, else the latest intact one under --out."""
    if resume_from:
        path = Path(resume_from)
        if not path.is_dir():
            raise UsageError(f"--resume-from {resume_from}: no such checkpoint directory")
        problem = verify_checkpoint(path)
        if problem:
            raise UsageError(f"--resume-from {resume_from}: {problem}; pass another checkpoint")
        return path
    root = checkpoints_dir(out)
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True) if root.is_dir() else []
    if not candidates:
        raise UsageError(f"--resume: nothing to resume in {out} (no checkpoint under {root}); drop --resume to start a new run")
    problems = []
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            if problems:  # never silently: the run goes back further than the user may think
                import logging

                logging.getLogger("nlptl").warning("--resume: skipped %s; resuming from %s", "; ".join(problems), path.name)
            return path
        problems.append(f"{path.name}: {problem}")
    raise UsageError(f"--resume: no intact checkpoint in {root} ({'; '.join(problems)}); start over with --overwrite")


def save_training(root: Path, step: int, model, optimizer, scheduler, rng: dict, state: dict, best_state: dict | None,
                  keep_last: int) -> Path:
    """The training loop's checkpoint: weights, optimizer, schedule, random states, the loop's state
    (train.TrainState) and, with model selection, the best weights so far."""
    import torch
    from safetensors.torch import save_file, save_model

    files = {
        "model.safetensors": lambda p: save_model(model, str(p)),
        "optimizer.pt": lambda p: torch.save(optimizer.state_dict(), p),
        "scheduler.pt": lambda p: torch.save(scheduler.state_dict(), p),
        "rng.pt": lambda p: torch.save(rng, p),
    }
    if best_state is not None:
        files["best.safetensors"] = lambda p: save_file({k: v.contiguous() for k, v in best_state.items()}, str(p))
    return save_training_state(root, step, files, state, keep_last)


def load_training(path: Path, model, optimizer, scheduler) -> tuple[dict, dict, dict | None]:
    """Load a `save_training` checkpoint into `model` (unwrapped), `optimizer` and `scheduler`; returns
    (the loop's state, the random states, the best weights or None)."""
    import torch
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"))
    # Our own files, verified against the manifest's checksums before we get here.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = json.loads((path / "trainer_state.json").read_text())
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
    return state, torch.load(path / "rng.pt", weights_only=False), best


def rng_states(random_source) -> dict:
    """This process's random streams: Python, NumPy, torch (and CUDA), and the generator of
    `random_source` (the masking collator) when it has one."""
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(random_source, "generator", None)
    if gen is not None:
        states["collator"] = gen.get_state()
    return states


def set_rng_states(states: dict, random_source) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "collator" in states and getattr(random_source, "generator", None) is not None:
        random_source.generator.set_state(states["collator"])


# --------------------------------------------------------------------------- one run per --out (lock)

_locks: dict[Path, tuple[int, Path]] = {}  # --out (resolved) -> (file descriptor, lock file), this process's


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def try_lock(out: Path) -> int | None:
    """Take the lock of `out` for this process; returns None, or the pid of the run that holds it.

    An flock on a hidden file next to --out: the kernel releases it whenever the holder exits, kill -9
    included, so a dead run's lock is never stale. Only the main process of a multi-process run locks."""
    key = out.resolve()
    if key in _locks or int(os.environ.get("RANK", "0")) != 0:
        return None
    try:
        import fcntl
    except ImportError:  # no flock on this platform: runs are not guarded
        return None
    path = _lock_file(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            return int(holder) if holder.isdigit() else -1
        # The previous holder may have removed the file between our open and our lock: lock the file
        # that is there now, or two runs would each hold a lock on a different file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _locks[key] = (fd, path)
    return None


def lock_out(out: Path) -> None:
    holder = try_lock(out)
    if holder is not None:
        who = f"pid {holder}" if holder > 0 else "another process"
        raise UsageError(f"--out {out} is in use by another nlptl run ({who}); wait for it to finish, or choose another --out")


def held_locks() -> set[Path]:
    """The --out directories (resolved) this process holds locks on."""
    return set(_locks)


def release_locks(keep: set[Path] | None = None) -> None:
    """Release this process's --out locks (all, or all but `keep`)."""
    for key in list(_locks):
        if keep is not None and key in keep:
            continue
        fd, path = _locks.pop(key)
        path.unlink(missing_ok=True)  # while still locked: a waiting run re-checks the file it locked
        os.close(fd)


# --------------------------------------------------------------------------- what a resumed run must keep

# Options that may change when a run is resumed: how long it trains, what it logs and where it reports
# (declared on the config fields: resume_safe=True).
RESUME_SAFE = frozenset(option_keys("resume_safe"))
# Not settings of the training: how this invocation finds the run (locates_run=True).
_NOT_COMPARED = frozenset(option_keys("locates_run"))
_PATHS = ("corpus", "from_model", "train_file", "eval_file")


def run_identity(cfg, inputs: dict | None) -> dict:
    """What a resumed run must share with the interrupted one: the resolved config and the content hash
    of every data input (the config names files; the hashes say what was in them)."""
    from nlptl.config import to_dict

    config = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_COMPARED}
    for key in _PATHS:
        # The same file or model, named relative or absolute: compared as resolved paths.
        if isinstance(config.get(key), str) and Path(config[key]).expanduser().exists():
            config[key] = str(Path(config[key]).expanduser().resolve())
    return {"config": config, "inputs": dict(inputs or {})}


def identity_changes(saved: dict, current: dict) -> tuple[dict, dict]:
    """(changes refused on resume, changes allowed), each {what: (old, new)}."""
    from nlptl.config import flag_name

    refused, allowed = {}, {}
    old, new = saved.get("config", {}), current.get("config", {})
    # A key the checkpoint does not know is an option added by a later nlptl: not a change of the run.
    for key in sorted(old):
        if old.get(key) != new.get(key):
            (allowed if key in RESUME_SAFE else refused)[flag_name(key)] = (old.get(key), new.get(key))
    old, new = saved.get("inputs", {}), current.get("inputs", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            refused[f"{key} content"] = tuple(v[:12] if isinstance(v, str) and len(v) == 64 else v
                                              for v in (old.get(key), new.get(key)))
    return refused, allowed


def check_resume_identity(checkpoint: Path, current: dict) -> None:
    """Refuse to resume `checkpoint` with other settings or other data: the weights would silently
    follow the old settings while the record named the new ones."""
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("identity")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return  # verify_checkpoint has judged the files already
    if not saved:
        return  # a checkpoint of an older nlptl
    refused, _ = identity_changes(saved, current)
    if refused:
        changes = "; ".join(f"{what} {old} -> {new}" for what, (old, new) in refused.items())
        safe = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUME_SAFE))
        raise UsageError(f"--resume: {checkpoint} was trained with other settings: {changes}; resume with the same "
                         f"ones, or start over with --overwrite (these may change on resume: {safe})")
