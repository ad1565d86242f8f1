#!/usr/bin/env python
"""Does the label-budget planner (nlptl/budget.py) extrapolate? Checked on learning curves already
measured on the shared UCI sentences (test accuracy, no new training):

    python bench/budget_check.py            # markdown table for docs/results.md

- bench/results/fewlabels.jsonl: all-MiniLM-L6-v2 at 16, 32, 64 and 128 labels per class (x2 labels),
  5 seeds, for each few-label arm (plain finetune, SetFit, the contrastive chains);
- bench/results/compose.jsonl: the same MiniLM (`chain/direct`, 100 and 500 labels, 3 seeds;
  `rates/.../lrdefault`, 200 and 2000 labels, seed 0) and the from-scratch GPT (same cells).

For each curve: fit on every count but the largest, predict the largest (the backtest), and fit on all
of them to plan 2x and 4x (gain ± bootstrap sd over seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(name: str) -> list[dict]:
    path = REPO / "bench" / "results" / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def curves() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in load("fewlabels.jsonl"):
        if r.get("ok") and "test_accuracy" in r and r.get("row") in ("plain", "setfit", "contrastive-slowbody",
                                                                        "chain-slowbody"):
            out.setdefault(f"minilm {r['row']} (k per class)", []).append(
                {"n_train": 2 * r["k"], "accuracy": r["test_accuracy"], "seed": r.get("seed")})
    latest = {r["id"]: r for r in load("compose.jsonl") if r.get("ok")}
    for origin in ("minilm", "gpt"):
        rows = [r for r in latest.values() if r.get("origin") == origin and (
            (r.get("part") == "chain" and r.get("arm") == "direct")
            or (r.get("part") == "rates" and r.get("lr_given") == "default"))]
        out[f"{origin} direct finetune"] = [
            {"n_train": r.get("n_labels") or r.get("n_train_size"), "accuracy": r["test_accuracy"], "seed": r["seed"]}
            for r in rows]
    return out


def main() -> int:
    from nlptl import budget

    print("| curve | label counts (seeds) | backtest: fitted without the largest | predicted | measured | error "
          "| plan from all: 2x | 4x |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in curves().items():
        counts: dict[int, int] = {}
        for r in runs:
            counts[r["n_train"]] = counts.get(r["n_train"], 0) + 1
        p = budget.plan(runs)
        check = budget.backtest(runs) if len(counts) > budget.MIN_COUNTS else None
        shown = ", ".join(f"{n} ({k})" for n, k in sorted(counts.items()))
        if check is None:
            back = "- | - | - | -"
        else:
            fitted_on = ", ".join(map(str, check["fitted_on"]))
            back = (f"{fitted_on} -> {check['held_out_n']} | {100 * check['predicted']:.1f} "
                    f"| {100 * check['measured']:.1f} | {100 * check['error']:+.1f}")
        plans = " | ".join(f"{100 * q['gain']:+.1f} ± {100 * (q['sd'] or 0):.1f} ({q['n_labels']})"
                           for q in p["predictions"]) if p["ok"] else f"no plan: {p['why']} | -"
        print(f"| {name} | {shown} | {back} | {plans} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
