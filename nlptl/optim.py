"""Optimizer and learning-rate schedules, built in one place for every stage, with ULMFiT's techniques:

- layer groups from the model's own structure: embeddings, each transformer block, head;
- discriminative learning rates: each group's rate is the rate of the group above divided by a factor
  (ULMFiT: 2.6);
- schedules: linear (warmup + linear decay), cosine, constant, slanted triangular (ULMFiT), one-cycle;
- gradual unfreezing: only the head trains at first; one more group from the top every epoch (or every
  N steps).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

log = logging.getLogger("nlptl")

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight", "layernorm.weight")
EMBEDDING_HINTS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings", "shared")


def _blocks(model):
    """The ModuleList of repeated transformer blocks: the longest ModuleList of same-typed modules."""
    import torch.nn as nn

    best_name, best = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best_name, best = name, module
    return best_name, best


def layer_groups(model) -> tuple[list[str], list[list[tuple[str, object]]]]:
    """(names, groups) bottom to top: embeddings, block 0 .. block N-1, head (everything above the
    blocks: final norm, pooler, classifier or LM head). Parameters shared between modules (tied LM
    heads) count once, in the lowest group. For architectures without a recognisable block list the
    fallback is two groups: body and head."""
    params = [(n, p) for n, p in model.named_parameters()]
    blocks_name, blocks = _blocks(model)
    if blocks is None or len(blocks) < 2:
        log.info("layer groups: no list of transformer blocks found in %s; using two groups (body, head)",
                 type(model).__name__)
        head_words = ("classifier", "score", "lm_head", "cls.", "pooler", "pre_classifier", "head")
        head = [(n, p) for n, p in params if any(w in n for w in head_words)]
        body = [(n, p) for n, p in params if not any(w in n for w in head_words)]
        return ["body", "head"], [body, head]
    prefix = blocks_name + "."
    groups: list[list[tuple[str, object]]] = [[] for _ in range(len(blocks) + 2)]
    for n, p in params:
        if n.startswith(prefix):
            index = int(n[len(prefix):].split(".", 1)[0])
            groups[1 + index].append((n, p))
        elif any(h in n for h in EMBEDDING_HINTS) and "lm_head" not in n:
            groups[0].append((n, p))
        else:
            groups[-1].append((n, p))
    names = ["embeddings"] + [f"block {i}" for i in range(len(blocks))] + ["head"]
    return names, groups


def param_groups(model, lr: float, weight_decay: float, discriminative_lr: float = 1.0,
                 head_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: per layer group (rate lr / factor**depth from the top), each split into
    weight decay on matrices and none on biases and norms (as BERT and GPT-2 were trained). `head_lr`:
    the top group's own rate (a new classifier head learns from scratch while the body only moves a
    little; SetFit's head trains at 1e-2, its body at 2e-5); the body's rates stay those of `lr`."""
    names, groups = layer_groups(model)
    out = []
    top = len(groups) - 1
    for depth_from_top, (name, group) in enumerate(zip(reversed(names), reversed(groups), strict=True)):
        group_lr = lr / (discriminative_lr ** depth_from_top)
        if depth_from_top == 0 and head_lr is not None:
            group_lr = head_lr
        decay = [p for n, p in group if p.requires_grad and not (p.ndim < 2 or any(k in n for k in NO_DECAY))]
        no_decay = [p for n, p in group if p.requires_grad and (p.ndim < 2 or any(k in n for k in NO_DECAY))]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                out.append({"params": params, "weight_decay": wd, "lr": group_lr, "layer_group": top - depth_from_top,
                            "group_name": name})
    return out


def build_optimizer(model, lr: float, weight_decay: float, discriminative_lr: float = 1.0, fused: bool | None = None,
                    head_lr: float | None = None):
    """AdamW over `param_groups`. `fused` (default: where every parameter is on a CPU or CUDA device)
    runs one kernel over all tensors: on a 2-core CPU it measured ~0.05 s per update of a 28M-parameter
    GPT against ~0.35 s for the per-tensor loop, about 12% of a training step (docs/performance.md; the
    Trainer's default optimizer, adamw_torch_fused, does the same)."""
    import torch

    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in model.parameters())
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, discriminative_lr, head_lr),
                             lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def schedule_factor(name: str, total: int, warmup_ratio: float = 0.0, cut_frac: float = 0.1,
                    ratio: float = 32.0) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at step t (0-based count of updates done); `ratio`: stlr's."""
    warmup = math.ceil(total * warmup_ratio)

    def warm(t: int) -> float | None:
        return (t + 1) / (warmup + 1) if t < warmup else None

    if name == "linear":
        return lambda t: warm(t) or max(0.0, (total - t) / max(1, total - warmup))
    if name == "cosine":
        return lambda t: warm(t) or 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, total - warmup))))
    if name == "constant":
        return lambda t: warm(t) or 1.0
    if name == "stlr":
        # Howard & Ruder 2018, eq. 3: a short linear increase over cut_frac of the steps, then a long
        # linear decay; the lowest rate is 1/ratio of the peak.
        cut = max(1, math.floor(total * cut_frac))

        def stlr(t: int) -> float:
            p = t / cut if t < cut else 1 - (t - cut) / max(1, total - cut)
            return (1 + max(0.0, p) * (ratio - 1)) / ratio

        return stlr
    if name == "one-cycle":
        # fastai's fit_one_cycle: cosine from lr/25 up to lr over 25% of the steps, then cosine down to lr/25e4.
        up = max(1, math.floor(total * 0.25))
        start, end = 1 / 25, 1 / 25e4

        def one_cycle(t: int) -> float:
            if t < up:
                return start + (1 - start) * (1 - math.cos(math.pi * t / up)) / 2
            frac = min(1.0, (t - up) / max(1, total - up))
            return end + (1 - end) * (1 + math.cos(math.pi * frac)) / 2

        return one_cycle
    if name == "range-test":
        # The learning-rate range test (nlptl/lr_find.py): the peak is the highest rate tried, and the
        # rate grows exponentially from the lowest to it over the steps (not a user's choice; its span
        # is the test's own, not stlr's --stlr-ratio).
        from nlptl.lr_find import END_LR, START_LR

        span = END_LR / START_LR
        return lambda t: span ** (min(t, total - 1) / max(1, total - 1) - 1)
    raise ValueError(f"unknown schedule {name}")


def build_schedule(optimizer, total_steps: int, warmup_ratio: float, name: str = "linear", cut_frac: float = 0.1,
                   ratio: float = 32.0):
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, schedule_factor(name, total_steps, warmup_ratio, cut_frac, ratio))


class GradualUnfreezing:
    """ULMFiT's gradual unfreezing as a small hook of the training loop: the top `k` layer groups of
    the optimizer train, the rest are frozen; `k` starts at 1 (the head) and grows by one every
    `every` steps.

    Frozen groups keep `requires_grad` (so multi-process gradient synchronisation sees the same
    parameters on every process); their gradients are dropped before clipping and the optimizer
    step, so AdamW leaves their weights and moments untouched, exactly as if they had no gradient.
    """

    def __init__(self, optimizer, every: int):
        self.optimizer = optimizer
        self.every = max(1, every)
        self.n_groups = 1 + max(g.get("layer_group", 0) for g in optimizer.param_groups)
        self.trainable_from = self.n_groups - 1  # lowest trainable layer group

    def update(self, step: int) -> None:
        """Called before the update of optimizer step `step` (0-based)."""
        self.trainable_from = max(0, self.n_groups - 1 - step // self.every)

    def drop_frozen_grads(self) -> None:
        for g in self.optimizer.param_groups:
            if g.get("layer_group", 0) < self.trainable_from:
                for p in g["params"]:
                    p.grad = None


class HeadWarmup(GradualUnfreezing):
    """adapt's warm-up of a new LM head: for the first `steps` optimizer steps only the top layer group
    (the head) trains, then every group does. A head added at random to a pretrained body (a bare
    encoder gets a masked-LM head) sends large, meaningless gradients into the body at first; ULMFiT's
    gradual unfreezing, in two stages, keeps them out until the head has learned something."""

    def __init__(self, optimizer, steps: int):
        super().__init__(optimizer, every=steps)

    def update(self, step: int) -> None:
        self.trainable_from = self.n_groups - 1 if step < self.every else 0

