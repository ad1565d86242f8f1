#!/usr/bin/env python
"""`nlptl predict --input FILE --output FILE` at scale: peak memory against input size, and texts/s
against transformers' `pipeline("text-classification")` on the same texts and model, 1 and 2 processes.

    python bench/predict_scale.py --work /tmp/predict-bench --out bench/results/predict-scale-DATE.json
    python bench/predict_scale.py --model RUN_DIR --rss-lines 100000 --speed-lines 20000   # another classifier

Run it under `flock /tmp/nlptl-bench.lock python bench/predict_scale.py ...` on a shared machine.

Without --model, a tiny random-init classifier is made first in --work (`nlptl pretrain --size tiny` on the
shipped sample corpus, then `nlptl finetune` for a few steps): a classifier whose cost is mostly the
per-text work around the model (reading, tokenizing, writing), which is what streaming changes.
Inputs are generated short lines (seeded made-up reviews of 4-12 words; no real data), written to --work.

- memory: `nlptl predict --input lines.txt --output out.jsonl` (chunks of --chunk-size) on each of
  --rss-lines; peak RSS of the process from wait4, wall time. With --in-memory also the whole-input path
  (`--input lines.txt --json > file`) on the smallest size, for comparison.
- speed, on --speed-lines lines, each side end to end as a fresh process (start, load, read, classify,
  write JSON Lines): nlptl with 1 process, and with 2 under torchrun; the pipeline with 1 process and with
  2 (each half of the lines, at the same time), batch --batch-size for both.
Every child runs with OMP_NUM_THREADS=--threads (1: one core per process); the load average is recorded
before and after each measurement (the machine may be shared).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import REPO, machine  # noqa: E402

WORDS = ["the", "film", "was", "great", "awful", "plot", "soup", "service", "slow", "lovely", "dull", "and", "but",
         "not", "really", "too", "long", "short", "fine", "camera", "strap", "staff", "friendly", "cold"]


def write_lines(path: Path, n: int, seed: int = 0) -> None:
    if path.exists():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "\n")
    tmp.rename(path)


def env(threads: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads), NLPTL_HOME="",
                TOKENIZERS_PARALLELISM="false")


def timed(cmd: list[str], environ: dict, log: Path, stdout=None) -> dict:
    """Wall time and peak RSS (the largest of the process and its children, from wait4) of one command."""
    load = os.getloadavg()
    t = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=stdout or subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read() if stdout is None else ""
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n  see {log}")
    lines = [x for x in out.splitlines() if x.startswith("{")]
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
            "out": json.loads(lines[-1]) if lines else None, "cmd": shlex.join(cmd)}


def concurrently(cmds: list[list[str]], environ: dict, log: Path) -> dict:
    """Several commands started together; the wall time until the last ends, the largest peak RSS."""
    load = os.getloadavg()
    t = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=REPO, env=environ, stdout=subprocess.DEVNULL,
                              stderr=open(f"{log}.{i}", "w")) for i, c in enumerate(cmds)]
    peaks = []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {shlex.join(proc.args)}\n  see {log}.*")
        peaks.append(usage.ru_maxrss / 1024)
    return {"wall_s": round(time.perf_counter() - t, 2), "peak_rss_mib": round(max(peaks), 1),
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
            "cmd": " & ".join(shlex.join(c) for c in cmds)}


def tiny_classifier(work: Path, threads: int) -> str:
    """A tiny BERT pretrained for a few steps on the shipped sample corpus, then fine-tuned briefly."""
    out = work / "tiny-classifier"
    if (out / "nlptl-run.json").exists():
        return str(out)
    py = [sys.executable, "-m", "nlptl"]
    e = env(threads)
    subprocess.run(py + ["pretrain", "--arch", "bert", "--size", "tiny", "--corpus", "sample-reviews", "--out",
                         str(work / "tiny-base"), "--max-steps", "20", "--block-size", "64", "--vocab-size", "2000",
                         "--overwrite", "--quiet"], env=e, check=True, cwd=REPO)
    subprocess.run(py + ["finetune", "--from", str(work / "tiny-base"), "--task", "sample-sentiment", "--out",
                         str(out), "--max-steps", "30", "--max-length", "64", "--lr", "1e-3", "--overwrite",
                         "--quiet"], env=e, check=True, cwd=REPO)
    return str(out)


def pipeline_worker(model: str, path: str, output: str, shard: int, shards: int, batch: int) -> None:
    """transformers' pipeline on this shard's contiguous share of the lines, results as JSON Lines."""
    from transformers import pipeline

    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    size = -(-len(lines) // shards)
    mine = lines[shard * size : (shard + 1) * size]
    clf = pipeline("text-classification", model=model, device=-1, trust_remote_code=True)
    with open(output, "w", encoding="utf-8") as f:
        for text, r in zip(mine, clf(mine, batch_size=batch, truncation=True), strict=True):
            f.write(json.dumps({"text": text, "label": r["label"], "score": r["score"]}) + "\n")
    print(json.dumps({"rows": len(mine)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a classifier (default: a tiny one made in --work)")
    p.add_argument("--work", default="/tmp/nlptl-predict-bench")
    p.add_argument("--rss-lines", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--speed-lines", type=int, default=20_000)
    p.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-memory", action="store_true", help="also the whole-input path on the smallest size")
    p.add_argument("--out", default=None)
    p.add_argument("--pipeline-worker", nargs=5, metavar=("MODEL", "INPUT", "OUTPUT", "SHARD", "SHARDS"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.pipeline_worker:
        m, i, o, shard, shards = a.pipeline_worker
        pipeline_worker(m, i, o, int(shard), int(shards), a.batch_size)
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    model = a.model or tiny_classifier(work, a.threads)
    e = env(a.threads)
    report: dict = {"date": _dt.date.today().isoformat(), "machine": machine(), "model": model,
                    "threads_per_process": a.threads, "chunk_size": a.chunk_size, "batch_size": a.batch_size,
                    "memory": [], "speed": []}
    nlptl = [sys.executable, "-m", "nlptl", "predict", "--model", model, "--batch-size", str(a.batch_size)]

    def save() -> None:
        if a.out:
            Path(a.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    for n in a.rss_lines:
        path = work / f"lines-{n}.txt"
        write_lines(path, n)
        out = work / f"out-{n}.jsonl"
        out.unlink(missing_ok=True)
        r = timed(nlptl + ["--input", str(path), "--output", str(out), "--chunk-size", str(a.chunk_size), "--json",
                           "--quiet"], e, work / f"rss-{n}.log")
        r |= {"lines": n, "path": "--output (chunks)", "texts_per_s": round(n / r["wall_s"], 1)}
        report["memory"].append(r)
        print(json.dumps(r), flush=True)
        save()
    if a.in_memory and a.rss_lines:
        n = min(a.rss_lines)
        with open(work / "in-memory.jsonl", "w") as sink:
            r = timed(nlptl + ["--input", str(work / f"lines-{n}.txt"), "--json", "--quiet"], e,
                      work / "in-memory.log", stdout=sink)
        r |= {"lines": n, "path": "--json to stdout (whole input in memory)", "texts_per_s": round(n / r["wall_s"], 1)}
        report["memory"].append(r)
        print(json.dumps(r), flush=True)
        save()

    n = a.speed_lines
    path = work / f"lines-{n}.txt"
    write_lines(path, n)
    for procs in a.processes:
        out = work / f"speed-nlptl-{procs}.jsonl"
        out.unlink(missing_ok=True)
        launcher = [] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node", str(procs), "-m", "nlptl", "predict"]
        cmd = (nlptl if procs == 1 else launcher + nlptl[4:]) + ["--input", str(path), "--output", str(out),
                                                                 "--chunk-size", str(a.chunk_size), "--json", "--quiet"]
        r = timed(cmd, e, work / f"speed-nlptl-{procs}.log")
        r |= {"side": "nlptl predict", "processes": procs, "lines": n, "texts_per_s": round(n / r["wall_s"], 1)}
        report["speed"].append(r)
        print(json.dumps(r), flush=True)
        save()
        worker = [sys.executable, str(Path(__file__).resolve()), "--batch-size", str(a.batch_size), "--pipeline-worker",
                  model, str(path)]
        r = concurrently([worker + [str(work / f"speed-pipeline-{procs}-{i}.jsonl"), str(i), str(procs)]
                          for i in range(procs)], e, work / f"speed-pipeline-{procs}.log")
        r |= {"side": "transformers pipeline", "processes": procs, "lines": n, "texts_per_s": round(n / r["wall_s"], 1)}
        report["speed"].append(r)
        print(json.dumps(r), flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
