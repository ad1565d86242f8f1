"""Language-modelling data: texts -> tokenized documents -> packed blocks of `block_size` tokens.

Packing follows the transformers `run_mlm`/`run_clm` recipe (`group_texts`): documents are joined with
a separator and cut into equal blocks, so a block carries no padding. Each block is wrapped in the
model's own special tokens ([CLS] ... [SEP] for BERT, <s> ... for Llama, nothing for GPT-2).

The blocks are cached (one memory-mapped Arrow file and its blocks.json, under
$HF_DATASETS_CACHE/nlptl-blocks/KEY) under a key of the corpus content, the tokenizer and the block
size, so an unchanged corpus is tokenized once: by `nlptl preprocess` on every core, or by the first
adapt/pretrain run that reads it. `--streaming` packs the same way as the text is read (`stream_blocks`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from nlptl.errors import UsageError

CACHE_VERSION = "lm-blocks-v2"


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


def blocks_key(corpus_key: str, tokenizer, block_size: int, word_starts: bool = False) -> str:
    """The cache key of a corpus's blocks: its content (hash), the tokenizer and the block size."""
    return hashlib.sha256(
        json.dumps([CACHE_VERSION, corpus_key, tokenizer_fingerprint(tokenizer), block_size, word_starts]).encode()
    ).hexdigest()[:16]


def blocks_dir(key: str) -> Path:
    """Where the blocks of `key` live: next to the `datasets` cache of the corpora they come from."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "nlptl-blocks" / key


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def packer(tokenizer, block_size: int, word_starts: bool = False) -> Callable[[dict], dict]:
    """A batch of texts -> the full blocks they fill, in order (a batch's last, partial block is dropped,
    as in the transformers `group_texts` recipe). The one function behind the cached and the streamed blocks."""
    prefix, suffix = special_layout(tokenizer)
    sep = separator_id(tokenizer)
    body = block_size - len(prefix) - len(suffix)
    if body < 8:
        raise UsageError(f"--block-size {block_size} is too small for this tokenizer; "
                         f"use at least {len(prefix) + len(suffix) + 8}")
    extra = [sep] if sep is not None else []

    def pack(batch: dict) -> dict:
        enc = tokenizer(batch["text"], add_special_tokens=False)
        stream = [t for doc in enc["input_ids"] for t in doc + extra]
        n = len(stream) // body * body
        out = {"input_ids": [prefix + stream[i : i + body] + suffix for i in range(0, n, body)]}
        if word_starts:
            flags = []
            for i in range(len(enc["input_ids"])):
                words = enc.word_ids(i)
                flags += [int(j == 0 or w is None or w != words[j - 1]) for j, w in enumerate(words)] + [1] * len(extra)
            # A block opens with a new word even when it cuts one in two.
            out["word_starts"] = [[1] * len(prefix) + [1] + flags[i + 1 : i + body] + [1] * len(suffix)
                                  for i in range(0, n, body)]
        return out

    return pack


def pack_blocks(texts, tokenizer, block_size: int, corpus_key: str, num_proc: int | None = None,
                word_starts: bool = False, key: str | None = None):
    """`texts`: a Dataset with a `text` column. Returns a Dataset of `input_ids` blocks (int32), and with
    `word_starts` a parallel 0/1 column marking the first token of each word (for whole-word masking).

    Read from the cache when this corpus, tokenizer and block size were packed before (by `nlptl
    preprocess` or an earlier run); else tokenized on `num_proc` processes (default: the usable cores)
    and written there. The blocks are the same whatever the number of processes: each process packs
    whole batches of BATCH documents, the same batches one process would pack."""
    key = key or blocks_key(corpus_key, tokenizer, block_size, word_starts)
    where = blocks_dir(key)
    if (where / "blocks.json").is_file():
        return load_blocks(where)
    pack = packer(tokenizer, block_size, word_starts)
    meta = {"content": corpus_key, "block_size": block_size, "tokenizer": tokenizer_fingerprint(tokenizer)}
    return build_blocks(texts, pack, where, num_proc or usable_cores(), word_starts, meta)


def corpus_key(src) -> str:
    """A corpus's part of the cache key: its content hash (or name) and the column read (one file can
    hold several text columns)."""
    return f"{src.sha256 or src.spec}|{src.text_column}"


def corpus_blocks(src, tokenizer, block_size: int, word_starts: bool = False, num_proc: int | None = None):
    """The packed blocks of a CorpusSource, from the cache when there (the corpus is then not read at
    all), else tokenized now and cached. Returns (blocks, cache directory)."""
    from nlptl.data.corpora import load_corpus

    texts = None
    if src.sha256 is None:  # a hub dataset: its content is known once loaded
        texts = load_corpus(src)
    key = blocks_key(corpus_key(src), tokenizer, block_size, word_starts)
    if not (blocks_dir(key) / "blocks.json").is_file() and texts is None:
        texts = load_corpus(src)
    return pack_blocks(texts, tokenizer, block_size, corpus_key(src), num_proc, word_starts, key=key), blocks_dir(key)


def stream_blocks(src, pack: Callable[[dict], dict]):
    """The blocks of a corpus read as it goes (an IterableDataset), packed as the cached ones are."""
    from nlptl.data.corpora import stream_corpus

    return stream_corpus(src).map(pack, batched=True, batch_size=BATCH, remove_columns=["text"])


def mix(parts: list, weights: list[float], seed: int):
    """Blocks drawn from each part with the given probabilities (seeded), until one part runs out: the
    mixture's epoch. Map-style parts give a map-style mixture, streams a stream."""
    import datasets

    return datasets.interleave_datasets(parts, probabilities=weights, seed=seed, stopping_strategy="first_exhausted")


def load_blocks(where: Path):
    import datasets

    return datasets.Dataset.from_file(str(where / "blocks.arrow"))


def cache_info(where: Path) -> dict:
    """What a block cache holds (its blocks.json) and where."""
    return {**json.loads((where / "blocks.json").read_text(encoding="utf-8")), "path": str(where)}


# Documents per batch: the unit of packing (its last, partial block is dropped) and of work per process.
BATCH = 1000
_work: tuple | None = None  # (texts, pack) in the processes of a pool (inherited at fork, never pickled)


def _pack_range(start: int):
    """Pack the batch of documents at `start`: (Arrow record batch, documents, bytes of text)."""
    texts, pack, schema = _work
    batch = texts[start : start + BATCH]
    n_bytes = sum(len(t.encode("utf-8")) for t in batch["text"])
    return _record_batch(pack(batch), schema), len(batch["text"]), n_bytes


def _record_batch(out: dict, schema):
    """Blocks (lists of equal length) -> an Arrow record batch, through numpy: pyarrow's conversion of
    nested Python lists would cost a third of the tokenizer's time."""
    import numpy as np
    import pyarrow as pa

    columns = []
    for field in schema:
        rows = out[field.name]
        width = len(rows[0]) if rows else 0
        values = np.asarray(rows, dtype=field.type.value_type.to_pandas_dtype()).reshape(-1)
        offsets = np.arange(0, len(rows) * width + 1, width or 1, dtype=np.int32)
        columns.append(pa.ListArray.from_arrays(offsets, values, type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def build_blocks(texts, pack: Callable, where: Path, num_proc: int, word_starts: bool, meta: dict):
    """Tokenize and pack `texts` on `num_proc` processes into `where` (an Arrow file, memory-mapped when
    read: neither the corpus nor its blocks are held in memory). Written aside, then renamed: a killed
    run leaves no half cache that looks complete."""
    import shutil
    import time

    import pyarrow as pa

    from nlptl.console import Progress

    global _work
    columns = [pa.field("input_ids", pa.list_(pa.int32()))]
    if word_starts:
        columns.append(pa.field("word_starts", pa.list_(pa.int8())))
    schema = pa.schema(columns)
    n_docs, starts = len(texts), range(0, len(texts), BATCH)
    # A pool costs more than it saves on a few batches.
    num_proc = max(1, min(num_proc, len(starts)))
    total_bytes = texts.data.nbytes  # Arrow's size of the text: about the bytes of the corpus
    progress = Progress("tokenizing", n_docs, log_every=1, min_seconds=10.0)
    progress.note(f"tokenizing {n_docs} documents ({_mb(total_bytes)}) on {num_proc} process(es) into {where}")
    tmp = where.with_name(where.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started, done_docs, done_bytes, n_blocks = time.perf_counter(), 0, 0, 0
    _work = (texts, pack, schema)
    try:
        with pa.OSFile(str(tmp / "blocks.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch, docs, n_bytes in _map(starts, num_proc):
                writer.write_batch(batch)
                n_blocks += batch.num_rows
                done_docs, done_bytes = done_docs + docs, done_bytes + n_bytes
                progress.update(done_docs, {"MB": done_bytes / 1e6, "blocks": n_blocks})
    finally:
        _work = None
        progress.close()
    seconds = time.perf_counter() - started
    block_size = meta["block_size"]
    info = {**meta, "version": CACHE_VERSION, "documents": n_docs, "text_bytes": done_bytes, "blocks": n_blocks,
            "tokens": n_blocks * block_size, "bytes": (tmp / "blocks.arrow").stat().st_size,
            "num_proc": num_proc, "seconds": round(seconds, 3),
            "mb_per_s": round(done_bytes / 1e6 / max(seconds, 1e-9), 3)}
    (tmp / "blocks.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    if where.exists():  # another process wrote the same content meanwhile: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(where)
    return load_blocks(where)


def _map(starts, num_proc: int):
    """`_pack_range` over the batches, in order; on a pool of forked processes when `num_proc` > 1."""
    if num_proc == 1:
        yield from map(_pack_range, starts)
        return
    import multiprocessing

    # The processes share the memory-mapped corpus and the tokenizer by fork. Each tokenizes on one
    # thread: the processes are the parallelism (and the Rust tokenizer must not fork its thread pool).
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.get_context("fork").Pool(num_proc)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    with pool:
        yield from pool.imap(_pack_range, starts, chunksize=1)


def _mb(n_bytes: int) -> str:
    return f"about {n_bytes / 1e6:.1f} MB"


def split_blocks(blocks, validation_percentage: float, max_eval_blocks: int, seed: int = 0):
    """A fixed, seeded held-out share of the blocks (the same blocks whatever the training seed)."""
    n = len(blocks)
    n_eval = max(1, round(n * validation_percentage / 100))
    if n - n_eval < 1:
        raise UsageError(f"the corpus gives only {n} block(s); use a smaller --block-size, "
                         "a smaller --validation-percentage or more text")
    parts = blocks.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    held_out = parts["test"]
    if len(held_out) > max_eval_blocks:
        held_out = held_out.select(range(max_eval_blocks))
    return parts["train"], held_out
