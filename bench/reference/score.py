#!/usr/bin/env python
"""One scorer for both sides of the comparison: plain transformers, no nlptl code.

    python bench/reference/score.py --kind mlm --data heldout.txt --block-size 128 DIR_A DIR_B
    python bench/reference/score.py --kind cls --data test.csv DIR_A DIR_B

LM (`mlm`, `clm`): the held-out file is tokenized once with the first model's tokenizer (every model
must have the same one), packed like `run_mlm`'s `group_texts` into the first `--max-blocks` blocks,
and for MLM masked ONCE with `DataCollatorForLanguageModeling` under a fixed seed: every model is
scored on the very same blocks and masked positions. Prints one JSON line: per model the mean loss per
predicted token and its perplexity. `cls`: accuracy and mean loss on a labelled CSV (`text`, `label`
as integers = class ids).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys


def lm_batches(tokenizer, path: str, block_size: int, max_blocks: int, kind: str, seed: int, batch_size: int = 16):
    import torch
    from transformers import DataCollatorForLanguageModeling

    stream: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                stream += tokenizer(line.rstrip("\n"))["input_ids"]
            if len(stream) >= block_size * max_blocks:
                break
    n = min(max_blocks, len(stream) // block_size)
    blocks = torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)
    torch.manual_seed(seed)
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15) if kind == "mlm" else None
    out = []
    for i in range(0, n, batch_size):
        chunk = blocks[i : i + batch_size]
        if collate is not None:
            b = collate([{"input_ids": row} for row in chunk])
            out.append((b["input_ids"], b["labels"]))
        else:
            out.append((chunk, chunk.clone()))
    return out


def score_lm(model, batches, kind: str, device) -> dict:
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, labels in batches:
            ids, labels = ids.to(device), labels.to(device)
            logits = model(input_ids=ids).logits.float()
            if kind == "clm":
                logits, labels = logits[:, :-1], labels[:, 1:]
            total += F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def score_cls(model, tokenizer, path: str, max_length: int, device) -> dict:
    import csv

    import torch

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            chunk = rows[i : i + 64]
            enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            labels = torch.tensor([int(r["label"]) for r in chunk], device=device)
            logits = model(**enc).logits.float()
            correct += int((logits.argmax(-1) == labels).sum())
            loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    return {"accuracy": correct / len(rows), "loss": loss / len(rows), "n": len(rows)}


def vocab_hash(tokenizer) -> str:
    """The vocabulary and special tokens (not the padding/truncation state a saved tokenizer carries)."""
    body = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    return hashlib.sha256(body.encode()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--kind", choices=("mlm", "clm", "cls"), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--block-size", type=int, default=128, help="LM block size / classifier max length")
    p.add_argument("--max-blocks", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    cls = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM, "cls": AutoModelForSequenceClassification}[a.kind]
    import torch

    # fp32 on the first GPU when there is one (scoring is short; the same numbers as on a CPU up to rounding).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(a.models[0])
    vocab = vocab_hash(tokenizer)
    batches = lm_batches(tokenizer, a.data, a.block_size, a.max_blocks, a.kind, a.seed) if a.kind != "cls" else None
    results = {}
    for path in a.models:
        tok = AutoTokenizer.from_pretrained(path)
        if vocab_hash(tok) != vocab:
            sys.exit(f"{path}: another tokenizer than {a.models[0]}; the scores would not be comparable")
        model = cls.from_pretrained(path, trust_remote_code=True).to(device)
        if a.kind == "cls" and tok.pad_token is None:  # a decoder classifier: pads with EOS (run_glue's choice)
            tok.pad_token = tok.eos_token
        results[path] = (score_lm(model, batches, a.kind, device) if batches is not None
                         else score_cls(model, tok, a.data, a.block_size, device))
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
