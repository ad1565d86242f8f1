"""What every stage that writes a directory shares, so that a stage module holds only what is particular to it.

A `Run` is one invocation of such a stage, from its opening to its closing. The opening
(`open_stage` for the training stages, `open_product` for export and merge): --out resolved, locked for
this run and checked before anything heavy runs (and for a training stage --resume, --report-to and
--push-to-hub). Then the accelerator with its trackers and the seed (`start`), the run log
(`Run.open_log`) and the checkpointing arguments of the loop (`Run.checkpoints`). The closing
(`write_stage`): the stage's files, metrics and record written into a staging directory, renamed into
--out at once, then uploaded with --push-to-hub (`upload`); leaving the `with` block releases the lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nlptl.config import TrainConfig, to_dict
from nlptl.errors import UsageError
from nlptl.rundir import OutLock, Product, check_out, check_writable, default_out, resolve_out

log = logging.getLogger("nlptl")


def check_block_size(block_size: int, positions: int | None) -> None:
    if positions is not None and block_size > positions:
        raise UsageError(f"--block-size {block_size} is larger than the model's {positions} positions; "
                         f"use --block-size {positions} or less")


def check_max_length(max_length: int | None, config: dict | None, flag: str = "--max-length") -> None:
    """--max-length must fit the model's positions (finetune, evaluate and predict alike): past them a
    GPT fails with an IndexError and a BERT with a CUDA/CPU assertion on the first long text."""
    from nlptl.models import positions_of

    positions = positions_of(config) if config else None
    window = config.get("nlptl_window") if isinstance(config, dict) else getattr(config, "nlptl_window", None)
    if window:
        return  # a long-document classifier cuts its input into windows that fit (heads.py)
    if max_length and positions and max_length > positions:
        raise UsageError(f"{flag} {max_length} is larger than the model's {positions} positions; "
                         f"use {positions} or less"
                         + ("; for longer texts use --long-docs chunk" if flag == "--max-length" else ""))


@dataclass
class Run:
    """One invocation of a stage that writes a directory. `out`: where it writes, held by `lock` until
    the run closes; `command`: the arguments `nlptl` was given (the CLI passes them; None from Python),
    which the record and the resume hint quote. A training stage's run also holds its config, what a
    resumed run must share with the interrupted one (`identity`: config and input hashes, kept in its
    checkpoints), the checkpoint it continues (found and verified once, at the opening) and its run log."""

    stage: str
    out: Path
    lock: OutLock
    cfg: object = None
    command: list[str] | None = None
    identity: dict | None = None
    checkpoint: Path | None = None
    runlog: object = None  # tracking.RunLog, from open_log

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def open_log(self, accelerator):
        """The run's metrics log (tracking.RunLog, a context manager), kept for the closing."""
        from nlptl.tracking import RunLog

        self.runlog = RunLog(accelerator, self.out, self.stage, to_dict(self.cfg), resume=self.checkpoint is not None)
        return self.runlog

    def checkpoints(self):
        """The run's train.Checkpoints: where they go, the one to resume, how to resume this run, and what
        a resumed run must share."""
        from nlptl.rundir import checkpoints_dir, resume_hint
        from nlptl.train import Checkpoints

        return Checkpoints(checkpoints_dir(self.out), self.checkpoint, resume_hint(self.out, self.command),
                           self.identity)


def open_stage(cfg: TrainConfig, stage: str, from_path: str | None, inputs: dict | None = None,
               command: list[str] | None = None) -> Run:
    """The Run of a training stage: its --out (a new directory under the runs root by default), locked
    and checked before anything heavy runs, and the checks of --report-to and --push-to-hub.
    `from_path`: the local model the stage starts from (it must not be --out). `inputs`: the content
    hash of each data input, which a resumed run must share with the interrupted one, like its config."""
    from nlptl.checkpoint import check_resume_identity, find_resume_checkpoint, run_identity

    if cfg.out:
        out = resolve_out(cfg.out)
        check_writable(out)  # before the lock, which is a file next to --out
        lock = OutLock(out).take()
    else:
        check_writable(default_out(stage), "pass --out, or set NLPTL_HOME to a writable directory")
        # Two runs started in the same second get different names: a name locked by another is skipped.
        n = 1
        while (lock := OutLock(out := default_out(stage, n))).acquire() is not None:
            n += 1
    run = Run(stage, out, lock, cfg, command)
    try:
        check_out(out, cfg.overwrite, from_path, resume=cfg.resuming)
        # "Nothing to resume" is an error, not a fresh start. The checkpoint is verified once, here: its
        # checksums cover every file, gigabytes for a large model.
        run.checkpoint = find_resume_checkpoint(out, cfg.resume_from) if cfg.resuming else None
        run.identity = run_identity(cfg, inputs)
        if run.checkpoint is not None:
            check_resume_identity(run.checkpoint, run.identity)
        preflight(cfg)
    except BaseException:
        lock.release()
        raise
    return run


def open_product(stage: str, out: str, overwrite: bool, source: str | Path, product: Product) -> Run:
    """The Run of export or merge: --out resolved, checked and locked (two merges into one --out would
    race); their files go in through rundir.StageWriter."""
    path = resolve_out(out)
    check_writable(path)
    lock = OutLock(path).take()
    try:
        check_out(path, overwrite, source, product=product)
    except BaseException:
        lock.release()
        raise
    return Run(stage, path, lock)


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
    accelerator = runtime.make_accelerator(cfg.precision, cfg.grad_accum,
                                           **tracking.accelerator_args(cfg.report_to, out))
    runtime.seed_everything(cfg.seed)
    return accelerator


def write_stage(run: Run, *, metrics: dict, lineage: dict, write: Callable[[object], dict] | None = None,
                accelerator=None, recorded: dict | None = None) -> dict:
    """The closing of a training stage. `write(writer)` puts the stage's own files (model, tokenizer, ...)
    into the staging directory and returns more keys for the record; then come metrics.csv (the run's
    log), nlptl-run.json (`recorded` metrics, by default `metrics` less output_dir), config.yaml and the
    model card, and one rename makes them --out. Then --push-to-hub. Returns the stage's result."""
    from nlptl.rundir import StageWriter, make_record

    config = to_dict(run.cfg)
    if accelerator is None or accelerator.is_main_process:
        with StageWriter(run.out) as w:
            extra = write(w) if write is not None else {}
            if run.runlog is not None:
                run.runlog.write(w.path)
            if recorded is None:
                recorded = {k: v for k, v in metrics.items() if k != "output_dir"}
            record = make_record(run.stage, config, recorded, lineage, run.command)
            w.commit({**record, **extra})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return {**metrics, **upload(run, accelerator), "config": config, "lineage": lineage}


def upload(run: Run, accelerator=None) -> dict:
    """--push-to-hub: upload the finished stage directory (main process); the result gains `hub_url`."""
    cfg = run.cfg
    if not cfg.push_to_hub or (accelerator is not None and not accelerator.is_main_process):
        return {}
    from nlptl import hub

    url = hub.push(run.out, cfg.push_to_hub, cfg.hub_private, run.stage)
    log.info("uploaded %s to %s", run.out, url)
    return {"hub_url": url}
