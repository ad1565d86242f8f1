"""Device correctness: what runs where when an accelerator is used.

The masking transform draws from a CPU generator, so it must run on the loader's CPU batches, and only
its output may be copied to the device. On a CPU-only machine both are the same device, so the order of
events is what these tests check; the CUDA tests at the bottom run where a GPU is present (bench/gpu.py
runs the suite there)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nlptl.config import TrainConfig
from nlptl.data.masking import MaskingCollator
from nlptl.objective import Objective
from nlptl.runtime import make_accelerator
from nlptl.train import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Tokenizer:
    """What MaskingCollator reads from a tokenizer."""

    mask_token_id = 4
    all_special_ids = [0, 1, 2, 3, 4]

    def __len__(self):
        return 50


class Toy(torch.nn.Module):
    def __init__(self, events):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.events = events

    def forward(self, input_ids, labels):
        self.events.append(("forward", input_ids.device.type))
        hidden = self.emb(input_ids)
        return SimpleNamespace(loss=(hidden.mean(-1) * (labels != -100)).mean())


def blocks(n: int = 16, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 50, (length,), generator=g).tolist()} for _ in range(n)]


def test_masking_runs_on_cpu_batches_before_the_device_copy(monkeypatch):
    """Each step: the loader's CPU batch is masked, then copied to the device, then trained on. A loader
    that moves batches to the device before the masking (the CUDA crash: CPU special ids and generator
    against a GPU batch) shows up here as a copy before the mask."""
    import accelerate.data_loader
    import accelerate.utils

    events: list = []
    for module in (accelerate.data_loader, accelerate.utils):
        real = module.send_to_device

        def spy(tensor, device, *a, _real=real, **kw):
            events.append(("to_device", str(device)))
            return _real(tensor, device, *a, **kw)

        monkeypatch.setattr(module, "send_to_device", spy)
    collator = MaskingCollator(Tokenizer(), 0.3, seed=1)

    def transform(batch):
        events.append(("mask", batch["input_ids"].device.type))
        return collator.transform(batch)

    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, log_every=1, precision="fp32", max_steps=3, batch_size=4)
    accelerator = make_accelerator("fp32")
    train(accelerator, Toy(events), blocks(), cfg, Objective(collator.stack, transform=transform), description="test")
    steps = [e[0] for e in events]
    assert steps == ["mask", "to_device", "forward"] * 3, events
    assert all(device == "cpu" for kind, device in events if kind == "mask")
    assert all(device == accelerator.device.type for kind, device in events if kind == "forward")


def test_masks_do_not_depend_on_where_the_batch_is():
    """The same seed gives the same masks whatever the device of the ids (draws are made on the CPU)."""
    ids = torch.tensor([b["input_ids"] for b in blocks(8, 20)])
    a = MaskingCollator(Tokenizer(), 0.3, seed=7).transform({"input_ids": ids})
    b = MaskingCollator(Tokenizer(), 0.3, seed=7).transform({"input_ids": ids.clone()})
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert (a["labels"] != -100).any()


@cuda
def test_masking_on_a_cuda_batch_matches_the_cpu():
    ids = torch.tensor([b["input_ids"] for b in blocks(8, 20)])
    starts = torch.ones_like(ids)
    for whole_word in (False, True):
        batch = {"input_ids": ids, "word_starts": starts}
        on_cpu = MaskingCollator(Tokenizer(), 0.3, whole_word=whole_word, seed=7).transform(batch)
        on_gpu = MaskingCollator(Tokenizer(), 0.3, whole_word=whole_word, seed=7).transform(
            {k: v.cuda() for k, v in batch.items()})
        assert on_gpu["input_ids"].is_cuda and on_gpu["labels"].is_cuda
        assert torch.equal(on_cpu["input_ids"], on_gpu["input_ids"].cpu())
        assert torch.equal(on_cpu["labels"], on_gpu["labels"].cpu())


@cuda
def test_training_puts_model_and_batches_on_the_gpu():
    events: list = []
    collator = MaskingCollator(Tokenizer(), 0.3, seed=1)
    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, log_every=1, precision="bf16", max_steps=2, batch_size=4)
    model, result = train(make_accelerator("bf16"), Toy(events), blocks(), cfg,
                          Objective(collator.stack, transform=collator.transform), description="test")
    assert result.steps == 2
    assert {device for kind, device in events if kind == "forward"} == {"cuda"}


def test_the_run_states_its_global_batch_and_learning_rate(caplog):
    """Under torchrun/accelerate launch the global batch grows with the processes: the log says it."""
    import logging

    collator = MaskingCollator(Tokenizer(), 0.3, seed=1)
    cfg = TrainConfig(lr=3e-4, warmup_ratio=0.0, precision="fp32", max_steps=1, batch_size=4, grad_accum=2)
    with caplog.at_level(logging.INFO, logger="nlptl"):
        train(make_accelerator("fp32", 2), Toy([]), blocks(), cfg,
              Objective(collator.stack, transform=collator.transform), description="adapt")
    text = caplog.text
    assert "global batch 8 (4 per process x 1 process(es) x 2 accumulation)" in text, text
    assert "peak lr 0.0003" in text and "cpu, fp32" in text
