#!/usr/bin/env python
"""adapt's --head-warmup, measured (issue 24): all-MiniLM-L6-v2 (a bare encoder: adapt adds a random
masked-LM head) adapted with MLM on the unlabeled IMDb reviews for 100 steps, with the new head trained
alone for a share of the steps, and a probe (logistic regression on the frozen, mean-pooled features,
5-fold) of 500 labelled UCI sentences scored before training and every 20 steps.

    python bench/head_warmup.py 0.0 0.1 0.2 0.4      # one line of JSON per share, on stdout

One torch thread; the data splits are bench/ablation.py's (test 500 / val 500 / train pool; the
probe is the 500-label subset of seed 0). Raw results of 2026-12-07: bench/results/head-warmup-2026-12-07.jsonl.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402


def main(shares: list[float], data_root: Path = Path(__file__).resolve().parents[2] / "shared" / "data") -> None:
    import torch

    from nlptl.config import AdaptConfig
    from nlptl.stages import adapt

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="head-warmup-"))
    splits = ablation.make_splits(data_root, work)
    for share in shares:
        started = time.time()
        r = adapt.run(AdaptConfig(from_model=ablation.minilm_path(),
                                  corpus=str(data_root / "unlabeled-reviews" / "imdb_unsup_4k.txt"),
                                  out=str(work / f"dapt-w{share}"), overwrite=True, max_steps=100, batch_size=8,
                                  block_size=128, seed=0, max_eval_blocks=100, precision="fp32", head_warmup=share,
                                  probe=str(splits["500-0"]), eval_every=20))
        keys = ("perplexity_before", "perplexity", "probe_accuracy_before", "probe_accuracy", "best_step",
                "probe_curve", "head_warmup_steps")
        print(json.dumps({"share": share, "secs": time.time() - started, **{k: r.get(k) for k in keys}}), flush=True)


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [0.0, 0.1, 0.2, 0.4])
