"""bench/gpu.py, the one prepared GPU check, keeps working without a GPU: its --smoke runs here.

The default suite runs one comparison case end to end (checkpoint built, nlptl and the Trainer recipe
trained, both scored, MFU, the JSON and the table); `-m slow` runs every case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def gpu_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


@pytest.mark.slow  # 30-45 s: the benchmark script's CPU smoke, not nlptl's behaviour (make test PYTEST_ARGS="-m slow")
def test_gpu_check_smoke_one_comparison(tmp_path):
    proc, out = gpu_check(tmp_path, "--cases", "mlm")
    row = json.loads((out / "mlm.json").read_text())["rows"][0]
    assert row["ok"] and row["nlptl"]["rc"] == 0 and row["reference"]["rc"] == 0
    assert row["throughput_nlptl"] > 0 and row["throughput_reference"] > 0
    assert 0 < row["mfu_nlptl"] < 1 and 0 < row["mfu_reference"] < 1
    # Both sides start from one checkpoint and are scored on the same blocks and masks by one scorer.
    assert row["score_metric"] == "perplexity" and row["score_nlptl"] > 1 and row["score_reference"] > 1
    env = json.loads((out / "env.json").read_text())
    assert env["smoke"] is True and env["torch"]
    table = (out / "table.md").read_text()
    assert "| mlm |" in table and "SMOKE" in table and table in proc.stdout
    assert (out / "logs.tar.gz").is_file()
    again = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--table", str(out)],
                           capture_output=True, text=True, check=True)
    assert again.stdout == table


def test_gpu_check_rejects_unknown_cases(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--cases", "mlm,nope",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown --cases nope" in proc.stderr


@pytest.mark.slow
def test_gpu_check_smoke_every_case(tmp_path):
    _, out = gpu_check(tmp_path)
    chain = json.loads((out / "chain.json").read_text())
    assert chain["ok"] and {(r["arch"], r["stage"]) for r in chain["runs"]} >= {
        ("gpt", "pretrain"), ("bert", "adapt"), ("bert", "finetune"), ("gpt", "predict")}
    comp = json.loads((out / "compile.json").read_text())
    assert comp["ok"] and comp["compile"]["first_step_s"] > 0 and comp["compile"]["recompilations"] >= 0
    assert json.loads((out / "tests.json").read_text())["ok"]
