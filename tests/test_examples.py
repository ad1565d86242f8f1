"""Every shipped example and the demo run, so they never rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_script_runs_the_chain(tmp_path):
    env = {**os.environ, "NLPTL_HOME": str(tmp_path / "runs"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "01-quickstart.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    evaluation, predictions = lines[0], lines[1:]
    assert evaluation["n_eval"] == 300
    assert evaluation["accuracy"] > 0.6  # a tiny from-scratch GPT chain must beat chance (0.5) on a balanced set
    assert [p["label"] for p in predictions] and all(p["label"] in ("negative", "positive") for p in predictions)
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir() if (p / "nlptl-run.json").exists())
    assert stages == ["adapt", "finetune", "pretrain"]


@pytest.mark.slow  # the quick-start script above runs the same chain through the CLI in the default suite
def test_demo_runs_offline_and_beats_chance(tmp_path, monkeypatch):
    from nlptl.stages import demo

    monkeypatch.setenv("NLPTL_HOME", str(tmp_path))
    result = demo.run(str(tmp_path / "demo"))
    assert result["pretrain"]["perplexity"] < result["pretrain"]["perplexity_before"]
    assert result["adapt"]["perplexity"] < result["adapt"]["perplexity_before"]
    assert result["test_accuracy"] > 0.7
    assert {p["label"] for p in result["predictions"]} <= {"negative", "positive"}
    for stage in ("pretrain", "adapt", "finetune"):
        assert (tmp_path / "demo" / stage / "nlptl-run.json").is_file()
