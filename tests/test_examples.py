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
    env = {**os.environ, "NLPTL_HOME": str(tmp_path / "runs"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
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


# Tiny settings for the recipes: every stage a couple of steps on short blocks (the defaults are real runs).
TINY_RECIPE = ["--set", "max_steps=2", "--set", "batch_size=4", "--set", "block_size=32", "--set", "precision=fp32",
               "--set", "general.vocab_size=300", "--set", "classifier.max_length=32"]


def nlptl(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NLPTL_HOME": str(cwd / "home"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nlptl", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("recipe,stages", [
    ("02-ulmfit-gpt.yaml", ["general", "domain", "classifier", "test"]),
    ("03-dapt-tapt-bert.yaml", ["general", "dapt", "tapt", "classifier", "test"]),
])
def test_recipe_examples_run_and_then_reuse(tmp_path, recipe, stages):
    path = str(ROOT / "examples" / recipe)
    args = ["run", path, "--set", f"out={tmp_path / 'runs'}", *TINY_RECIPE, "--json", "--quiet"]
    proc = nlptl(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert [s["name"] for s in result["stages"]] == stages
    assert all(s["action"] == "run" for s in result["stages"])
    test = result["stages"][-1]["result"]
    assert test["n_eval"] == 300 and 0 <= test["accuracy"] <= 1  # the sample task's test file
    again = nlptl(["run", path, "--set", f"out={tmp_path / 'runs'}", *TINY_RECIPE, "--dry-run", "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [s["action"] for s in json.loads(again.stdout)["stages"]] == ["reuse"] * (len(stages) - 1) + ["run"]


def run_script(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NLPTL_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(ROOT / "examples" / name), str(tmp_path / "work")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
