#!/usr/bin/env python
"""Replay of general text while adapting, against forgetting: 0%, 5% and 20% replay, measured.

    python bench/replay.py                          # ../shared/data, about 10 min on 2 busy cores
    python bench/replay.py --data /path/to/shared/data --steps 400 --replay 0,5,20

A tiny GPT (2 layers x 64, nlptl's `--size tiny`, its BPE trained on the same text) is pretrained on
WikiText-2 valid, the general corpus, then adapted on the unlabeled IMDb reviews (4,000 reviews) with
`--corpus REVIEWS:(100-R),WIKITEXT-2-VALID:R` (R = the replay share, in percent; R = 0 is the reviews
alone). After each adapt: perplexity on the held-out review blocks (adapt's own held-out sample, the
same blocks for every R) and on WikiText-2 test (`nlptl evaluate`), general text none of the runs
trained on. Everything in child processes, one thread (OMP_NUM_THREADS=1); runs go to --work, outside
the repository, deleted at the end; the numbers to bench/results/replay-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import REPO, machine, run_child  # noqa: E402


def nlptl(args: list[str], env: dict, log: Path) -> dict:
    r = run_child([sys.executable, "-m", "nlptl", *args, "--json", "--quiet"], env, log)
    return {**r["out"], "wall_s": round(r["wall_s"], 1), "cmd": r["cmd"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--replay", default="0,5,20", help="replay shares in percent")
    p.add_argument("--work", default="/tmp/nlptl-replay")
    p.add_argument("--reuse-base", action="store_true",
                   help="keep a finished WORK/base (the pretrained model) from an earlier invocation")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = p.parse_args(argv)
    data, work = Path(a.data).resolve(), Path(a.work).resolve()
    if work.is_relative_to(REPO):
        sys.exit(f"bench/replay.py: --work {work} is inside the repository")
    reviews = data / "unlabeled-reviews" / "imdb_unsup_4k.txt"
    general, general_test = data / "wikitext-2" / "valid.txt", data / "wikitext-2" / "test.txt"
    reuse = a.reuse_base and (work / "base" / "nlptl-run.json").is_file()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), NLPTL_HOME=str(work / "home"), HF_DATASETS_CACHE=str(work / "hf"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    common = ["--block-size", "128", "--batch-size", "16", "--precision", "fp32", "--save-every", "0", "--seed", "0"]
    rows: list[dict] = []
    try:
        if reuse:
            base = {**json.loads((work / "base" / "nlptl-run.json").read_text())["metrics"], "wall_s": None}
        else:
            base = nlptl(["pretrain", "--arch", "gpt", "--size", "tiny", "--corpus", str(general), "--out",
                          str(work / "base"), "--max-steps", str(a.pretrain_steps), "--lr", "2e-3", *common], env,
                         work / "logs" / "pretrain.log")
        base_general = nlptl(["evaluate", "--model", str(work / "base"), "--data", str(general_test)], env,
                             work / "logs" / "base-eval.log")
        print(f"base: WikiText-2 valid held-out perplexity {base['perplexity']:.1f}, WikiText-2 test "
              f"{base_general['perplexity']:.1f} ({base['wall_s']} s)", flush=True)
        for r in [float(x) for x in a.replay.split(",")]:
            corpus = str(reviews) if r == 0 else f"{reviews}:{100 - r:g},{general}:{r:g}"
            out = work / f"adapt-{r:g}"
            adapted = nlptl(["adapt", "--from", str(work / "base"), "--corpus", corpus, "--out", str(out),
                             "--max-steps", str(a.steps), "--lr", "1e-3", "--set", "max_eval_blocks=300", *common], env,
                            work / "logs" / f"adapt-{r:g}.log")
            evaluated = nlptl(["evaluate", "--model", str(out), "--data", str(general_test)], env,
                              work / "logs" / f"eval-{r:g}.log")
            row = {"replay_percent": r, "reviews_ppl_before": adapted["perplexity_before"],
                   "reviews_ppl_after": adapted["perplexity"], "wikitext2_test_ppl_before": base_general["perplexity"],
                   "wikitext2_test_ppl_after": evaluated["perplexity"], "steps": adapted["steps"],
                   "n_eval_blocks": adapted["n_eval"], "adapt_wall_s": adapted["wall_s"], "adapt_cmd": adapted["cmd"],
                   "evaluate_cmd": evaluated["cmd"], "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"replay {r:4g}%: reviews held-out perplexity {row['reviews_ppl_before']:.1f} -> "
                  f"{row['reviews_ppl_after']:.1f}; WikiText-2 test {row['wikitext2_test_ppl_before']:.1f} -> "
                  f"{row['wikitext2_test_ppl_after']:.1f} ({adapted['wall_s']} s)", flush=True)
    finally:
        report = {"started": started, "machine": machine(), "pretrain_steps": a.pretrain_steps,
                  "base": {k: base.get(k) for k in ("perplexity", "steps", "train_tokens")} if rows else None,
                  "rows": rows}
        out_file = Path(a.results) / f"replay-{started[:10]}.json"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(report, indent=1) + "\n")
        print(f"written: {out_file}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
