#!/usr/bin/env python
"""The one GPU check: every stage on the accelerator, nlptl against the Trainer recipes, --compile, the tests.

    python bench/gpu.py --smoke                          # tiny sizes, any machine (CPU too): minutes on 2 cores
    python bench/gpu.py --out "$OUT"                     # on one GPU: about 7 minutes
    python bench/gpu.py --cases clm,mlm --steps 100      # a part of it
    python bench/gpu.py --table DIR                      # re-print the table of a finished check

On a bare GPU machine without `datasets`/`evaluate` (no registry there), carry their wheels: see
`bench/gpu_wheels.sh`, which prints the exact command. Everything is built here from configs and from
text nlptl ships (nlptl/assets): no download, no hub.

Cases (each one JSON file in --out, plus table.md and logs.tar.gz):
  chain     GPT and BERT: pretrain -> adapt -> finetune -> evaluate -> predict, each must exit 0
  clm       GPT `base` preset (12 x 768), block 1024, batch 16: nlptl adapt vs bench/reference/run_clm.py --bf16
  mlm       BERT `base` preset, block 512, batch 32: nlptl adapt vs bench/reference/run_mlm.py --bf16
  finetune  short sentences (max length 128, batch 32) on a MiniLM-sized encoder (the `small` preset,
            6 x 512) and on the GPT `base`: nlptl finetune vs bench/reference/run_glue.py --bf16,
            both scored by bench/reference/score.py on the same held-out sentences
  compile   nlptl adapt --compile on the GPT `base`: time to the first step, tokens/s after warm-up
            against eager, recompilations (TORCH_LOGS=recompiles)
  fsdp      one process under accelerate's FSDP plugin (FSDP2): the GPT `base` adapts with sharded checkpoints
            and one gathered final model, against the same run unsharded (fp32; skipped without a GPU: accelerate
            leaves FSDP off on a CPU, where tests/test_fsdp.py covers nlptl's own --fsdp)
  tests     the test suite on this machine (pytest -x; -n 8 with pytest-xdist where present)

Same work on both sides: the same starting checkpoint, data, steps, batch, block, learning rate, schedule
(linear, no warmup, no weight decay, clipping at 1.0) and seed. Throughput = steps x batch x block over
the training loop's own time (nlptl's `train_seconds`, the Trainer's `train_runtime`). MFU counts the
REFERENCE's work for both sides (6 x matmul weights + 12 x layers x width x block per token, every
position) over the card's dense bf16 peak (H100/H200: 989 TFLOP/s); on other machines a measured
matmul rate, named in the table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "bench" / "reference"
ASSETS = REPO / "nlptl" / "assets"
CASES = ("chain", "clm", "mlm", "finetune", "compile", "fsdp", "tests")
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
TARGETS = {"clm": (2.5, 0.40), "mlm": (2.5, 0.35), "finetune": (3.0, None)}  # (x reference, MFU)


def sizes(smoke: bool) -> dict:
    """What each case runs at. --smoke keeps every code path and shrinks every number."""
    if smoke:
        return {"lm_size": "tiny", "enc_size": "tiny", "clm_block": 64, "clm_batch": 4, "mlm_block": 64,
                "mlm_batch": 4, "ft_batch": 8, "ft_len": 32, "steps": 3, "ft_steps": 3, "compile_steps": 4,
                "chain_size": "tiny", "chain_steps": 2, "repeat": 1}
    return {"lm_size": "base", "enc_size": "small", "clm_block": 1024, "clm_batch": 16, "mlm_block": 512,
            "mlm_batch": 32, "ft_batch": 32, "ft_len": 128, "steps": 100, "ft_steps": 150, "compile_steps": 60,
            "chain_size": "mini", "chain_steps": 20, "repeat": 6}


# --------------------------------------------------------------------------- running children


class Runner:
    def __init__(self, work: Path, smoke: bool):
        self.work, self.smoke = work, smoke
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.env = dict(os.environ, PYTHONPATH=pythonpath,
                        NLPTL_HOME=str(work / "home"), HF_DATASETS_CACHE=str(work / "hf-datasets"),
                        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="true", PYTHONUNBUFFERED="1")
        if smoke:  # a CPU check: fp32, one thread, like the test suite
            self.env.setdefault("OMP_NUM_THREADS", "1")

    def __call__(self, name: str, cmd: list[str], env: dict | None = None, timeout: float = 900) -> dict:
        """Run one command; its JSON (the last line of stdout that is one) and its wall time."""
        log = self.logs / f"{name}.log"
        t = time.perf_counter()
        with open(log, "w") as err:
            err.write("$ " + shlex.join(cmd) + "\n")
            err.flush()
            try:
                proc = subprocess.run(cmd, cwd=REPO, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                      stderr=err, text=True, timeout=timeout)
                rc, stdout = proc.returncode, proc.stdout
            except subprocess.TimeoutExpired as e:
                rc, stdout = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        wall = time.perf_counter() - t
        lines = [x for x in stdout.splitlines() if x.startswith(("{", "["))]
        out = None
        if lines:
            try:
                out = json.loads(lines[-1])
            except json.JSONDecodeError:
                out = None
        status = "ok" if rc == 0 else f"exit {rc}"
        print(f"  {name:28s} {status:8s} {wall:7.1f} s", flush=True)
        return {"name": name, "rc": rc, "wall_s": round(wall, 2), "out": out, "cmd": shlex.join(cmd),
                "stdout_tail": stdout[-2000:], "log_tail": "" if rc == 0 else log.read_text(errors="replace")[-3000:]}


def nlptl(*args: str) -> list[str]:
    return [sys.executable, "-m", "nlptl", *args, "--json", "--quiet"]


# Both sides: the Trainer's defaults where nlptl's differ (no warmup, no weight decay, linear decay, clip 1.0).
PINNED = ["--seed", "42", "--warmup-ratio", "0", "--weight-decay", "0", "--set", "max_grad_norm=1.0",
          "--save-every", "0", "--schedule", "linear", "--overwrite"]


# --------------------------------------------------------------------------- data and models


def prepare(run: Runner, s: dict, cases: list[str]) -> dict:
    """A corpus and a labelled split from nlptl's own assets, and the random-init checkpoints the cases need."""
    d = run.work / "data"
    d.mkdir(exist_ok=True)
    text = "\n".join((ASSETS / name).read_text(encoding="utf-8").strip() for name in ("general.txt", "reviews.txt"))
    corpus = d / "corpus.txt"
    # Repeated so that the longest blocks (1024 tokens) still give a few hundred of them: speed, not
    # what is learned, is measured here.
    corpus.write_text("\n".join([text] * s["repeat"]) + "\n", encoding="utf-8")
    paths = {"corpus": str(corpus), "train": str(ASSETS / "sentiment_train.csv"),
             "eval": str(ASSETS / "sentiment_eval.csv"), "test": str(ASSETS / "sentiment_test.csv")}
    # The starting checkpoints: nlptl pretrain (its tokenizer trained on the corpus, random init) with
    # one step, so that both sides of every comparison start from the very same saved weights.
    need = {"gpt": {"clm", "finetune", "compile", "fsdp"}, "bert": {"mlm"}, "encoder": {"finetune"}}
    for name, arch, size, block in (("gpt", "gpt", s["lm_size"], s["clm_block"]),
                                    ("bert", "bert", s["lm_size"], s["mlm_block"]),
                                    ("encoder", "bert", s["enc_size"], s["ft_len"])):
        if not need[name] & set(cases):
            continue
        out = run.work / "models" / name
        r = run(f"init-{name}", nlptl("pretrain", "--arch", arch, "--size", size, "--corpus", paths["corpus"],
                                      "--block-size", str(block), "--max-steps", "1", "--batch-size", "2",
                                      "--set", "max_eval_blocks=2", "--save-every", "0", "--out", str(out),
                                      "--overwrite"))
        if r["rc"] != 0:
            raise SystemExit(f"bench/gpu.py: could not build the {name} checkpoint:\n{r['log_tail']}")
        paths[name] = str(out)
    return paths


# --------------------------------------------------------------------------- cases


def case_chain(run: Runner, d: dict, s: dict) -> dict:
    steps = ["--max-steps", str(s["chain_steps"]), "--batch-size", "8", "--save-every", "0", "--overwrite"]
    results = []
    for arch in ("gpt", "bert"):
        root = run.work / "chain" / arch
        cmds = [
            ("pretrain", nlptl("pretrain", "--arch", arch, "--size", s["chain_size"], "--corpus", d["corpus"],
                               "--block-size", "128", "--set", "max_eval_blocks=8", "--out", str(root / "pretrain"),
                               *steps)),
            ("adapt", nlptl("adapt", "--from", str(root / "pretrain"), "--corpus", str(ASSETS / "reviews.txt"),
                            "--block-size", "128", "--set", "max_eval_blocks=8", "--out", str(root / "adapt"), *steps)),
            ("finetune", nlptl("finetune", "--from", str(root / "adapt"), "--task", "classification",
                               "--train", d["train"], "--eval", d["eval"], "--max-length", "64",
                               "--out", str(root / "finetune"), *steps)),
            ("evaluate", nlptl("evaluate", "--model", str(root / "finetune"), "--data", d["test"])),
            ("evaluate-lm", nlptl("evaluate", "--model", str(root / "adapt"), "--data", str(ASSETS / "reviews.txt"))),
            ("predict", nlptl("predict", "--model", str(root / "finetune"),
                              "A lovely, warm film.", "Dull and far too long.")),
        ]
        for stage, cmd in cmds:
            results.append({"arch": arch, "stage": stage, **run(f"chain-{arch}-{stage}", cmd)})
    return {"case": "chain", "ok": all(r["rc"] == 0 for r in results), "runs": results}


def flops_per_token(model_dir: str, kind: str, seq: int) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    from perf import reference_flops_per_token

    return reference_flops_per_token(model_dir, kind, seq)


def peak_flops() -> tuple[float, str]:
    """The card's dense bf16 peak where it is known, else a measured matmul rate (CPU: fp32)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, peak in PEAK_BF16.items():
            if key in name:
                return peak, f"{name}: dense bf16 peak {peak / 1e12:.0f} TFLOP/s (data sheet)"
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        peak = 10 * 2 * 8192**3 / (time.perf_counter() - t)
        return peak, f"{name}: measured bf16 matmul {peak / 1e12:.0f} TFLOP/s"
    sys.path.insert(0, str(REPO / "bench"))
    from perf import matmul_flops

    peak = matmul_flops(1024, 4)
    return peak, f"CPU: measured fp32 matmul {peak / 1e9:.0f} GFLOP/s"


def gpu_memory(run_dir: str) -> float | None:
    """Peak GPU memory nlptl recorded for the run (GiB), when it ran on a GPU."""
    try:
        record = json.loads((Path(run_dir) / "nlptl-run.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("metrics", {}).get("peak_gpu_memory_gib")


def compare(run: Runner, case: str, model: str, s: dict, d: dict, peak: float, label: str | None = None) -> dict:
    """nlptl against the reference recipe on the same work; scores from one scorer."""
    label = label or case
    lm = case in ("clm", "mlm")
    seq = s[f"{case}_block"] if lm else s["ft_len"]
    batch = s[f"{case}_batch"] if lm else s["ft_batch"]
    steps = s["steps"] if lm else s["ft_steps"]
    out_n, out_r = run.work / "runs" / f"{label}-nlptl", run.work / "runs" / f"{label}-ref"
    bf16 = [] if run.smoke else ["--bf16"]
    if lm:
        nl = nlptl("adapt", "--from", model, "--corpus", d["corpus"], "--objective", case, "--block-size", str(seq),
                   "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
                   "--set", "max_eval_blocks=4", "--out", str(out_n), *PINNED)
        ref = [sys.executable, str(REF / f"run_{case}.py"), "--model", model, "--train-file", d["corpus"],
               "--output-dir", str(out_r), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
               "--block-size", str(seq), "--seed", "42", *bf16]
    else:
        nl = nlptl("finetune", "--from", model, "--task", "classification", "--train", d["train"], "--eval", d["eval"],
                   "--max-length", str(seq), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
                   "--eval-every", str(steps), "--out", str(out_n), *PINNED)
        ref = [sys.executable, str(REF / "run_glue.py"), "--model", model, "--train-file", d["train"],
               "--output-dir", str(out_r), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
               "--block-size", str(seq), "--seed", "42", *bf16]
    a, b = run(f"{label}-nlptl", nl), run(f"{label}-reference", ref)
    row: dict = {"case": case, "label": label, "model": model, "seq": seq, "batch": batch, "steps": steps,
                 "nlptl": a, "reference": b, "ok": a["rc"] == 0 and b["rc"] == 0}
    if not row["ok"]:
        return row
    per_step = batch * (seq if lm else 1)
    ta, tb = a["out"]["train_seconds"], b["out"]["train_runtime"]
    row["throughput_nlptl"] = a["out"]["steps"] * per_step / ta
    row["throughput_reference"] = b["out"]["steps"] * per_step / tb
    row["ratio"] = row["throughput_nlptl"] / row["throughput_reference"]
    fl = flops_per_token(model, "finetune" if not lm else case, seq)
    tokens_per_unit = 1 if lm else seq  # finetune: examples/s x tokens per (padded) example
    row["mfu_nlptl"] = row["throughput_nlptl"] * tokens_per_unit * fl["flops_per_token"] / peak
    row["mfu_reference"] = row["throughput_reference"] * tokens_per_unit * fl["flops_per_token"] / peak
    row["peak_gpu_gib_nlptl"] = gpu_memory(str(out_n))
    kind = case if lm else "cls"
    data = d["corpus"] if lm else d["test"]
    sc = run(f"{label}-score", [sys.executable, str(REF / "score.py"), "--kind", kind, "--data", data,
                                "--block-size", str(seq), "--max-blocks", "16", str(out_n), str(out_r)])
    if sc["rc"] == 0:
        metric = "accuracy" if kind == "cls" else "perplexity"
        row["score_metric"] = metric
        row["score_nlptl"], row["score_reference"] = sc["out"][str(out_n)][metric], sc["out"][str(out_r)][metric]
    return row


def history_speed(run_dir: Path, per_step: int) -> dict:
    """Time to the first step and tokens/s after warm-up, from the run's own history (log_every=1:
    each row holds the cumulative tokens/s at that step)."""
    record = json.loads((run_dir / "nlptl-run.json").read_text())
    rows = [r for r in record.get("history", []) if "tokens_per_s" in r]
    elapsed = [(r["step"], r["step"] * per_step / r["tokens_per_s"]) for r in rows if r["tokens_per_s"] > 0]
    if len(elapsed) < 3:
        return {}
    warm = elapsed[len(elapsed) // 3]  # after a third of the steps
    last = elapsed[-1]
    return {"first_step_s": elapsed[0][1],
            "tokens_per_s_warm": (last[0] - warm[0]) * per_step / max(last[1] - warm[1], 1e-9)}


def case_compile(run: Runner, d: dict, s: dict) -> dict:
    steps, seq, batch = s["compile_steps"], s["clm_block"], s["clm_batch"]
    rows = {}
    for mode in ("eager", "compile"):
        out = run.work / "runs" / f"compile-{mode}"
        cmd = nlptl("adapt", "--from", d["gpt"], "--corpus", d["corpus"], "--objective", "clm",
                    "--block-size", str(seq), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "5e-5",
                    "--set", "max_eval_blocks=4",
                    "--set", "log_every=1", "--out", str(out), *PINNED, *(["--compile"] if mode == "compile" else []))
        r = run(f"compile-{mode}", cmd, env={"TORCH_LOGS": "recompiles"} if mode == "compile" else None, timeout=600)
        if r["rc"] == 0:
            r.update(history_speed(out, seq * batch))
        log = (run.logs / f"compile-{mode}.log").read_text(errors="replace")
        r["recompilations"] = log.count("Recompiling function")
        rows[mode] = r
    out = {"case": "compile", "ok": all(r["rc"] == 0 for r in rows.values()), **rows}
    if out["ok"] and rows["eager"].get("tokens_per_s_warm") and rows["compile"].get("tokens_per_s_warm"):
        out["speedup_warm"] = rows["compile"]["tokens_per_s_warm"] / rows["eager"]["tokens_per_s_warm"]
    return out


def case_fsdp(run: Runner, d: dict, s: dict) -> dict:
    """accelerate launch --use_fsdp --fsdp_version 2 with one process: the loop runs what accelerate.prepare
    returns, every rank writes its shards of a checkpoint, the final model is gathered once. Passes when the
    run exits 0, its log counts DTensor parameters and its weights match the unsharded run's."""
    import re

    import torch

    if not torch.cuda.is_available():
        return {"case": "fsdp", "ok": True, "skipped": "no GPU: accelerate leaves FSDP off on a CPU"}
    steps = 3 if run.smoke else 20
    args = ["adapt", "--from", d["gpt"], "--corpus", d["corpus"], "--objective", "clm", "--block-size",
            str(s["clm_block"]), "--max-steps", str(steps), "--batch-size", str(s["clm_batch"]), "--lr", "5e-5",
            "--set", "max_eval_blocks=4", "--precision", "fp32", "--seed", "42", "--save-every", str(steps // 2 or 1),
            "--overwrite", "--json"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--use_fsdp",
              "--fsdp_version", "2", "-m", "nlptl"]
    dirs = {side: run.work / "runs" / f"fsdp-{side}" for side in ("sharded", "plain")}
    rows = {"sharded": run("fsdp-sharded", launch + args + ["--out", str(dirs["sharded"])]),
            "plain": run("fsdp-plain", [sys.executable, "-m", "nlptl", *args, "--out", str(dirs["plain"])])}
    log = (run.logs / "fsdp-sharded.log").read_text(errors="replace")
    found = re.search(r"sharded: (\d+) parameters as DTensor", log)
    out = {"case": "fsdp", **rows, "dtensor_parameters": int(found.group(1)) if found else 0}
    if all(r["rc"] == 0 for r in rows.values()):
        from safetensors.torch import load_file

        a, b = (load_file(str(path / "model.safetensors")) for path in dirs.values())
        out["max_weight_diff"] = max((a[k] - b[k]).abs().max().item() for k in a) if a.keys() == b.keys() else None
    out["ok"] = (all(r["rc"] == 0 for r in rows.values()) and out["dtensor_parameters"] > 0
                 and out.get("max_weight_diff") is not None and out["max_weight_diff"] < 1e-3)
    return out


def case_tests(run: Runner, s: dict, pytest_args: str) -> dict:
    args = shlex.split(pytest_args) if pytest_args else (
        ["tests/test_device.py"] if run.smoke else ["-x", "-q", *(["-n", "8"] if _has("xdist") else [])])
    r = run("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], timeout=420)
    tail = r["stdout_tail"].strip().splitlines()
    r["summary"] = tail[-1] if tail else ""
    if r["rc"] != 0:  # the failures are in pytest's own output
        r["log_tail"] = r["stdout_tail"]
    return {"case": "tests", "ok": r["rc"] == 0, **r}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- report


def table(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"GPU check {env.get('date', '')}: {env.get('device', '')}; torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, accelerate {env.get('accelerate')}; peak: {env.get('peak', '')}"
             f"{' (SMOKE: tiny sizes)' if env.get('smoke') else ''}", ""]
    chain = results.get("chain")
    if chain:
        lines.append("Chain: " + ", ".join(f"{r['arch']} {r['stage']} {'ok' if r['rc'] == 0 else 'FAILED'}"
                                           for r in chain["runs"]))
        lines.append("")
    rows = [r for key in ("clm", "mlm", "finetune") for r in results.get(key, {}).get("rows", [])]
    if rows:
        ref = "reference" if env.get("smoke") else "reference (--bf16)"
        lines += [f"| case | nlptl | {ref} | ratio (target) | MFU nlptl / ref (target) | peak GPU GiB "
                  "| held-out nlptl / ref |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            if not r["ok"]:
                lines.append(f"| {r['label']} | FAILED | | | | | |")
                continue
            unit = "tok/s" if r["case"] != "finetune" else "ex/s"
            tr, tm = TARGETS[r["case"]]
            score = (f"{r['score_metric']} {r['score_nlptl']:.3g} / {r['score_reference']:.3g}"
                     if "score_metric" in r else "")
            lines.append(f"| {r['label']} | {r['throughput_nlptl']:,.0f} {unit} | "
                         f"{r['throughput_reference']:,.0f} {unit} | "
                         f"{r['ratio']:.2f} (≥{tr}) | {100 * r['mfu_nlptl']:.1f}% / {100 * r['mfu_reference']:.1f}%"
                         f"{f' (≥{100 * tm:.0f}%)' if tm else ''} | {r.get('peak_gpu_gib_nlptl') or '-'} | {score} |")
        lines.append("")
    comp = results.get("compile")
    if comp:
        e, c = comp.get("eager", {}), comp.get("compile", {})
        lines.append(f"--compile: first step {c.get('first_step_s', float('nan')):.1f} s (eager "
                     f"{e.get('first_step_s', float('nan')):.1f} s), "
                     f"warm {c.get('tokens_per_s_warm', 0):,.0f} vs eager "
                     f"{e.get('tokens_per_s_warm', 0):,.0f} tok/s (x{comp.get('speedup_warm', float('nan')):.2f}), "
                     f"recompilations {c.get('recompilations')}; {'ok' if comp['ok'] else 'FAILED'}")
    fsdp = results.get("fsdp")
    if fsdp:
        what = (f"skipped ({fsdp['skipped']})" if "skipped" in fsdp else
                f"{fsdp['dtensor_parameters']} DTensor parameters, max |weight difference| vs unsharded "
                f"{fsdp.get('max_weight_diff')}; {'ok' if fsdp['ok'] else 'FAILED'}")
        lines.append(f"FSDP, 1 process (accelerate's plugin): {what}")
    tests = results.get("tests")
    if tests:
        lines.append(f"Tests: {tests.get('summary', '')} "
                     f"({'ok' if tests['ok'] else 'FAILED'}, {tests['wall_s']:.0f} s)")
    return "\n".join(lines) + "\n"


def environment(smoke: bool, peak_text: str) -> dict:
    import accelerate
    import torch
    import transformers

    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "smoke": smoke,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
            "cuda": torch.version.cuda, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "peak": peak_text, "python": sys.version.split()[0],
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=REPO, check=False).stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any machine: keeps the check itself working")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "out" / "gpu"),
                   help="where the JSON files, table.md and logs.tar.gz go (default $OUT, else bench/out/gpu)")
    p.add_argument("--work", default="/tmp/nlptl-gpu", help="models, runs and caches (outside the repository)")
    p.add_argument("--steps", type=int, help="LM steps per side (default 100; --smoke 3)")
    p.add_argument("--pytest-args", default="", help="instead of the default test selection")
    p.add_argument("--table", help="re-print the table of a finished check's --out and exit")
    a = p.parse_args(argv)
    if a.table:
        results = {f.stem: json.loads(f.read_text()) for f in Path(a.table).glob("*.json")}
        print(table(results), end="")
        return 0
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    if bad := [c for c in cases if c not in CASES]:
        sys.exit(f"bench/gpu.py: unknown --cases {', '.join(bad)}; choose from {', '.join(CASES)}")
    s = sizes(a.smoke)
    if a.steps:
        s["steps"] = a.steps
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    peak, peak_text = peak_flops()
    results: dict = {"env": environment(a.smoke, peak_text)}
    print(f"bench/gpu.py: {results['env']['device']}, torch {results['env']['torch']}; {peak_text}", flush=True)
    run = Runner(work, a.smoke)
    t0 = time.perf_counter()
    d = prepare(run, s, cases) if set(cases) - {"tests"} else {}
    if "chain" in cases:
        results["chain"] = case_chain(run, d, s)
    for case in ("clm", "mlm"):
        if case in cases:
            model = d["gpt"] if case == "clm" else d["bert"]
            results[case] = {"case": case, "rows": [compare(run, case, model, s, d, peak)]}
    if "finetune" in cases:
        results["finetune"] = {"case": "finetune", "rows": [
            compare(run, "finetune", d["encoder"], s, d, peak, "finetune-encoder"),
            compare(run, "finetune", d["gpt"], s, d, peak, "finetune-gpt")]}
    if "compile" in cases:
        results["compile"] = case_compile(run, d, s)
    if "fsdp" in cases:
        results["fsdp"] = case_fsdp(run, d, s)
    if "tests" in cases:
        results["tests"] = case_tests(run, s, a.pytest_args)
    results["env"]["wall_s"] = round(time.perf_counter() - t0, 1)
    for name, value in results.items():
        (out / f"{name}.json").write_text(json.dumps(value, indent=1, default=str) + "\n")
    text = table(results)
    (out / "table.md").write_text(text)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(run.logs, arcname="logs")
    print(text, end="")
    failed = [k for k, v in results.items() if k != "env" and not _ok(v)]
    if failed:
        print(f"bench/gpu.py: FAILED: {', '.join(failed)} (logs in {out / 'logs.tar.gz'})", file=sys.stderr)
    return 1 if failed else 0


def _ok(v: dict) -> bool:
    return v.get("ok", True) and all(r.get("ok", True) for r in v.get("rows", []))


if __name__ == "__main__":
    raise SystemExit(main())
