"""THE training loop, shared by every stage (pretrain, adapt, finetune).

Stages differ in their data, head and evaluation, not here. Written with accelerate's idioms
(`accumulate`, `backward`, `gather_for_metrics`) so the same code runs on a CPU, a GPU or many
processes (`torchrun` / `accelerate launch`).
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nlptl.config import TrainConfig
from nlptl.console import Progress
from nlptl.errors import Interrupted, NlptlError


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

    def device_metrics(self) -> dict:
        """What a stage's metrics say about the hardware it trained on."""
        out: dict = {"device": self.device}
        if self.peak_memory_gib is not None:
            out["peak_gpu_memory_gib"] = round(self.peak_memory_gib, 2)
        return out


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def train(
    accelerator,
    model,
    train_dataset,
    collate_fn: Callable,
    cfg: TrainConfig,
    *,
    description: str,
    evaluate_fn: Callable[[object], dict] | None = None,
    select: tuple[str, str] | None = None,
    default_evals: int = 0,
    lengths: list[int] | None = None,
    checkpoints=None,
    resume_from=None,
    resume_hint: str = "",
    batch_transform: Callable[[dict], dict] | None = None,
    runlog=None,
) -> tuple[object, TrainResult]:
    """Train `model` on `train_dataset`; returns the unwrapped model (the best one when `select`
    names a metric and mode, e.g. ("accuracy", "max")) and what happened.

    `default_evals`: how many evenly spaced evaluations to run when `--eval-every` is not given.
    `lengths`: example lengths; batches then group similar lengths (less padding), in a random order.
    `checkpoints`: directory for periodic checkpoints (`--save-every`) and the one Ctrl-C/SIGTERM
    writes; `resume_from`: a checkpoint to continue from exactly (model, optimizer, schedule, RNG
    states, data position: no batch is replayed). `batch_transform`: applied to each batch in the loop
    (MLM masking), so that its random state at a step boundary is exact. `runlog`: a tracking.RunLog
    that gets every row of the history (metrics.csv, --report-to trackers).
    """
    import torch
    from accelerate.utils import send_to_device
    from torch.utils.data import DataLoader

    from nlptl.optim import GradualUnfreezing, build_optimizer, build_schedule

    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        # Random mega-batches of 50 batches, each sorted by length: padding shrinks, order stays random.
        sampler = LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator)
    # Compiled LM training drops an epoch's last, shorter batch: one batch shape, one graph (a partial
    # batch would recompile, then run a slower dynamic-shape graph). Blocks are reshuffled every epoch.
    drop_last = cfg.compile and lengths is None and len(train_dataset) > cfg.batch_size
    loader = DataLoader(train_dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=drop_last,
                        # The loader draws its worker seed from `generator` too, never from the global RNG,
                        # so a resumed run's dropout sees the same random stream as an uninterrupted one.
                        collate_fn=collate_fn, generator=generator,
                        pin_memory=accelerator.device.type == "cuda")
    optimizer = build_optimizer(model.to(accelerator.device), cfg.lr, cfg.weight_decay, cfg.discriminative_lr)
    if cfg.compile:
        from nlptl.runtime import compile_model

        compile_model(model)
    # The loader's batches stay on the CPU: the batch transform (MLM masking, with its CPU generator)
    # runs on them there, then the loop copies them to the device. Masks are thus the same on every
    # device, and no CPU tensor (special ids, a generator) meets a GPU batch.
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader, device_placement=[True, True, False])
    steps = total_steps(cfg, len(loader))
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    # The schedule is stepped by hand once per optimizer update, so its length is exact whatever the
    # number of processes (accelerate's prepared scheduler would step once per process).
    scheduler = build_schedule(optimizer, steps, cfg.warmup_ratio, cfg.schedule, cfg.cut_frac, cfg.stlr_ratio)
    unfreezing = GradualUnfreezing(optimizer, cfg.unfreeze_every or steps_per_epoch) if cfg.gradual_unfreeze else None
    eval_every = cfg.eval_every or (max(1, math.ceil(steps / default_evals)) if default_evals else None)

    progress = Progress(description, steps, cfg.log_every)
    # The numbers that decide the optimisation, stated once: under torchrun/accelerate launch the global
    # batch grows with the processes while the learning rate stays as given.
    progress.note(f"{description}: {steps} steps, global batch {cfg.batch_size * accelerator.num_processes * cfg.grad_accum} "
                  f"({cfg.batch_size} per process x {accelerator.num_processes} process(es) x {cfg.grad_accum} "
                  f"accumulation), peak lr {cfg.lr:g}, {accelerator.device.type}, "
                  f"{'fp32' if accelerator.mixed_precision == 'no' else accelerator.mixed_precision}")
    result = TrainResult(steps=0, train_seconds=0.0, train_tokens=0, n_train=len(train_dataset), final_loss=None,
                         device=accelerator.device.type)
    on_cuda = accelerator.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    best_value, best_state = None, None
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    running, running_n = torch.zeros((), device=accelerator.device), 0
    step, eval_seconds = 0, 0.0
    epoch, batches_done, epoch_sampler_state = 0, 0, generator.get_state()
    restored = None
    if resume_from is not None:
        restored = _load_state(resume_from, accelerator, model, optimizer, scheduler)
        st = restored["state"]
        step, epoch, batches_done = st["step"], st["epoch"], st["batches_done"]
        epoch_sampler_state = restored["rng"]["epoch_sampler"]
        tokens += st["tokens"]
        running += st["running"]
        running_n = st["running_n"]
        result.history = st["history"]
        result.final_loss = st.get("final_loss")
        best_value, result.best, result.best_step = st["best_value"], st["best"], st["best_step"]
        best_state = restored.get("best_state")
        eval_seconds = -st.get("train_seconds", 0.0)  # so that train_seconds adds up across the two runs
        accelerator.step = st["micro_step"]
        if runlog is not None:
            runlog.restore(result.history)
        progress.note(f"resuming from {resume_from} (step {step} of {steps})")

    def run_eval() -> None:
        nonlocal best_value, best_state, eval_seconds
        t = time.perf_counter()
        metrics = evaluate_fn(model)
        model.train()
        eval_seconds += time.perf_counter() - t
        result.history.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        if runlog is not None:
            runlog.log(result.history[-1])
        progress.note(f"{description} step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if select is not None:
            value = metrics[select[0]]
            better = best_value is None or (value > best_value if select[1] == "max" else value < best_value)
            if better:
                best_value = value
                result.best, result.best_step = dict(metrics), step
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}

    def train_step(batch) -> bool:
        """One micro-batch; True when it completed an optimizer step."""
        nonlocal step, running, running_n
        if batch_transform is not None:
            batch = batch_transform(batch)
        batch = send_to_device(batch, accelerator.device, non_blocking=True)
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and unfreezing is not None:
                unfreezing.update(step)
                unfreezing.drop_frozen_grads()
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        mask = batch.get("attention_mask")
        tokens.add_(mask.sum() if mask is not None else batch["input_ids"].numel())
        running += loss.detach()
        running_n += 1
        if not accelerator.sync_gradients:
            return False
        scheduler.step()
        step += 1
        if step % cfg.log_every == 0 or step == steps:
            mean_loss = (running / running_n).item()  # a device sync point: only every log_every steps
            running = torch.zeros((), device=accelerator.device)
            running_n = 0
            if not math.isfinite(mean_loss):
                progress.close()
                raise NlptlError(
                    f"the training loss became {mean_loss} at step {step} (learning rate {scheduler.get_last_lr()[0]:.3g}); "
                    "lower --lr, raise --warmup-ratio or check the data"
                    + ("; the last good checkpoint is kept in " + str(checkpoints) if checkpoints is not None
                       and any(checkpoints.glob("step-*")) else "")
                )
            result.final_loss = mean_loss
            elapsed = time.perf_counter() - start - eval_seconds
            result.history.append({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                   "tokens_per_s": tokens.item() * accelerator.num_processes / max(elapsed, 1e-9)})
            if runlog is not None:
                runlog.log(result.history[-1])
            progress.update(step, {"loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                   "tok/s": result.history[-1]["tokens_per_s"]})
        else:
            progress.update(step, {})
        if evaluate_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
            run_eval()
        return True

    def save(message: str | None = None) -> None:
        state = {"step": step, "epoch": epoch, "batches_done": batches_done, "micro_step": accelerator.step,
                 "tokens": int(tokens.item()), "running": float(running.item()), "running_n": running_n,
                 "history": result.history, "final_loss": result.final_loss, "best_value": best_value,
                 "best": result.best, "best_step": result.best_step, "total_steps": steps,
                 "train_seconds": time.perf_counter() - start - eval_seconds,
                 "unfreezing": unfreezing.state_dict() if unfreezing else None}
        from accelerate.utils import gather_object

        # Every process has its own random streams (dropout, masking): keep each one's, by rank.
        rng = {"epoch_sampler": epoch_sampler_state,
               "per_process": gather_object([_rng_states(random_source)]) if accelerator.num_processes > 1
               else [_rng_states(random_source)]}
        if accelerator.is_main_process:
            path = _save_state(checkpoints, step, accelerator.unwrap_model(model), optimizer, scheduler, rng, state,
                               best_state, cfg.keep_last)
            progress.note(message.format(path=path) if message else f"checkpoint: {path}")
        accelerator.wait_for_everyone()

    if checkpoints is not None:
        check_disk_space(checkpoints, accelerator.unwrap_model(model), cfg.keep_last if cfg.save_every else 1)
    # Whatever draws random numbers per batch (a masking transform, else the collator) is checkpointed.
    random_source = getattr(batch_transform, "__self__", batch_transform) or collate_fn
    stop = _StopFlag()
    model.train()
    start = time.perf_counter()
    if restored is not None:
        per_process = restored["rng"]["per_process"]
        if len(per_process) != accelerator.num_processes:
            raise NlptlError(f"{resume_from} was written by {len(per_process)} process(es); resume it with "
                             f"{len(per_process)} (this run has {accelerator.num_processes})")
        _set_rng_states(per_process[accelerator.process_index], random_source)
    try:
        stop.install()
        while step < steps:
            if restored is not None and batches_done:
                # The interrupted run's epoch order, minus the batches it had done: the sampler skips
                # them; nothing is loaded or run for them.
                generator.set_state(epoch_sampler_state)
                epoch_batches = accelerator.skip_first_batches(loader, batches_done)
            else:
                epoch_sampler_state = generator.get_state()
                epoch_batches, batches_done = loader, 0
            restored = None
            for batch in epoch_batches:
                batches_done += 1
                if not train_step(batch):
                    continue
                if stop.signal is not None and step < steps:
                    save("interrupted: saved {path}")
                    raise Interrupted(f"interrupted at step {step}; checkpoint saved. {resume_hint}".strip(),
                                      130 if stop.signal == signal.SIGINT else 143)
                if checkpoints is not None and cfg.save_every and step % cfg.save_every == 0 and step < steps:
                    save()
                if step >= steps:
                    break
            else:
                epoch += 1
                batches_done = 0
    finally:
        stop.uninstall()
    result.train_seconds = time.perf_counter() - start - eval_seconds
    if on_cuda:
        result.peak_memory_gib = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    progress.close()
    if evaluate_fn is not None and select is not None and best_state is None:
        run_eval()
    result.steps = step
    result.train_tokens = int(accelerator.reduce(tokens, reduction="sum").item())
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None and result.best_step != step:
        unwrapped.load_state_dict(best_state)
    return unwrapped, result


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


class _StopFlag:
    """Ctrl-C and SIGTERM only set a flag; the loop saves a checkpoint at the next step boundary."""

    def __init__(self):
        self.signal = None
        self.previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def _rng_states(collate_fn) -> dict:
    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(collate_fn, "generator", None)
    if gen is not None:
        states["collator"] = gen.get_state()
    return states


def _set_rng_states(states: dict, collate_fn) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "collator" in states and getattr(collate_fn, "generator", None) is not None:
        collate_fn.generator.set_state(states["collator"])


def _save_state(root, step, model, optimizer, scheduler, rng, state, best_state, keep_last):
    import torch
    from safetensors.torch import save_file, save_model

    from nlptl.checkpoint import save_training_state

    files = {
        "model.safetensors": lambda p: save_model(model, str(p)),
        "optimizer.pt": lambda p: torch.save(optimizer.state_dict(), p),
        "scheduler.pt": lambda p: torch.save(scheduler.state_dict(), p),
        "rng.pt": lambda p: torch.save(rng, p),
    }
    if best_state is not None:
        files["best.safetensors"] = lambda p: save_file({k: v.contiguous() for k, v in best_state.items()}, str(p))
    return save_training_state(root, step, files, state, keep_last)


def _load_state(path, accelerator, model, optimizer, scheduler) -> dict:
    import json

    import torch
    from safetensors.torch import load_file, load_model

    load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"))
    # Our own files, verified against the manifest's checksums before we get here.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    out = {"state": json.loads((path / "trainer_state.json").read_text()),
           "rng": torch.load(path / "rng.pt", weights_only=False)}
    if (path / "best.safetensors").is_file():
        out["best_state"] = load_file(str(path / "best.safetensors"))
    return out
