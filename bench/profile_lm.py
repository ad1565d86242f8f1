#!/usr/bin/env python
"""Where a training step's time goes, nlptl's loop against the Trainer, in one process (torch.profiler).

    python bench/profile_lm.py --model /tmp/nlptl-perf/gpt-small-init --objective clm
    python bench/profile_lm.py --model MINILM --objective mlm

Both sides train the same freshly loaded model on the same random blocks (batch 8 x 128, lr 5e-5,
no warmup or weight decay) for --steps steps after one warm-up step; prints the top operators by self
CPU time of each side and the seconds per step. Run under `flock /tmp/nlptl-bench.lock`.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def blocks(vocab: int, n: int, size: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (n, size), generator=g).tolist()


def load(model_dir: str, objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    return cls.from_pretrained(model_dir)


def nlptl_side(model_dir: str, objective: str, data: list, steps: int, batch: int):
    from transformers import AutoTokenizer

    from nlptl.config import TrainConfig
    from nlptl.data.collate import lm_collators
    from nlptl.models import masked_only
    from nlptl.runtime import make_accelerator
    from nlptl.train import train

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load(model_dir, objective)
    collate, _ = lm_collators(tokenizer, objective, 0.15, 42)
    transform = None
    if objective == "mlm":
        transform, collate = collate.transform, collate.stack
        model = masked_only(model)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, lr=5e-5, warmup_ratio=0.0, weight_decay=0.0, save_every=0,
                      precision="fp32", log_every=steps)
    rows = [{"input_ids": b} for b in data]
    return lambda: train(make_accelerator("fp32"), model, rows, collate, cfg, description="nlptl",
                         batch_transform=transform)


def trainer_side(model_dir: str, objective: str, data: list, steps: int, batch: int, out: str):
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load(model_dir, objective)
    if objective == "mlm":
        ds = Dataset.from_dict({"input_ids": data})
        collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    else:
        ds = Dataset.from_dict({"input_ids": data, "labels": data})
        collate = default_data_collator
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, learning_rate=5e-5, max_steps=steps,
                             save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
    return trainer.train


def profile(name: str, fn, rows: int) -> float:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    t = time.perf_counter()
    with prof(activities=[ProfilerActivity.CPU]) as p:
        fn()
    seconds = time.perf_counter() - t
    print(f"\n=== {name}: {seconds:.2f} s (profiled, incl. one warm-up step) ===")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--objective", choices=("mlm", "clm"), required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rows", type=int, default=14)
    a = p.parse_args()
    from transformers import AutoConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    vocab = AutoConfig.from_pretrained(a.model).vocab_size
    data = blocks(vocab, a.batch * (a.steps + 1), 128)
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("nlptl", lambda: nlptl_side(a.model, a.objective, data, a.steps, a.batch)),
                            ("Trainer", lambda: trainer_side(a.model, a.objective, data, a.steps, a.batch, tmp))):
            fn = build()
            t = time.perf_counter()
            fn()
            print(f"{name}: unprofiled {a.steps} steps in {time.perf_counter() - t:.2f} s")
            profile(name, build(), a.rows)


if __name__ == "__main__":
    main()
