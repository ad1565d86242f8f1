#!/usr/bin/env python
"""Load test of `nlptl serve` on the loopback, against a baseline of one transformers pipeline() call
per request in a plain loop.

    python bench/serve_load.py --model RUN_DIR --data SENTENCES.csv --out bench/results/serve-DATE.json
    python bench/serve_load.py --model EXPORT_DIR --data SENTENCES.csv --label onnx   # an ONNX export

For each concurrency level (default 1, 8, 32, 128): that many clients, each with one keep-alive
connection, send POST /predict with one real sentence per request (read from --data's text column,
cycled), back to back, until --seconds or --max-requests (whichever first). Reported: requests/s,
texts/s, and client-side latency p50/p95/p99. The baseline: `pipeline("text-classification")` on the
same sentences, one call per request in a loop, for --seconds (a server that did this would serve one
request at a time whatever the concurrency). Server, clients and baseline share the machine's cores;
the server and the baseline get --threads torch threads each.

The client is a minimal HTTP/1.1 one on asyncio streams (no client library), to keep its own CPU cost
low. Nothing from --data is written anywhere; only counts and timings are.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as _dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_texts(path: str, column: str = "text") -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f) if row[column].strip()]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def client(port: int, texts: list[str], start_at: int, deadline: float, budget: dict, latencies: list,
                 errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start_at
    try:
        while time.perf_counter() < deadline and budget["left"] > 0:
            budget["left"] -= 1
            body = json.dumps({"texts": [texts[i % len(texts)]]}).encode()
            i += 1
            head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if b" 200 " not in status_line:
                errors.append(status_line.decode().strip() + " " + payload[:200].decode(errors="replace"))
    finally:
        writer.close()


async def level(port: int, texts: list[str], concurrency: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget = {"left": max_requests}
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*[client(port, texts, k * 7919, deadline, budget, latencies, errors)
                           for k in range(concurrency)])
    wall = time.perf_counter() - t0
    n = len(latencies)
    return {"concurrency": concurrency, "requests": n, "seconds": round(wall, 2), "requests_per_s": n / wall,
            "texts_per_s": n / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p95_ms": 1000 * percentile(latencies, 95), "p99_ms": 1000 * percentile(latencies, 99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"), "errors": len(errors),
            "first_error": errors[0] if errors else None}


def baseline(model: str, texts: list[str], seconds: float, max_requests: int, threads: int) -> dict:
    """One pipeline() call per request, in a plain loop."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    remote = os.path.exists(os.path.join(model, "modeling_nlptl.py"))
    pipe = pipeline("text-classification", model=model, device="cpu", trust_remote_code=remote,
                    truncation=True, max_length=128)
    pipe(texts[0])  # warm-up
    latencies = []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds and i < max_requests:
        s = time.perf_counter()
        pipe(texts[i % len(texts)])
        latencies.append(time.perf_counter() - s)
        i += 1
    wall = time.perf_counter() - t0
    return {"requests": i, "seconds": round(wall, 2), "requests_per_s": i / wall, "texts_per_s": i / wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p95_ms": 1000 * percentile(latencies, 95),
            "p99_ms": 1000 * percentile(latencies, 99)}


def start_server(args, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "nlptl", "serve", args.model, "--port", str(port), "--threads", str(args.threads),
           "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
           "--max-batch-tokens", str(args.max_batch_tokens), "--json"]
    if args.int8:
        cmd.append("--int8")  # the export's model_quantized.onnx (serve runs model.onnx by default)
    log = open(args.server_log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {args.server_log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not get ready in 180 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="CSV with a text column: the sentences to send")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=20.0, help="bound per level (and for the baseline)")
    p.add_argument("--max-requests", type=int, default=5000, help="bound per level (and for the baseline)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-batch-tokens", type=int, default=256)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--int8", action="store_true", help="serve an ONNX export's int8 model (nlptl serve --int8)")
    p.add_argument("--baseline-model", default=None, help="the model the pipeline() baseline loads (default: --model; "
                   "an ONNX export needs the finetune run it came from)")
    p.add_argument("--label", default="torch")
    p.add_argument("--server-log", default="/tmp/nlptl-serve-load.log")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    texts = read_texts(args.data)
    import torch

    result = {"date": _dt.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "load_average_before": os.getloadavg(), "model": args.model,
              "label": args.label, "threads": args.threads,
              "baseline_model": args.baseline_model or args.model, "max_batch_size": args.max_batch_size,
              "max_wait_ms": args.max_wait_ms, "max_batch_tokens": args.max_batch_tokens, "sentences": len(texts),
              "bounds": {"seconds": args.seconds, "max_requests": args.max_requests}, "levels": []}
    port = free_port()
    proc = start_server(args, port)
    try:
        asyncio.run(level(port, texts, 4, 2.0, 50))  # warm-up
        for c in [int(x) for x in args.concurrency.split(",")]:
            row = asyncio.run(level(port, texts, c, args.seconds, args.max_requests))
            result["levels"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        result["server_exit_code"] = proc.wait(timeout=60)
    if not args.no_baseline:
        result["baseline_pipeline_loop"] = baseline(args.baseline_model or args.model, texts, args.seconds,
                                                    args.max_requests, args.threads)
        print(json.dumps(result["baseline_pipeline_loop"]), file=sys.stderr, flush=True)
        base = result["baseline_pipeline_loop"]["texts_per_s"]
        for row in result["levels"]:
            row["speedup_vs_baseline"] = row["texts_per_s"] / base
    batches = [json.loads(line) for line in open(args.server_log) if line.startswith("{")]
    sizes = [b["texts"] for b in batches if b.get("event") == "batch"]
    result["server_batches"] = {"count": len(sizes), "mean_texts": statistics.fmean(sizes) if sizes else 0,
                                "max_texts": max(sizes, default=0)}
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
