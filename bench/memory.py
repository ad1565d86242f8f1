#!/usr/bin/env python
"""Peak memory of `nlptl adapt` against corpus size, and what the tokenization cache saves.

    python bench/memory.py                          # 100 MB and 500 MB corpora
    python bench/memory.py --sizes 100,500,2000     # add 2 GB (tokenizing it takes long on 2 cores)

Run it under `flock /tmp/nlptl-bench.lock python bench/memory.py ...` on a shared machine.

For each size a corpus of generated review-like text (seeded; no real data) is written to --work,
outside the repository, and `nlptl adapt` (all-MiniLM-L6-v2, MLM, a few steps) runs on it twice as a
child process: the first run reads, tokenizes and packs it; the second finds the blocks in the cache.
Recorded per run: peak RSS (os.wait4), whole-process wall time and nlptl's own `preprocess_seconds`
(read + tokenize + pack + split). The corpus and its cache files are deleted after each size.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import REPO, child_env, machine, minilm_dir, run_child  # noqa: E402


def words(n: int, rng: random.Random) -> list[str]:
    """Pronounceable made-up words, plus the small words every sentence needs."""
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    made = {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)}
    return sorted(made) + ["the", "a", "and", "but", "was", "is", "it", "this", "film", "movie", "plot", "not"]


def write_corpus(path: Path, mb: int, seed: int = 0) -> int:
    """About `mb` MB of documents, one per line (3-10 sentences of 6-25 words); returns bytes written."""
    rng = random.Random(seed)
    vocab = words(20000, rng)
    # A pool of sentences, reshuffled into documents: generating every word anew would take minutes per GB.
    pool = [" ".join(rng.choices(vocab, k=rng.randint(6, 25))).capitalize() + rng.choice(".!?") for _ in range(50000)]
    target, written = mb * 1_000_000, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lines = [" ".join(rng.choices(pool, k=rng.randint(3, 10))) + "\n" for _ in range(1000)]
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk.encode())
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,500", help="corpus sizes in MB")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", default="/tmp/nlptl-memory")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    a = p.parse_args(argv)
    work = Path(a.work).resolve()
    if work.is_relative_to(REPO):
        sys.exit(f"bench/memory.py: --work {work} is inside the repository")
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    rows = []
    for mb in [int(x) for x in a.sizes.split(",")]:
        corpus = work / f"corpus-{mb}mb.txt"
        size = write_corpus(corpus, mb)
        env = child_env(work / f"state-{mb}")
        for attempt in ("first", "cached"):
            cmd = [sys.executable, "-m", "nlptl", "adapt", "--from", minilm_dir(), "--corpus", str(corpus),
                   "--max-steps", str(a.steps), "--batch-size", "8", "--save-every", "0",
                   "--set", "max_eval_blocks=16", "--out", str(work / f"run-{mb}-{attempt}"), "--overwrite",
                   "--json", "--quiet"]
            r = run_child(cmd, env, work / "logs" / f"{mb}-{attempt}.log")
            o = r["out"]
            row = {"mb": mb, "bytes": size, "run": attempt, "peak_rss_mib": round(r["peak_rss_mib"]),
                   "wall_s": round(r["wall_s"], 1), "preprocess_s": o["preprocess_seconds"],
                   "train_s": o["train_seconds"], "train_blocks": o["n_train"], "load": os.getloadavg()[0],
                   "cmd": r["cmd"]}
            rows.append(row)
            print(f"{mb:5d} MB {attempt:6s}: peak RSS {row['peak_rss_mib']:5d} MiB  "
                  f"preprocess {row['preprocess_s']:7.1f} s  "
                  f"wall {row['wall_s']:7.1f} s  ({size / 1e6:.1f} MB, {row['train_blocks']} training blocks, "
                  f"load {row['load']:.1f})", flush=True)
        if not a.keep:
            corpus.unlink()
            shutil.rmtree(work / f"state-{mb}", ignore_errors=True)
            for attempt in ("first", "cached"):
                shutil.rmtree(work / f"run-{mb}-{attempt}", ignore_errors=True)
    report = {"started": started, "machine": machine(), "steps": a.steps, "rows": rows}
    out = Path(a.results) / f"memory-{started[:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("\n| corpus | run | peak RSS MiB | preprocess s | wall s | training blocks |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bytes'] / 1e6:.1f} MB | {r['run']} | {r['peak_rss_mib']} | {r['preprocess_s']:.1f} "
              f"| {r['wall_s']:.1f} | {r['train_blocks']} |")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
