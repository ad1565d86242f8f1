"""What every training stage shares, so that a stage module holds only what is particular to it.

The opening: where the stage writes and the checks that need no heavy import (`open_stage`: --out,
--resume, --report-to, --push-to-hub), then the accelerator with its trackers and the seed (`start`)
and the checkpointing arguments of the loop (`resume_args`). The closing (`write_stage`): the stage's
files, metrics and record written into a staging directory, renamed into --out at once, then uploaded
with --push-to-hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nlptl.checkpoint import check_out, default_out
from nlptl.config import TrainConfig, to_dict
from nlptl.errors import UsageError

log = logging.getLogger("nlptl")


def check_block_size(block_size: int, positions: int | None) -> None:
    if positions is not None and block_size > positions:
        raise UsageError(f"--block-size {block_size} is larger than the model's {positions} positions; use --block-size {positions} or less")


def check_max_length(max_length: int | None, config: dict | None, flag: str = "--max-length") -> None:
    """--max-length must fit the model's positions (finetune, evaluate and predict alike): past them a
    GPT fails with an IndexError and a BERT with a CUDA/CPU assertion on the first long text."""
    from nlptl.models import positions_of

    positions = positions_of(config) if config else None
    window = config.get("nlptl_window") if isinstance(config, dict) else getattr(config, "nlptl_window", None)
    if window:
        return  # a long-document classifier cuts its input into windows that fit (heads.py)
    if max_length and positions and max_length > positions:
        raise UsageError(f"{flag} {max_length} is larger than the model's {positions} positions; use {positions} or less"
                         + ("; for longer texts use --long-docs chunk" if flag == "--max-length" else ""))


# Each run directory this process opened: its identity (config and input hashes, kept in its checkpoints)
# and the checkpoint a resumed run continues (found and verified once, by open_stage).
_opened: dict[Path, dict] = {}


def open_stage(cfg: TrainConfig, stage: str, from_path: str | None, inputs: dict | None = None) -> Path:
    """The --out of a training stage (a new directory under the runs root by default), locked for this
    run and checked before anything heavy runs, and the checks of --report-to and --push-to-hub.
    `from_path`: the local model the stage starts from (it must not be --out). `inputs`: the content
    hash of each data input, which a resumed run must share with the interrupted one, like its config."""
    from nlptl.checkpoint import (
        check_resume_identity,
        check_writable,
        lock_out,
        resolve_out,
        run_identity,
        try_lock,
    )

    if cfg.out:
        out = resolve_out(cfg.out)
        check_writable(out)  # before the lock, which is a file next to --out
        lock_out(out)
    else:
        check_writable(default_out(stage), "pass --out, or set NLPTL_HOME to a writable directory")
        # Two runs started in the same second get different names: a name locked by another is skipped.
        n = 1
        while try_lock(out := default_out(stage, n)) is not None:
            n += 1
    checkpoint = check_out(out, cfg.overwrite, from_path, resume=cfg.resuming, resume_from=cfg.resume_from)
    identity = run_identity(cfg, inputs)
    if checkpoint is not None:
        check_resume_identity(checkpoint, identity)
    _opened[out.resolve()] = {"identity": identity, "checkpoint": checkpoint}
    preflight(cfg)
    return out


def locked(run: Callable) -> Callable:
    """A training stage's `run`: the --out locks it takes are released when it returns or fails."""
    import functools

    @functools.wraps(run)
    def wrapper(cfg):
        from nlptl.checkpoint import held_locks, release_locks

        held = held_locks()
        try:
            return run(cfg)
        finally:
            release_locks(keep=held)

    return wrapper


def preflight(cfg: TrainConfig) -> None:
    """What a training stage checks before loading anything heavy, for --report-to and --push-to-hub."""
    from nlptl import hub, tracking

    tracking.trackers(cfg.report_to)
    if cfg.push_to_hub:
        hub.check_push(cfg.push_to_hub)


def start(cfg: TrainConfig, out: Path | None = None):
    """The accelerator, seeded; with `out`, its --report-to trackers write under OUT/logs."""
    from nlptl import runtime, tracking

    runtime.quiet_libraries()
    accelerator = runtime.make_accelerator(cfg.precision, cfg.grad_accum, **tracking.accelerator_args(cfg.report_to, out))
    runtime.seed_everything(cfg.seed)
    return accelerator


def resume_args(cfg: TrainConfig, out: Path | None) -> dict:
    """Checkpointing arguments of train() for a stage writing to `out` (none without one)."""
    if out is None:
        return {}
    from nlptl import console
    from nlptl.checkpoint import checkpoints_dir, find_resume_checkpoint, resume_hint

    opened = _opened.get(Path(out).resolve(), {})
    resume_from = None
    if cfg.resuming:
        resume_from = opened.get("checkpoint") or find_resume_checkpoint(out, cfg.resume_from)
    return {"checkpoints": checkpoints_dir(out), "resume_from": resume_from,
            "resume_hint": resume_hint(out, console.command_line()), "identity": opened.get("identity")}


def write_stage(cfg, out: Path, stage: str, *, metrics: dict, lineage: dict,
                write: Callable[[object], dict] | None = None, runlog=None, accelerator=None,
                recorded: dict | None = None) -> dict:
    """The closing of a stage. `write(writer)` puts the stage's own files (model, tokenizer, ...) into
    the staging directory and returns more keys for the record; then come metrics.csv, nlptl-run.json
    (`recorded` metrics, by default `metrics` less output_dir), config.yaml and the model card, and one
    rename makes them --out. Then --push-to-hub. Returns the stage's result."""
    from nlptl import console
    from nlptl.checkpoint import StageWriter, make_record

    config = to_dict(cfg)
    if accelerator is None or accelerator.is_main_process:
        with StageWriter(out) as w:
            extra = write(w) if write is not None else {}
            if runlog is not None:
                runlog.write(w.path)
            if recorded is None:
                recorded = {k: v for k, v in metrics.items() if k != "output_dir"}
            record = make_record(stage, config, recorded, lineage, console.command_line())
            w.commit({**record, **extra})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return {**metrics, **publish(cfg, out, stage, accelerator), "config": config, "lineage": lineage}


def publish(cfg, out: Path, stage: str, accelerator=None) -> dict:
    """--push-to-hub: upload the finished stage directory (main process); the result gains `hub_url`."""
    if not cfg.push_to_hub or (accelerator is not None and not accelerator.is_main_process):
        return {}
    from nlptl import hub

    url = hub.push(out, cfg.push_to_hub, cfg.hub_private, stage)
    log.info("uploaded %s to %s", out, url)
    return {"hub_url": url}
