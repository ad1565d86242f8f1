"""Optimizer and learning-rate schedule, built in one place for every stage."""

from __future__ import annotations

import math

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight", "layernorm.weight")


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norms (as BERT and GPT-2 were trained)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, lr: float, weight_decay: float, fused: bool = False):
    import torch

    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def build_schedule(optimizer, total_steps: int, warmup_ratio: float, name: str = "linear"):
    """Warmup then linear decay to zero (transformers' `get_scheduler`)."""
    from transformers import get_scheduler

    warmup = math.ceil(total_steps * warmup_ratio)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
