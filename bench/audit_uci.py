#!/usr/bin/env python
"""The leakage audit on real data: the UCI sentences (amazon, imdb, yelp; 1000 each) against the 4k
unlabeled IMDb reviews, the corpus a user would adapt on (issue 28; docs/results.md, "Leakage").

    python bench/audit_uci.py [--data-root ../shared/data]

One JSON line per UCI file: exact and near duplicates found, seconds, and the duplicates themselves.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    root = Path(p.parse_args().data_root)
    reviews = root / "unlabeled-reviews" / "imdb_unsup_4k.txt"
    if not reviews.is_file():
        print(f"audit_uci: {reviews} not found; pass --data-root (the shared data directory)")
        return 0
    from nlptl import audit

    source = {"spec": str(reviews), "files": [str(reviews)], "format": "text", "text_column": "text"}
    for name in ("imdb", "amazon", "yelp"):
        with (root / "sentiment-uci" / f"{name}.csv").open(encoding="utf-8", newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        checked = audit.Checked(name=name, texts=texts)
        started = time.perf_counter()
        found = audit.summary(checked, str(reviews), audit.scan(checked, audit.batches(source), 1))
        print(json.dumps({"checked": name, "n": len(texts), "exact": found["exact"], "near": found["near"],
                          "seconds": round(time.perf_counter() - started, 1),
                          "duplicates": [e["text"] for e in found["examples"]]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
