"""Sharded training (FSDP2): each process holds a shard of the weights, gradients and optimizer state.

Two ways in, one loop (train.py): accelerate's FSDP plugin (`accelerate launch --use_fsdp --fsdp_version 2`,
on GPUs), whose `prepare` shards the model, or `--fsdp` under torchrun / accelerate launch, where nlptl
applies torch's `fully_shard` itself to each transformer block and then the whole model (what the CPU
tests run: accelerate leaves FSDP off on a CPU). Either way the parameters are DTensors, and that, not a
flag, is what this module goes by (`is_sharded`).

A sharded checkpoint is written by every process: torch distributed checkpoint (DCP) puts each one's
shard of the weights, optimizer state and kept best weights into the checkpoint directory (one
`__RANK_0.distcp` file per process and DCP's `.metadata`); the main process adds the schedule, the
random states, the loop's state and `sharding.json` (the number of processes), then publishes the
directory with its manifest at once, as for any checkpoint (checkpoint.save_training_state). Gathering
full weights needs every process too (rank 0 alone would wait forever: accelerate #3250, pytorch
#143536): the final model is gathered once, on every process, into plain tensors (`unshard`).

DeepSpeed is refused (`check_supported`): nothing here has run under it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from nlptl.errors import NlptlError, UsageError

SHARDING_FILE = "sharding.json"  # in a sharded checkpoint: {"world_size": N, "best": bool}
HOW = ("run FSDP version 2: `torchrun --nproc_per_node N -m nlptl ... --fsdp`, or accelerate launch with "
       "--use_fsdp --fsdp_version 2")


def _kind(accelerator) -> str:
    """accelerate's distributed type by name: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, ..."""
    return str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))


def check_supported(accelerator) -> None:
    """Refuse, in one line, the distributed set-ups nlptl has no tested path for."""
    kind = _kind(accelerator)
    if kind == "DEEPSPEED":
        raise UsageError(f"nlptl does not support DeepSpeed yet; use FSDP: {HOW}")
    if kind == "FSDP" and not getattr(accelerator, "is_fsdp2", False):
        raise UsageError(f"nlptl supports FSDP version 2 only (fully_shard); {HOW} (fsdp_version: 2 in an "
                         "accelerate config)")


def is_sharded(model) -> bool:
    """Whether `model`'s parameters are sharded DTensors (FSDP2), whoever sharded them."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def sharded_count(model) -> int:
    from torch.distributed.tensor import DTensor

    return sum(isinstance(p, DTensor) for p in model.parameters())


def transformer_blocks(model) -> list:
    """The repeated blocks of `model`: the members of each ModuleList whose members share one class
    (BERT's encoder.layer, GPT-2's h, Llama's layers), outermost first; a list inside a block is part of it."""
    import torch.nn as nn

    blocks, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside) or not isinstance(module, nn.ModuleList):
            continue
        members = list(module)
        if members and len({type(m) for m in members}) == 1 and any(True for _ in members[0].parameters()):
            blocks.extend(members)
            inside.append(f"{name}.")
    return blocks


def shard(accelerator, model, wanted: bool) -> str | None:
    """--fsdp: shard `model` (on its device) in place with FSDP2, each transformer block a unit of its own
    and the rest (embeddings, head: tied weights stay together) the root's. Returns what to say in the
    log, or None without --fsdp. Not under accelerate's FSDP plugin (its `prepare` shards the model),
    nor with one process (nothing to shard)."""
    if not wanted:
        return None
    if _kind(accelerator) == "FSDP":
        return "--fsdp: accelerate's FSDP plugin shards the model"
    if accelerator.num_processes == 1:
        return "--fsdp: one process, nothing to shard; training unsharded"
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return f"--fsdp: {len(blocks)} blocks and the model sharded over {accelerator.num_processes} processes"


def unshard(model) -> None:
    """Make a sharded `model` plain again, in place: every parameter gathered once into a full tensor (a
    collective: every process calls this), FSDP's hooks removed and its classes undone. What was
    trained can then be evaluated, saved (save_pretrained) and handed on like any model; wrappers
    around its modules (PEFT's) keep pointing at the same modules."""
    import torch.nn as nn
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in fsdp_modules:
        # The registered parameters are the sharded ones again (the root stays gathered after a forward).
        module.reshard()
    full: dict[int, nn.Parameter] = {}  # by identity, so that tied weights stay one parameter
    for module in model.modules():  # the same order on every process: the gathers pair up
        for name, param in list(module._parameters.items()):
            if isinstance(param, DTensor):
                if id(param) not in full:
                    full[id(param)] = nn.Parameter(param.full_tensor().detach().clone(),
                                                   requires_grad=param.requires_grad)
                module._parameters[name] = full[id(param)]
    for module in fsdp_modules:
        state = module._get_fsdp_state()
        for handle in {id(h): h for h in (state._pre_forward_hook_handle, state._post_forward_hook_handle)}.values():
            handle.remove()
        module.__class__ = next(c for c in module.__class__.__bases__ if c is not FSDPModule)
        for attribute in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            module.__dict__.pop(attribute, None)
    for module in model.modules():
        for attribute in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            module.__dict__.pop(attribute, None)


@contextlib.contextmanager
def gathered(model):
    """The sharded `model`'s weights gathered for an evaluation (every process), sharded again after it.
    An evaluation may call a part of the model directly (the LM inside the masked-LM wrapper, a probe's
    body), whose embeddings the root unit holds: FSDP's hooks would not gather them."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def local_copy(model) -> dict:
    """A copy of this process's shard of the weights (the best ones so far, with model selection)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_weights(model, state: dict) -> None:
    """Put `local_copy`'s shards back into the sharded `model`."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state)


def _raw(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def save_training(root: Path, step: int, model, optimizer, scheduler, rng: dict, state: dict, best_state: dict | None,
                  keep_last: int, accelerator) -> Path | None:
    """checkpoint.save_training for a sharded model, called by every process: each writes its shards
    (DCP) into a directory beside the checkpoints, then the main process moves them into the checkpoint
    with the rest and publishes it. Returns the checkpoint on the main process, None on the others."""
    import os

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from nlptl.checkpoint import save_training_state

    shards = root / f".step-{step:06d}.shards"
    if accelerator.is_main_process:
        for old in root.glob(".step-*.shards"):  # left by a run killed while saving
            shutil.rmtree(old)
        shards.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights, moments = get_state_dict(model, _raw(optimizer))
    content = {"model": weights, "optimizer": moments} | ({"best": best_state} if best_state is not None else {})
    dcp.save(content, checkpoint_id=shards)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    files = {f.name: (lambda p, f=f: os.replace(f, p)) for f in sorted(shards.iterdir())}
    files |= {
        "scheduler.pt": lambda p: torch.save(scheduler.state_dict(), p),
        "rng.pt": lambda p: torch.save(rng, p),
        SHARDING_FILE: lambda p: p.write_text(json.dumps({"world_size": accelerator.num_processes,
                                                           "best": best_state is not None}), encoding="utf-8"),
    }
    path = save_training_state(root, step, files, state, keep_last)
    shards.rmdir()
    return path


def check_layout(path: Path, model, processes: int) -> None:
    """Refuse, in one line, a checkpoint whose weights are laid out otherwise than this run's: sharded
    over another number of processes (or for an unsharded run), or unsharded for a sharded run."""
    info, sharded = sharding_info(path), is_sharded(model)
    if info is not None and (not sharded or info["world_size"] != processes):
        n = info["world_size"]
        raise NlptlError(f"{path} was written by {n} process(es) with sharded weights (FSDP); resume it with {n}, "
                         f"sharded (this run has {processes}{'' if sharded else ', unsharded'})")
    if info is None and sharded:
        raise NlptlError(f"{path} holds unsharded weights and this run shards them (FSDP); resume it unsharded, "
                         "with the processes that wrote it")


def sharding_info(path: Path) -> dict | None:
    """A sharded checkpoint's sharding.json, or None for an unsharded one."""
    f = Path(path) / SHARDING_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def load_training(path: Path, model, optimizer, scheduler) -> tuple[dict, dict, dict | None]:
    """checkpoint.load_training for a sharded model, called by every process (check_layout first)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    raw = _raw(optimizer)
    weights, moments = get_state_dict(model, raw)
    content = {"model": weights, "optimizer": moments}
    if sharding_info(path)["best"]:
        content["best"] = {k: v.detach().clone() for k, v in weights.items()}  # a place of the right shape to load into
    dcp.load(content, checkpoint_id=path)
    set_state_dict(model, raw, model_state_dict=content["model"], optim_state_dict=content["optimizer"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    return state, torch.load(path / "rng.pt", weights_only=False), content.get("best")
