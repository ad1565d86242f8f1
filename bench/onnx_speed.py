#!/usr/bin/env python
"""onnxruntime (fp32 and int8) against torch on the CPU: texts/s at batch 1 and 32, and accuracy.

    python bench/onnx_speed.py --model RUN_DIR --data test.csv --work /tmp/onnx-bench \\
        --out bench/results/onnx-DATE.json

Exports RUN_DIR with `nlptl export --format onnx --quantize int8 --data` (which runs the parity check
and reports the int8 accuracy change), then times the three engines through the same code path that
`nlptl predict` and `nlptl serve` use (inference.Classifier: tokenize, run, post-process), on the
sentences of --data: each engine and batch size runs for --seconds (after one warm-up batch) over
the sentences in order. Accuracy is over all of --data's rows. Torch and onnxruntime get --threads
threads each. Nothing from --data is written; only counts and timings are.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time


def read(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["text"].strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def speed(classifier, texts: list[str], batch: int, seconds: float, max_tokens: int | None = None) -> dict:
    """Calls of `batch` consecutive sentences (one padded pass each, or passes of at most `max_tokens`
    tokens as `nlptl serve` runs a gathered batch)."""
    classifier(texts[:batch], batch_size=batch, max_tokens=max_tokens)  # warm-up
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        classifier(chunk, batch_size=batch, max_tokens=max_tokens)
        done += batch
        i += batch
    wall = time.perf_counter() - t0
    return {"batch": batch, "max_tokens": max_tokens, "texts": done, "seconds": round(wall, 2),
            "texts_per_s": done / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="labelled CSV (text,label)")
    p.add_argument("--work", default="/tmp/nlptl-onnx-bench")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    export_dir = os.path.join(args.work, "onnx")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "nlptl", "export", args.model, "--format", "onnx", "--quantize", "int8",
                          "--data", args.data, "--out", export_dir, "--overwrite", "--json", "--quiet"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    exported = json.loads(res.stdout)
    export_seconds = time.perf_counter() - t0

    import torch

    from nlptl import models
    from nlptl.inference import Classifier, OnnxClassifier

    torch.set_num_threads(args.threads)
    texts, gold = read(args.data)
    engines = {"torch_fp32": Classifier(models.inspect_model(args.model), device="cpu"),
               "onnx_fp32": OnnxClassifier(export_dir, onnx_file="model.onnx"),
               "onnx_int8": OnnxClassifier(export_dir, onnx_file="model_quantized.onnx")}
    names = engines["torch_fp32"].names
    gold = [names[int(g)] if g.isdigit() else g for g in gold]
    result = {"date": _dt.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "load_average_before": os.getloadavg(), "model": args.model,
              "threads": args.threads, "sentences": len(texts),
              "export": exported, "export_seconds": round(export_seconds, 1),
              "sizes_mb": {f: round(os.path.getsize(os.path.join(export_dir, f)) / 2**20, 1)
                           for f in ("model.onnx", "model_quantized.onnx")}, "engines": {}}
    for name, classifier in engines.items():
        rows = classifier(texts, batch_size=32)
        entry = {"accuracy": sum(r["label"] == g for r, g in zip(rows, gold, strict=True)) / len(gold),
                 "speed": [speed(classifier, texts, b, args.seconds, t) for b, t in ((1, None), (32, None), (32, 256))]}
        result["engines"][name] = entry
        print(name, json.dumps(entry), file=sys.stderr, flush=True)
    base = {(s["batch"], s["max_tokens"]): s["texts_per_s"] for s in result["engines"]["torch_fp32"]["speed"]}
    for entry in result["engines"].values():
        for s in entry["speed"]:
            s["speedup_vs_torch"] = s["texts_per_s"] / base[(s["batch"], s["max_tokens"])]
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
