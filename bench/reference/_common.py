"""What the three reference scripts share: the pinned arguments and the one JSON line they print.

Only the knobs the speed comparison pins are arguments; everything else is the Trainer's default
(fused AdamW, linear schedule, no weight decay, grad-norm clipping at 1.0, no workers, seed 42).
"""

from __future__ import annotations

import argparse
import json
import sys


def parse(description: str, lr: float = 5e-5) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--train-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size (Trainer default 8)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--block-size", type=int, default=128, help="LM block size / max_seq_length")
    p.add_argument("--bf16", action="store_true", help="the Trainer's --bf16 (bf16 autocast, fp32 master weights)")
    return p.parse_args()


def training_args(a: argparse.Namespace):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=a.output_dir, per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
        max_steps=a.max_steps, seed=a.seed, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, a.max_steps), bf16=a.bf16,
    )


def pad_decoder(tokenizer, model) -> None:
    """Decoders without a padding token (GPT-2 style) pad with EOS, as users of run_glue do."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def finish(trainer, tokenizer, a: argparse.Namespace, **extra) -> None:
    """Train, save, print one JSON line on stdout (logs go to stderr)."""
    result = trainer.train()
    trainer.save_model(a.output_dir)
    tokenizer.save_pretrained(a.output_dir)
    m = result.metrics
    out = {"train_runtime": m["train_runtime"], "steps": result.global_step, "train_loss": m.get("train_loss"),
           "batch_size": a.batch_size, "optim": str(trainer.args.optim),
           "attn_implementation": trainer.model.config._attn_implementation, **extra}
    sys.stdout.write(json.dumps(out) + "\n")
