"""Language-modelling data: texts -> tokenized documents -> packed blocks of `block_size` tokens.

Packing follows the transformers `run_mlm`/`run_clm` recipe (`group_texts`): documents are joined with
a separator and cut into equal blocks, so a block carries no padding. Each block is wrapped in the
model's own special tokens ([CLS] ... [SEP] for BERT, <s> ... for Llama, nothing for GPT-2).

The result is cached by `datasets` under a fingerprint we compute from the corpus content, the
tokenizer and the block size, so an unchanged corpus is tokenized once.
"""

from __future__ import annotations

import hashlib
import json

from nlptl.errors import UsageError

CACHE_VERSION = "lm-blocks-v1"


def special_layout(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer adds around one sequence, found by tokenizing a probe."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def separator_id(tokenizer) -> int | None:
    """Token between two documents in a packed stream: EOS for decoders, SEP for encoders."""
    for tok_id in (tokenizer.sep_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return tok_id
    return None


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    meta = json.dumps([type(tokenizer).__name__, special_layout(tokenizer), separator_id(tokenizer)])
    return hashlib.sha256((body + meta).encode()).hexdigest()[:16]


def pack_blocks(texts, tokenizer, block_size: int, corpus_key: str, num_proc: int | None = None,
                word_starts: bool = False):
    """`texts`: a Dataset with a `text` column. Returns a Dataset of `input_ids` blocks (int32), and with
    `word_starts` a parallel 0/1 column marking the first token of each word (for whole-word masking)."""
    import datasets

    prefix, suffix = special_layout(tokenizer)
    sep = separator_id(tokenizer)
    body = block_size - len(prefix) - len(suffix)
    if body < 8:
        raise UsageError(f"--block-size {block_size} is too small for this tokenizer; use at least {len(prefix) + len(suffix) + 8}")
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, corpus_key, tokenizer_fingerprint(tokenizer), block_size, word_starts]).encode()
    ).hexdigest()[:16]
    extra = [sep] if sep is not None else []

    def tokenize(batch):
        enc = tokenizer(batch["text"], add_special_tokens=False)
        out = {"ids": [x + extra for x in enc["input_ids"]]}
        if word_starts:
            starts = []
            for i in range(len(enc["input_ids"])):
                words = enc.word_ids(i)
                starts.append([int(j == 0 or w is None or w != words[j - 1]) for j, w in enumerate(words)] + [1] * len(extra))
            out["starts"] = starts
        return out

    def group(batch):
        stream = [t for doc in batch["ids"] for t in doc]
        n = len(stream) // body * body
        out = {"input_ids": [prefix + stream[i : i + body] + suffix for i in range(0, n, body)]}
        if word_starts:
            flags = [t for doc in batch["starts"] for t in doc]
            # A block opens with a new word even when it cuts one in two.
            out["word_starts"] = [[1] * len(prefix) + [1] + flags[i + 1 : i + body] + [1] * len(suffix)
                                  for i in range(0, n, body)]
        return out

    tokenized = texts.map(tokenize, batched=True, remove_columns=texts.column_names, num_proc=num_proc,
                          new_fingerprint=f"{key}-tok", desc="tokenizing")
    columns = {"input_ids": datasets.Sequence(datasets.Value("int32"))}
    if word_starts:
        columns["word_starts"] = datasets.Sequence(datasets.Value("int8"))
    blocks = tokenized.map(group, batched=True, batch_size=1000, remove_columns=tokenized.column_names,
                           features=datasets.Features(columns), num_proc=num_proc,
                           new_fingerprint=f"{key}-pack-{block_size}", desc="packing")
    return blocks


def split_blocks(blocks, validation_percentage: float, max_eval_blocks: int, seed: int = 0):
    """A fixed, seeded held-out share of the blocks (the same blocks whatever the training seed)."""
    n = len(blocks)
    n_eval = max(1, round(n * validation_percentage / 100))
    if n - n_eval < 1:
        raise UsageError(
            f"the corpus gives only {n} block(s); use a smaller --block-size, a smaller --validation-percentage or more text"
        )
    parts = blocks.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    held_out = parts["test"]
    if len(held_out) > max_eval_blocks:
        held_out = held_out.select(range(max_eval_blocks))
    return parts["train"], held_out
