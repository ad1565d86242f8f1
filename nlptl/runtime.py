"""Devices, precision and seeding: the Accelerator a stage runs with, the device `predict` runs on, the
mixed precision that --precision auto means, and torch.compile. (The training loop moves batches to
the accelerator's device, and optim.py picks the fused AdamW by the parameters' device.)"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("nlptl")


def mixed_precision(precision: str) -> str:
    import torch

    if precision == "fp32":
        return "no"
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPUs: fp32. Even on a CPU with bf16 units (avx512_bf16 or AMX), bf16 autocast measured 4x slower
    # than fp32 on tiny models and only ~1.3x faster on MiniLM, and without those units it is ~70x slower
    # (docs/performance.md). --precision bf16 opts in.
    return "no"


def inference_device():
    """Where prediction runs: the first GPU (CUDA, XPU or Apple's MPS) when there is one, else the CPU.
    The same device accelerate would pick for a single process, without importing accelerate."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def worker_device(index: int):
    """The device of worker `index` of several (a rank of `nlptl predict` under torchrun, a process of
    `nlptl serve --workers N`): the GPUs in turn, worker i on cuda:(i % GPUs), so every visible GPU gets
    its share; without CUDA, inference_device() (the CPU: nothing changes)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", index % torch.cuda.device_count())
    return inference_device()


def pad_multiple() -> int | None:
    """Pad classifier batches to a multiple of 8 tokens on a GPU: tensor cores want it, and the
    number of distinct batch shapes (each one a recompilation under --compile) drops eightfold. On a
    CPU, padding is only extra work."""
    import torch

    return 8 if torch.cuda.is_available() else None


def make_accelerator(precision: str = "auto", grad_accum: int = 1, log_with=None, project_dir: str | None = None):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    # Keep torch from oversubscribing the cores when several processes share a CPU machine.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    mp = mixed_precision(precision)
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process and refuses a second Accelerator with another precision;
    # stages run one after another in one Python process (library use, tests) would fail. Each stage
    # builds its own Accelerator, so the previous stage's state can go.
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, mp):
        AcceleratorState._reset_state()
    import torch

    if torch.cuda.is_available():
        # What stays in fp32 under bf16 autocast (the loss, norms, fp32 runs) uses TF32 tensor cores:
        # the Trainer's --tf32, and PyTorch's own advice for Ampere and later.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or (
        torch.backends.mps.is_available())
    return Accelerator(
        # On a CPU-only machine accelerate must be told so: under torchrun it then joins the gloo
        # process group (MULTI_CPU) instead of running every process as a separate single one.
        cpu=not has_accelerator,
        mixed_precision=mp,
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
        log_with=log_with,
        project_dir=project_dir,
    )


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def quiet_libraries() -> None:
    """Our logs only: the libraries' warnings and progress bars would flood stderr."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    from nlptl import console

    # Reading a large corpus into Arrow takes minutes: on a terminal, `datasets`' own bars show it; in
    # logs they would be noise. (Tokenizing and packing has nlptl's own progress: data/lm.build_blocks.)
    if console.fancy() and not console.is_quiet():
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def compile_model(model) -> None:
    """`torch.compile` the model's forward in place (`nn.Module.compile`): parameter names, the
    state dict and saving are unchanged, so checkpoints and resume work as in eager mode. Batch shapes
    that vary (finetune's length-grouped batches, the number of masked positions in MLM) are marked
    dynamic after the first recompilation instead of compiling once per shape."""
    import torch
    from transformers import PreTrainedModel

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for module in model.modules():
        # transformers resolves the loss function on every forward and, for a model whose config names
        # no loss type, logs a warning there: a graph break in each compiled step. Resolve it once here.
        if isinstance(module, PreTrainedModel) and "_loss_function" not in vars(module):
            try:
                module.loss_function = module.loss_function
            except (AttributeError, KeyError):
                pass
    model.compile()
