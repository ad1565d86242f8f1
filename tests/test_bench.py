"""bench/compose.py (issue 24's rate table and chain arms) keeps working: its --smoke runs one cell of every
kind on tiny random-init models and data it writes itself (~15 s), through the workers' own code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "bench" / "compose.py"


@pytest.mark.slow  # a benchmark script's smoke run (13-54 s): make test PYTEST_ARGS="-m slow"
def test_compose_smoke_runs_every_kind_of_cell(tmp_path):
    proc = subprocess.run([sys.executable, str(COMPOSE), "--smoke", "--quiet", "--out", str(tmp_path / "smoke")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = {}
    for line in (tmp_path / "smoke" / "compose.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[r["id"]] = r
    cells = [r for r in recs.values() if r.get("kind") != "model"]
    assert len(cells) == 7 and all(r["ok"] for r in cells)
    assert {r["arm"] for r in cells if r["part"] == "chain"} == {"direct", "dapt", "tapt", "contrastive"}
    auto = recs["rates/minilm/n500/lrauto"]
    assert auto["lr_given"] == "auto" and auto["lr_used"] == auto["lr_found"] and auto["lr_auto"]["rule"]
    default = recs["rates/minilm/n200/lrdefault"]
    assert default["lr_used"] > 0 and default["n_train"] == 200 and "lr" not in default["finetune_options"]
    dapt = recs["chain/dapt/minilm/n100/s0"]
    assert dapt["adapt_options"]["max_steps"] and dapt["adapt"]["lm_head_added"]  # the bare encoder got a head
    if "probe" in dapt["adapt_options"]:  # the cell's own labels guard the adaptation, never the pool's
        assert dapt["adapt_options"]["probe"].endswith("train_100_seed0.csv") and "probe_accuracy" in dapt["adapt"]
    assert recs["model/gpt"]["metrics"]["perplexity"] > 0 and recs["model/gpt-pretrain"]["stage"] == "pretrain"
    assert "| minilm | 100 | dapt |" in proc.stdout and "| gpt | 2000 |" in proc.stdout
    assert "smoke: 7 cells ok" in proc.stdout


def test_compose_without_data_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(COMPOSE), "--data-root", str(tmp_path / "none"), "--out",
                           str(tmp_path / "work"), "--results", str(tmp_path / "r.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "data not found" in proc.stdout and "Nothing was run" in proc.stdout
    assert not (tmp_path / "r.jsonl").exists()
