"""THE training loop, shared by every stage (pretrain, adapt, finetune).

Stages differ in their data, head and evaluation, not here. Written with accelerate's idioms
(`accumulate`, `backward`, `gather_for_metrics`) so the same code runs on a CPU, a GPU or many
processes (`torchrun` / `accelerate launch`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nlptl.config import TrainConfig
from nlptl.console import Progress
from nlptl.errors import NlptlError


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
) -> tuple[object, TrainResult]:
    """Train `model` on `train_dataset`; returns the unwrapped model (the best one when `select`
    names a metric and mode, e.g. ("accuracy", "max")) and what happened.

    `default_evals`: how many evenly spaced evaluations to run when `--eval-every` is not given.
    `lengths`: example lengths; batches then group similar lengths (less padding), in a random order.
    """
    import torch
    from torch.utils.data import DataLoader

    from nlptl.optim import GradualUnfreezing, build_optimizer, build_schedule

    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        # Random mega-batches of 50 batches, each sorted by length: padding shrinks, order stays random.
        sampler = LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator)
    loader = DataLoader(train_dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate_fn, generator=generator if sampler is None else None,
                        pin_memory=accelerator.device.type == "cuda")
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.discriminative_lr,
                                fused=accelerator.device.type == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps = total_steps(cfg, len(loader))
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    # The schedule is stepped by hand once per optimizer update, so its length is exact whatever the
    # number of processes (accelerate's prepared scheduler would step once per process).
    scheduler = build_schedule(optimizer, steps, cfg.warmup_ratio, cfg.schedule, cfg.cut_frac, cfg.stlr_ratio)
    unfreezing = GradualUnfreezing(optimizer, cfg.unfreeze_every or steps_per_epoch) if cfg.gradual_unfreeze else None
    eval_every = cfg.eval_every or (max(1, math.ceil(steps / default_evals)) if default_evals else None)

    progress = Progress(description, steps, cfg.log_every)
    result = TrainResult(steps=0, train_seconds=0.0, train_tokens=0, n_train=len(train_dataset), final_loss=None)
    best_value, best_state = None, None
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    running, running_n = torch.zeros((), device=accelerator.device), 0
    step, eval_seconds = 0, 0.0

    def run_eval() -> None:
        nonlocal best_value, best_state, eval_seconds
        t = time.perf_counter()
        metrics = evaluate_fn(model)
        model.train()
        eval_seconds += time.perf_counter() - t
        result.history.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        progress.note(f"{description} step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if select is not None:
            value = metrics[select[0]]
            better = best_value is None or (value > best_value if select[1] == "max" else value < best_value)
            if better:
                best_value = value
                result.best, result.best_step = dict(metrics), step
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}

    model.train()
    start = time.perf_counter()
    while step < steps:
        for batch in loader:
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
            tokens += mask.sum() if mask is not None else batch["input_ids"].numel()
            running += loss.detach()
            running_n += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % cfg.log_every == 0 or step == steps:
                mean_loss = (running / running_n).item()  # a device sync point: only every log_every steps
                running.zero_()
                running_n = 0
                if not math.isfinite(mean_loss):
                    progress.close()
                    raise NlptlError(
                        f"the training loss became {mean_loss} at step {step} (learning rate {scheduler.get_last_lr()[0]:.3g}); "
                        "lower --lr, raise --warmup-ratio or check the data"
                    )
                result.final_loss = mean_loss
                elapsed = time.perf_counter() - start - eval_seconds
                result.history.append({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                       "tokens_per_s": tokens.item() * accelerator.num_processes / max(elapsed, 1e-9)})
                progress.update(step, {"loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                       "tok/s": result.history[-1]["tokens_per_s"]})
            else:
                progress.update(step, {})
            if evaluate_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
                run_eval()
            if step >= steps:
                break
    result.train_seconds = time.perf_counter() - start - eval_seconds
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
