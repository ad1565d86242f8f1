#!/usr/bin/env python
"""How fast is the leakage audit (nlptl/audit.py) on a large corpus? (issue 28: "fast enough for a 1 GB
corpus (measure it)")

    python bench/audit_speed.py --mb 1024 --num-proc 1 2      # a 1 GB corpus, 1 then 2 processes

The corpus: the shared unlabeled IMDb reviews (../shared/data/unlabeled-reviews/imdb_unsup_4k.txt),
written again and again into a temporary file of --mb megabytes (each copy's lines numbered, so no two
documents are equal). Checked: the 3000 UCI sentences (sentiment-uci/*.csv), a realistic test set: the
UCI IMDb sentences come from IMDb reviews, so some may be found. Prints one JSON line per run: seconds,
MB/s, documents/s, peak RSS of the run (its pool's processes included), and what was found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_corpus(path: Path, reviews: list[str], mb: int) -> int:
    target, size, docs, copy = mb * 2**20, 0, 0, 0
    with path.open("w", encoding="utf-8") as f:
        while size < target:
            for line in reviews:
                text = f"{copy}: {line}\n"
                f.write(text)
                size += len(text.encode())
                docs += 1
            copy += 1
    return docs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--num-proc", type=int, nargs="+", default=[1])
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    root = Path(args.data_root)
    reviews_file = root / "unlabeled-reviews" / "imdb_unsup_4k.txt"
    if not reviews_file.is_file():
        print(f"audit_speed: {reviews_file} not found; pass --data-root (the shared data directory)")
        return 0
    reviews = [line.strip() for line in reviews_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    checked_texts = []
    for name in ("amazon", "imdb", "yelp"):
        with (root / "sentiment-uci" / f"{name}.csv").open(encoding="utf-8", newline="") as f:
            checked_texts += [row["text"] for row in csv.DictReader(f)]
    from nlptl import audit
    from nlptl.audit import batches

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        t0 = time.perf_counter()
        docs = write_corpus(corpus, reviews, args.mb)
        size = corpus.stat().st_size
        written = time.perf_counter() - t0
        checked = audit.Checked(name="uci", texts=checked_texts)
        source = {"spec": str(corpus), "files": [str(corpus)], "format": "text", "text_column": "text"}
        for n in args.num_proc:
            t0 = time.perf_counter()
            merged = audit.scan(checked, batches(source), n)
            seconds = time.perf_counter() - t0
            found = audit.summary(checked, str(corpus), merged)
            rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            print(json.dumps({"mb": round(size / 2**20), "documents": docs, "checked": len(checked_texts),
                              "num_proc": n,
                              "seconds": round(seconds, 1), "mb_per_s": round(size / 2**20 / seconds, 2),
                              "docs_per_s": round(docs / seconds), "peak_rss_mb": round(rss / 1024),
                              "exact": found["exact"], "near": found["near"], "write_seconds": round(written, 1),
                              "loadavg": round(os.getloadavg()[0], 2),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
