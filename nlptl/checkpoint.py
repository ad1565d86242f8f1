"""Training checkpoints: the state a killed run resumes from (OUT/checkpoints/step-NNNNNN/, each
written atomically with a manifest of checksums), and what a resumed run must share with the one it
continues (`run_identity`). The run directory around them (staging, record, lock) is rundir.py's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nlptl.config import option_keys
from nlptl.errors import UsageError
from nlptl.rundir import checkpoints_dir, rename_into_place

# --------------------------------------------------------------------------- training checkpoints (resume)

CKPT_MANIFEST = "manifest.json"


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
    rename_into_place(tmp, final)
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
        raise UsageError(f"--resume: nothing to resume in {out} (no checkpoint under {root}); "
                         "drop --resume to start a new run")
    problems = []
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            if problems:  # never silently: the run goes back further than the user may think
                import logging

                logging.getLogger("nlptl").warning("--resume: skipped %s; resuming from %s", "; ".join(problems),
                                                   path.name)
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


# --------------------------------------------------------------------------- what a resumed run must keep

# (Issue 26: these stay in checkpoint.py, the training half of the split; run directories are rundir.py.)
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
