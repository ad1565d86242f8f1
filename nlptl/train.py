"""THE training loop, shared by every stage (pretrain, adapt, finetune).

Stages differ in their data, head and evaluation, not here. Written with accelerate's idioms
(`accumulate`, `backward`, `gather_for_metrics`) so the same code runs on a CPU, a GPU or many
processes (`torchrun` / `accelerate launch`). `train()` reads top to bottom; what happens in one
optimizer step, an evaluation and a checkpoint is in `_Loop`, whose `TrainState` is what a checkpoint
saves and a resumed run starts from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nlptl import sharding
from nlptl.config import TrainConfig
from nlptl.console import Progress
from nlptl.errors import Interrupted, NlptlError, UsageError
from nlptl.objective import Objective


@dataclass
class TrainResult:
    steps: int
    train_seconds: float  # the training loop alone, evaluations excluded
    train_tokens: int  # non-padding tokens seen, all processes
    n_train: int  # examples or blocks in the training set
    final_loss: float | None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # metrics of the kept checkpoint
    best_step: int | None = None
    device: str = "cpu"  # where the loop ran (cuda, cpu, ...)
    peak_memory_gib: float | None = None  # the accelerator's peak allocated memory (CUDA only)
    patience: int | None = None  # --patience: early stopping was on
    stopped_early: dict | None = None  # then where and why it stopped: {"step", "best_step", "reason"}

    def early_stop_metrics(self) -> dict:
        """With --patience, what a stage's metrics say of early stopping; nothing without it."""
        if not self.patience:
            return {}
        if self.stopped_early is None:
            return {"stopped_early": False}
        return {"stopped_early": True, "stopped_at_step": self.stopped_early["step"],
                "early_stop": self.stopped_early["reason"]}

    def device_metrics(self) -> dict:
        """What a stage's metrics say about the hardware it trained on."""
        out: dict = {"device": self.device}
        if self.peak_memory_gib is not None:
            out["peak_gpu_memory_gib"] = round(self.peak_memory_gib, 2)
        return out


@dataclass
class TrainState:
    """Where the loop is and what it has seen: saved with each checkpoint (trainer_state.json), and what a
    resumed run starts from. `tokens` and `running` are device tensors while training (reading them is a
    device sync), plain numbers in the checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done: int = 0  # batches of this epoch already trained on
    micro_step: int = 0  # accelerate's count of micro-batches (gradient accumulation)
    tokens: object = 0  # non-padding tokens seen by this process
    running: object = 0.0  # sum of the losses since the last logged step ...
    running_n: int = 0  # ... and how many
    history: list[dict] = field(default_factory=list)
    final_loss: float | None = None
    best_value: float | None = None  # the selected metric of the best evaluation
    best: dict | None = None
    best_step: int | None = None
    stale_evals: int = 0  # --patience: evaluations since the score last beat the best by --min-delta
    stopped_early: dict | None = None  # set when --patience ended the run (a resumed run stays stopped)
    total_steps: int = 0
    train_seconds: float = 0.0
    identity: dict | None = None  # the run's config and input hashes: a resumed run must share them

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["tokens"], out["running"] = int(_number(self.tokens)), float(_number(self.running))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Checkpoints:
    """A run's checkpoints: the directory --save-every and a stop signal write to, the checkpoint the run
    continues from (or None), the command that resumes it (said when it stops), and the run's identity
    (its config and input hashes: checkpoint.run_identity), which a resumed run must share."""

    path: Path | None  # None: a run that writes none
    resume_from: Path | None = None
    resume_hint: str = ""
    identity: dict | None = None


def _number(value) -> float | int:
    return value.item() if hasattr(value, "item") else value


def steps_per_epoch(cfg: TrainConfig, batches_per_epoch: int) -> int:
    return max(1, math.ceil(batches_per_epoch / cfg.grad_accum))


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch(cfg, batches_per_epoch)))


def train(accelerator, model, train_dataset, cfg: TrainConfig, objective: Objective, *, description: str,
          checkpoints: Checkpoints | None = None, runlog=None) -> tuple[object, TrainResult]:
    """Train `model` on `train_dataset` (a dataset, or a stream with --streaming) for `objective` (what a
    step computes, how the run is evaluated and selected) with the rates and schedule of `cfg`. Returns the
    unwrapped model (the best one where the objective selects) and what happened.

    `checkpoints`: where --save-every and a stop signal (Ctrl-C, SIGTERM) write, and the checkpoint to
    continue exactly (weights, optimizer, schedule, random states, data position). `runlog`: a
    tracking.RunLog that gets every row of the history (metrics.csv, --report-to trackers).
    """
    import torch

    from nlptl.optim import build_optimizer, build_schedule

    sharding.check_supported(accelerator)
    # What this run cannot do, said before anything is built.
    stream = train_dataset if isinstance(train_dataset, torch.utils.data.IterableDataset) else None
    if stream is not None:
        _check_stream(cfg, accelerator)
    _check_patience(cfg, objective)
    # The data order: its own generator, which also seeds the loader's workers (never the global RNG,
    # so a resumed run's dropout sees the same random stream as an uninterrupted one).
    generator = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(ids) for ids in train_dataset["input_ids"]] if objective.by_length else None
    loader = _loader(train_dataset, objective.collate, cfg, lengths, generator, pin=accelerator.device.type == "cuda")
    # --fsdp shards the model before the optimizer is built: FSDP2 replaces the parameters with DTensors.
    shard_note = sharding.shard(accelerator, model.to(accelerator.device), cfg.fsdp)
    # AdamW over layer groups: --lr at the top, divided by --discriminative-lr per group below; the head's own
    # rate where the config has one (finetune's head_lr, resolved by rates.resolve).
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.discriminative_lr,
                                head_lr=getattr(cfg, "head_lr", None))
    if cfg.compile:
        from nlptl.runtime import compile_model

        compile_model(model)
    # accelerate wraps what runs on several processes (DistributedDataParallel) and places it on the device.
    model, optimizer, loader = _prepare(accelerator, model, optimizer, loader, streamed=stream is not None,
                                        own_model=sharding.is_sharded(model))
    # The length of the run, in optimizer steps.
    steps = cfg.max_steps if stream is not None else total_steps(cfg, len(loader))
    # Stepped by hand once per optimizer update, so its length is exact whatever the number of
    # processes (accelerate's prepared scheduler would step once per process).
    scheduler = build_schedule(optimizer, steps, cfg.warmup_ratio, cfg.schedule, cfg.cut_frac, cfg.stlr_ratio)
    # Which layer groups stay frozen for a while (--gradual-unfreeze, --head-warmup), and when to evaluate.
    unfreezing = freezing(cfg, optimizer, steps, loader)
    eval_every = cfg.eval_every or default_eval_every(steps, objective.evaluations, unfreezing)
    progress = Progress(description, steps, cfg.log_every)
    progress.note(_setting(description, steps, cfg, accelerator))
    if shard_note:
        progress.note(shard_note)
    if sharding.is_sharded(model):  # what actually runs sharded, whoever asked for it
        progress.note(f"sharded: {sharding.sharded_count(model)} parameters as DTensor")
    checkpoints = checkpoints or Checkpoints(path=None)  # none: a learning curve's points, a range test
    loop = _Loop(accelerator, model, optimizer, scheduler, cfg, objective, steps=steps, progress=progress,
                 unfreezing=unfreezing, eval_every=eval_every, runlog=runlog, generator=generator, stream=stream,
                 checkpoints=checkpoints.path)
    # Continue where an interrupted run stopped, or check that the disk can hold this run's checkpoints.
    loop.state.identity = checkpoints.identity
    if checkpoints.resume_from is not None:
        loop.resume(checkpoints.resume_from)
    if checkpoints.path is not None:
        check_disk_space(checkpoints.path, accelerator.unwrap_model(model), cfg.keep_last if cfg.save_every else 1)
    stop = _StopFlag(checkpoints.resume_hint)
    model.train()
    loop.start_clock()
    # The loop: epochs of batches; one optimizer step per --grad-accum batches, then what is due after it.
    with stop:  # HUP, INT, TERM: a checkpoint at the next step boundary, or a bounded stop (_StopFlag)
        while loop.state.step < steps and not loop.stopped:
            for batch in loop.epoch_batches(loader):
                loop.state.batches_done += 1
                if not loop.train_step(batch):
                    continue  # a micro-batch of gradient accumulation
                if stop.boundary() is not None and loop.state.step < steps:
                    loop.save("interrupted: saved {path}")
                    raise Interrupted(f"interrupted at step {loop.state.step}; checkpoint saved. {stop.hint}".strip(),
                                      128 + stop.signal)
                if loop.checkpoint_due():
                    loop.save()
                if loop.state.step >= steps or loop.stopped:
                    break
            else:
                loop.state.epoch += 1
                loop.state.batches_done = 0
    return loop.finish(len(train_dataset) if stream is None else 0)


def freezing(cfg: TrainConfig, optimizer, steps: int, loader):
    """The hook that keeps the lower layer groups frozen for a while, or None: --gradual-unfreeze (one
    more group every epoch or --unfreeze-every steps), or the LM stages' --head-warmup (only a new head
    trains for that share of the steps; lm_stage sets it to 0 when the checkpoint had its head)."""
    from nlptl.optim import GradualUnfreezing, HeadWarmup

    if cfg.gradual_unfreeze:
        # (A stream's loader has no length: --streaming requires --unfreeze-every.)
        return GradualUnfreezing(optimizer, cfg.unfreeze_every or steps_per_epoch(cfg, len(loader)))
    warmup = round(getattr(cfg, "head_warmup", 0.0) * steps)
    return HeadWarmup(optimizer, warmup) if warmup else None


def default_eval_every(steps: int, default_evals: int, unfreezing) -> int | None:
    """Evaluations without --eval-every: `default_evals` evenly spaced ones; after a head warm-up, one at
    its end and every warm-up length after, so that the first scores the starting body with its trained
    head (adapt's probe can then keep the body as it was when adapting does not help)."""
    from nlptl.optim import HeadWarmup

    if not default_evals:
        return None
    if isinstance(unfreezing, HeadWarmup):
        return unfreezing.every
    return max(1, math.ceil(steps / default_evals))


def _prepare(accelerator, model, optimizer, loader, streamed: bool, own_model: bool = False):
    if own_model:
        # Sharded by --fsdp already: accelerate would wrap it again (DistributedDataParallel).
        if streamed:
            return model, accelerator.prepare(optimizer), loader
        optimizer, loader = accelerator.prepare(optimizer, loader, device_placement=[True, False])
        return model, optimizer, loader
    if streamed:
        # A stream's loader is not prepared: accelerate's reads one batch ahead, and the stream's position
        # saved at a step boundary must be that of the batches trained on.
        model, optimizer = accelerator.prepare(model, optimizer)
        return model, optimizer, loader
    # The loader's batches stay on the CPU: the batch transform (MLM masking, with its CPU generator)
    # runs on them there, then the loop copies them to the device. Masks are thus the same on every
    # device, and no CPU tensor (special ids, a generator) meets a GPU batch.
    return accelerator.prepare(model, optimizer, loader, device_placement=[True, True, False])


def _check_stream(cfg: TrainConfig, accelerator) -> None:
    """What a run on a stream (a corpus of unknown length, read as it goes) cannot do."""
    if not cfg.max_steps:
        raise UsageError("--streaming reads a corpus of unknown length: pass --max-steps N")
    if cfg.gradual_unfreeze and not cfg.unfreeze_every:
        raise UsageError("--gradual-unfreeze on a stream has no epochs to unfreeze by: pass --unfreeze-every N")


def _check_patience(cfg: TrainConfig, objective: Objective) -> None:
    """--patience counts evaluations of a selection score: a run without them cannot stop early."""
    scored = objective.evaluate is not None and objective.select is not None
    if cfg.patience and (not scored or not (cfg.eval_every or objective.evaluations)):
        raise UsageError("--patience counts evaluations without improvement, and this run has none; drop --patience")


def _setting(description: str, steps: int, cfg: TrainConfig, accelerator) -> str:
    """The numbers that decide the optimisation, stated once: under torchrun/accelerate launch the global
    batch grows with the processes while the learning rate stays as given."""
    processes = accelerator.num_processes
    return (f"{description}: {steps} steps, global batch {cfg.batch_size * processes * cfg.grad_accum} "
            f"({cfg.batch_size} per process x {processes} process(es) x {cfg.grad_accum} accumulation), "
            f"peak lr {cfg.lr:g}, {accelerator.device.type}, "
            f"{'fp32' if accelerator.mixed_precision == 'no' else accelerator.mixed_precision}")


def _loader(dataset, collate_fn, cfg: TrainConfig, lengths, generator, pin: bool):
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(dataset, IterableDataset):
        # Read in its own order; no worker, so nothing is read ahead. The generator: each epoch's loader
        # draws a seed from it, which must not come from the global RNG (dropout's stream).
        return DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate_fn, pin_memory=pin,
                          generator=generator)
    sampler = None
    if lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        # Random mega-batches of 50 batches, each sorted by length: padding shrinks, order stays random.
        sampler = LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator)
    # Compiled LM training drops an epoch's last, shorter batch: one batch shape, one graph (a partial
    # batch would recompile, then run a slower dynamic-shape graph). Blocks are reshuffled every epoch.
    drop_last = cfg.compile and lengths is None and len(dataset) > cfg.batch_size
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                      drop_last=drop_last, collate_fn=collate_fn, generator=generator, pin_memory=pin)


class _Loop:
    """One run of the loop: its state, and what one step, one evaluation and one checkpoint do to it."""

    def __init__(self, accelerator, model, optimizer, scheduler, cfg: TrainConfig, objective: Objective, *,
                 steps: int, progress: Progress, unfreezing, eval_every, runlog, generator, stream=None,
                 checkpoints=None):
        import torch

        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.cfg, self.objective, self.steps, self.progress = cfg, objective, steps, progress
        self.unfreezing, self.eval_every, self.runlog = unfreezing, eval_every, runlog
        self.random_source = objective.generator_owner  # its generator's state is checkpointed
        self.checkpoints, self.generator = checkpoints, generator
        self.stream = stream  # a BlockStream (--streaming): its position is saved with each checkpoint
        self.stopped = False
        from accelerate.utils import send_to_device

        self.send_to_device = send_to_device  # looked up once, not in every step
        device = accelerator.device
        self.state = TrainState(tokens=torch.zeros((), dtype=torch.long, device=device),
                                running=torch.zeros((), device=device), total_steps=steps)
        self.best_state: dict | None = None  # a CPU copy of the best weights (with `select`)
        self.epoch_sampler_state = generator.get_state()  # the sampler's state when this epoch began
        self.restored_rng: dict | None = None  # until the first batch of a resumed run
        self.start = self.eval_seconds = 0.0
        self.sharded = sharding.is_sharded(accelerator.unwrap_model(model))  # FSDP2: every process saves
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def resume(self, path) -> None:
        """Continue exactly where the checkpoint at `path` stopped."""
        from nlptl.checkpoint import load_training

        model = self.accelerator.unwrap_model(self.model)
        sharding.check_layout(path, model, self.accelerator.num_processes)
        load = sharding.load_training if sharding.is_sharded(model) else load_training
        state, rng, self.best_state = load(path, model, self.optimizer, self.scheduler)
        restored = TrainState.from_dict(state)
        restored.tokens = self.state.tokens + restored.tokens
        restored.running = self.state.running + restored.running
        if restored.step > self.steps:
            raise UsageError(f"--resume: {path} is at step {restored.step}, past the {self.steps} steps this run "
                             f"would train; raise --max-steps (or --epochs), or start over with --overwrite")
        restored.total_steps = self.steps
        if restored.identity and self.state.identity:
            from nlptl.checkpoint import identity_changes

            # Refused changes were caught before loading anything (stages/common.open_stage); what is
            # left (--max-steps, logging...) is recorded where it took effect.
            _, allowed = identity_changes(restored.identity, self.state.identity)
            if allowed:
                text = "; ".join(f"{k} {old} -> {new}" for k, (old, new) in allowed.items())
                restored.history.append({"step": restored.step, "resumed_with": text})
                self.progress.note(f"resumed with {text}")
        restored.identity = self.state.identity or restored.identity
        self.state = restored
        self.stopped = restored.stopped_early is not None
        if self.stopped:  # saved at the step --patience stopped at: the run is over, resuming is a no-op
            self.progress.note(f"{path} stopped early at step {restored.step} "
                               f"({restored.stopped_early['reason']}): nothing more to train")
        self.epoch_sampler_state = rng["epoch_sampler"]
        if self.stream is not None:  # "stream": one process's position, as checkpoints before issue 27 kept it
            streams = rng["streams"] if "streams" in rng else [rng["stream"]]
            self.stream.load_state_dict(streams[min(self.accelerator.process_index, len(streams) - 1)])
        self.accelerator.step = restored.micro_step
        per_process = rng["per_process"]
        if len(per_process) != self.accelerator.num_processes:
            raise NlptlError(f"{path} was written by {len(per_process)} process(es); resume it with "
                             f"{len(per_process)} (this run has {self.accelerator.num_processes})")
        self.restored_rng = per_process[self.accelerator.process_index]
        if self.runlog is not None:
            self.runlog.restore(restored.history)
        self.progress.note(f"resuming from {path} (step {restored.step} of {self.steps})")

    def start_clock(self) -> None:
        from nlptl.checkpoint import set_rng_states

        self.start = time.perf_counter()
        # So that train_seconds adds up across an interrupted run and its resumption.
        self.eval_seconds = -self.state.train_seconds
        if self.restored_rng is not None:
            set_rng_states(self.restored_rng, self.random_source)

    def elapsed(self) -> float:
        """Seconds of training so far, evaluations excluded."""
        return time.perf_counter() - self.start - self.eval_seconds

    def epoch_batches(self, loader):
        """This epoch's batches. After a resume, the interrupted epoch's order minus the batches it had
        done: the sampler skips them; nothing is loaded or run for them."""
        if self.stream is not None:  # a stream continues from its own saved position
            self.restored_rng = None
            return loader
        if self.restored_rng is not None and self.state.batches_done:
            self.generator.set_state(self.epoch_sampler_state)
            batches = self.accelerator.skip_first_batches(loader, self.state.batches_done)
        else:
            self.epoch_sampler_state = self.generator.get_state()
            batches, self.state.batches_done = loader, 0
        self.restored_rng = None
        return batches

    def train_step(self, batch) -> bool:
        """One micro-batch; True when it completed an optimizer step."""
        accelerator, state = self.accelerator, self.state
        objective = self.objective
        if objective.transform is not None:
            batch = objective.transform(batch)  # on the loader's CPU batch
        batch = self.send_to_device(batch, accelerator.device, non_blocking=True)
        with accelerator.accumulate(self.model):
            loss = objective.step_loss(self.model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.unfreezing is not None:
                self.unfreezing.update(state.step)
                self.unfreezing.drop_frozen_grads()
            if accelerator.sync_gradients and self.cfg.max_grad_norm:
                accelerator.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                            self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        mask = batch.get("attention_mask")
        state.tokens.add_(mask.sum() if mask is not None else batch["input_ids"].numel())
        state.running += loss.detach()
        state.running_n += 1
        if not accelerator.sync_gradients:
            return False
        self.scheduler.step()
        state.step += 1
        if objective.stop_when is not None and objective.stop_when(state.step, loss.detach()):
            self.stopped = True
            return True
        if state.step % self.cfg.log_every == 0 or state.step == self.steps:
            self.log_loss()
        else:
            self.progress.update(state.step, {})
        if objective.evaluate is not None and self.eval_every and (
                state.step % self.eval_every == 0 or state.step == self.steps):
            self.evaluate()
        return True

    def log_loss(self) -> None:
        """The mean loss since the last log line, with the learning rate and throughput."""
        import torch

        state = self.state
        # The rate --lr sets (every group follows one schedule): the first group is the head's, which
        # has its own rate with --head-lr (or after a contrastive stage), logged beside it.
        top, top_peak = self.scheduler.get_last_lr()[0], self.scheduler.base_lrs[0]
        lr = self.cfg.lr * top / top_peak
        own_head = self.scheduler.optimizer.param_groups[0].get("group_name") == "head" and top_peak != self.cfg.lr
        rates = {"lr": lr} | ({"head_lr": top} if own_head else {})
        mean_loss = (state.running / state.running_n).item()  # a device sync point: only every log_every steps
        state.running = torch.zeros((), device=self.accelerator.device)
        state.running_n = 0
        if not math.isfinite(mean_loss):
            self.progress.close()
            kept = self.checkpoints is not None and any(self.checkpoints.glob("step-*"))
            raise NlptlError(
                f"the training loss became {mean_loss} at step {state.step} (learning rate {lr:.3g}); "
                "lower --lr, raise --warmup-ratio or check the data"
                + (f"; the last good checkpoint is kept in {self.checkpoints}" if kept else "")
            )
        state.final_loss = mean_loss
        tokens_per_s = state.tokens.item() * self.accelerator.num_processes / max(self.elapsed(), 1e-9)
        self.record({"step": state.step, "loss": mean_loss, **rates, "tokens_per_s": tokens_per_s})
        self.progress.update(state.step, {"loss": mean_loss, "lr": lr, "tok/s": tokens_per_s})

    def record(self, row: dict) -> None:
        self.state.history.append(row)
        if self.runlog is not None:
            self.runlog.log(row)

    def evaluate(self) -> None:
        """Score the model (its time is not training time); with `select`, keep the best weights."""
        state, t = self.state, time.perf_counter()
        with sharding.gathered(self.model) if self.sharded else contextlib.nullcontext():
            metrics = self.objective.evaluate(self.model)
        self.model.train()
        self.eval_seconds += time.perf_counter() - t
        self.record({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        self.progress.note(f"{self.progress.description} step {state.step}: "
                           + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if self.objective.select is None:
            return
        (name, mode), previous = self.objective.select, state.best_value
        value = metrics[name]
        # "max_latest": a tie goes to the later checkpoint (adapt's probe: equal task features, more adaptation).
        better = {"max": value > (state.best_value or 0), "min": value < (state.best_value or 0),
                  "max_latest": value >= (state.best_value or 0)}[mode]
        if state.best_value is None or better:
            state.best_value, state.best, state.best_step = value, dict(metrics), state.step
            model = self.accelerator.unwrap_model(self.model)
            if self.sharded:  # this process's shards, where they are
                self.best_state = sharding.local_copy(model)
            else:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.cfg.patience:
            self.count_patience(value, previous, lower=mode == "min")

    def count_patience(self, value: float, previous: float | None, lower: bool) -> None:
        """--patience: count the evaluations that did not beat the best score before them by --min-delta
        (the best checkpoint is kept whatever the margin); at the limit, stop after this step."""
        state, cfg = self.state, self.cfg
        margin = cfg.min_delta
        improved = previous is None or (value < previous - margin if lower else value > previous + margin)
        state.stale_evals = 0 if improved else state.stale_evals + 1
        if state.stale_evals < cfg.patience or state.step >= self.steps:
            return
        reason = (f"no improvement of {self.objective.select[0]} beyond {margin:g} in {cfg.patience} evaluations "
                  f"(best {state.best_value:.4g} at step {state.best_step})")
        state.stopped_early = {"step": state.step, "best_step": state.best_step, "reason": reason}
        self.stopped = True
        self.record({"step": state.step, "early_stop": reason})
        self.progress.note(f"early stop at step {state.step}: {reason}")

    def checkpoint_due(self) -> bool:
        """--save-every: a checkpoint at this step (never at the last one: the stage writes its model)."""
        step, every = self.state.step, self.cfg.save_every
        return self.checkpoints is not None and bool(every) and step % every == 0 and step < self.steps

    def save(self, message: str | None = None) -> None:
        """A resumable checkpoint: weights, optimizer, schedule, every process's random states, TrainState."""
        from accelerate.utils import gather_object

        from nlptl.checkpoint import rng_states, save_training

        accelerator, state = self.accelerator, self.state
        state.micro_step, state.train_seconds = accelerator.step, self.elapsed()
        # Every process has its own random streams (dropout, masking): keep each one's, by rank.
        mine = [rng_states(self.random_source)]
        rng = {"epoch_sampler": self.epoch_sampler_state,
               "per_process": gather_object(mine) if accelerator.num_processes > 1 else mine}
        if self.stream is not None:  # each process reads its own shard: every position is kept, by rank
            mine = [self.stream.state_dict()]
            rng["streams"] = gather_object(mine) if accelerator.num_processes > 1 else mine
        model, path = accelerator.unwrap_model(self.model), None
        if self.sharded:  # every process writes its shards
            path = sharding.save_training(self.checkpoints, state.step, model, self.optimizer, self.scheduler, rng,
                                          state.to_dict(), self.best_state, self.cfg.keep_last, accelerator)
        elif accelerator.is_main_process:
            path = save_training(self.checkpoints, state.step, model, self.optimizer, self.scheduler, rng,
                                 state.to_dict(), self.best_state, self.cfg.keep_last)
        if path is not None:
            self.progress.note(message.format(path=path) if message else f"checkpoint: {path}")
        accelerator.wait_for_everyone()

    def finish(self, n_train: int) -> tuple[object, TrainResult]:
        """The unwrapped model (the best one with `select`) and what happened."""
        import torch

        state, accelerator = self.state, self.accelerator
        train_seconds = self.elapsed()
        on_cuda = accelerator.device.type == "cuda"
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**30 if on_cuda else None
        self.progress.close()
        if self.objective.evaluate is not None and self.objective.select is not None and self.best_state is None:
            self.evaluate()
        tokens = int(accelerator.reduce(state.tokens, reduction="sum").item())
        accelerator.wait_for_everyone()
        model = accelerator.unwrap_model(self.model)
        if self.best_state is not None and state.best_step != state.step:
            if self.sharded:
                sharding.load_weights(model, self.best_state)
            else:
                model.load_state_dict(self.best_state)
        if self.sharded:  # the full weights, gathered once on every process: a plain model from here on
            sharding.unshard(model)
        return model, TrainResult(steps=state.step, train_seconds=train_seconds, train_tokens=tokens, n_train=n_train,
                                  final_loss=state.final_loss, history=state.history, best=state.best,
                                  best_step=state.best_step, device=accelerator.device.type, peak_memory_gib=peak,
                                  patience=self.cfg.patience, stopped_early=state.stopped_early)


def check_disk_space(checkpoints, model, keep: int) -> None:
    """Fail before training, not at the first save, when the disk cannot hold the checkpoints:
    each holds the weights and AdamW's two moments (3 x fp32 parameters), plus the final model."""
    import shutil
    from pathlib import Path

    n_bytes = sum(p.numel() for p in model.parameters()) * 4
    need = n_bytes * (3 * (keep + 1) + 1)  # +1 checkpoint being written while `keep` exist, + the final model
    where = Path(checkpoints)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise NlptlError(
            f"not enough free disk at {where}: {free / 1e9:.2f} GB free, about {need / 1e9:.2f} GB needed for "
            f"checkpoints and the final model; free some space, pass another --out, or lower --keep-last"
        )


# A stop signal's exit code is 128 + its number, as a shell reports a process it killed: HUP 129, INT 130, TERM 143.
STOP_SIGNALS = ("SIGHUP", "SIGINT", "SIGTERM")
STOP_GRACE_S = 60.0  # how long a stop signal waits for a step boundary; NLPTL_STOP_GRACE overrides it
HARD_STOP_S = 10.0  # then how long the interpreter gets to unwind before the process exits regardless


class _StopFlag:
    """A stop signal (HUP: a closed terminal or ssh session; INT: Ctrl-C; TERM: a scheduler) sets a flag;
    the loop saves a checkpoint at the next step boundary and exits with the resume hint. Within bounded
    time, whatever the loop is doing: a second signal, or no step boundary within the grace (a stalled
    loader, a long evaluation), stops at once without a new checkpoint (the last one is kept)."""

    def __init__(self, resume_hint: str = ""):
        self.signal = None
        self.hint = resume_hint
        self.previous: dict = {}
        self.reached = threading.Event()  # the loop got to a step boundary: the watchdog stands down
        self.main = threading.main_thread()

    def install(self) -> None:
        if threading.current_thread() is not self.main:
            return
        for name in STOP_SIGNALS:
            if hasattr(signal, name):  # no SIGHUP on Windows
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handle)

    def boundary(self) -> int | None:
        """At a step boundary: the signal to stop for (the watchdog stands down), or None."""
        if self.signal is not None:
            self.reached.set()
        return self.signal

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
            threading.Thread(target=self._watch, name="nlptl-stop", daemon=True).start()
            return
        raise _StopNow(self._at_once(), 128 + self.signal)  # a second signal, or the grace ran out

    def _at_once(self) -> str:
        name = signal.Signals(self.signal).name
        return (f"stopped by {name} at once: no checkpoint was saved now, the last one (if any) is kept. "
                f"{self.hint}").strip()

    def _watch(self) -> None:
        import logging
        import os
        import sys

        name = signal.Signals(self.signal).name
        grace = _stop_grace()
        if name == "SIGHUP":
            _detach_from_terminal()
        log = logging.getLogger("nlptl")
        log.warning("%s: stopping at the next step boundary with a checkpoint (at most %g s); signal again to stop "
                    "at once", name, grace)
        if self.reached.wait(grace):
            return
        log.warning("%s: no step boundary within %g s; stopping without a checkpoint", name, grace)
        signal.pthread_kill(self.main.ident, self.signal)  # to the main thread: a blocked call there is interrupted
        if self.reached.wait(HARD_STOP_S):
            return
        # Still running: blocked where Python cannot interrupt it. The kernel releases --out's lock.
        try:
            print(f"error: {self._at_once()}", file=sys.stderr, flush=True)
        finally:
            os._exit(128 + self.signal)

    def uninstall(self) -> None:
        self.reached.set()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def __enter__(self) -> _StopFlag:
        self.install()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.uninstall()
        if isinstance(exc, _StopNow):
            raise Interrupted(str(exc), exc.exit_code) from None


class _StopNow(KeyboardInterrupt):
    """Stops the main thread at once. A KeyboardInterrupt, so that no `except Exception` on the way (a
    data reader's, a library's) swallows it; train() turns it into Interrupted (message, exit code)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _stop_grace() -> float:
    import os

    try:
        return max(0.0, float(os.environ.get("NLPTL_STOP_GRACE", STOP_GRACE_S)))
    except ValueError:
        return STOP_GRACE_S


def _detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone: writing to it fails (EIO). Output to it goes nowhere instead, so
    the checkpoint and the exit are not cut short by a failed write; a pipe or a file is kept."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)
