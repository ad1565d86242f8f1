"""Two CPU processes (torchrun, gloo) give the single-process results: the data is sharded, evaluation
gathers without duplicates, and only the main process writes files and prints JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPTL_HOME": ""}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from nlptl.config import PretrainConfig
    from nlptl.stages import pretrain

    root = tmp_path_factory.mktemp("ddp")
    pretrain.run(PretrainConfig(arch="bert", size="tiny", corpus="sample-reviews", out=str(root / "base"), max_steps=2,
                                block_size=32, vocab_size=400, precision="fp32"))
    return root


def run(args: list[str], processes: int) -> dict:
    launcher = [sys.executable, "-m", "nlptl"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "nlptl"]
    proc = subprocess.run(launcher + args + ["--json", "--quiet", "--precision", "fp32"], capture_output=True,
                          text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, from the main process only
    return json.loads(lines[0])


def test_adapt_and_finetune_with_two_processes_match_one(base):
    # The same global batch: 1 process x 8, or 2 processes x 4.
    adapt = ["adapt", "--from", str(base / "base"), "--corpus", "sample-reviews", "--block-size", "32",
             "--max-steps", "12", "--lr", "5e-4"]
    one = run(adapt + ["--batch-size", "8", "--out", str(base / "a1")], 1)
    two = run(adapt + ["--batch-size", "4", "--out", str(base / "a2")], 2)
    assert two["n_eval"] == one["n_eval"] and two["n_train"] == one["n_train"]
    assert two["train_tokens"] == one["train_tokens"] == 12 * 8 * 32
    assert two["perplexity_before"] == pytest.approx(one["perplexity_before"], rel=1e-4)  # same blocks, same masks
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=0.05)  # dropout streams differ per process

    finetune = ["finetune", "--from", str(base / "a2"), "--task", "sample-sentiment", "--max-length", "24",
                "--max-steps", "12", "--lr", "1e-3", "--eval-every", "12"]
    one = run(finetune + ["--batch-size", "16", "--out", str(base / "f1")], 1)
    two = run(finetune + ["--batch-size", "8", "--out", str(base / "f2")], 2)
    assert two["n_eval"] == one["n_eval"] == 300  # the padded last batch is not counted twice
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.08)
    assert (base / "f2" / "nlptl-run.json").is_file() and not list(base.glob(".f2*"))


def test_resume_with_two_processes_equals_uninterrupted(base):
    """SIGKILL every process of a 2-process run after a checkpoint, resume with 2 processes: same weights."""
    import torch
    from cli_helpers import kill_after_checkpoint
    from safetensors.torch import load_file

    args = ["adapt", "--from", str(base / "base"), "--corpus", "sample-reviews", "--block-size", "32", "--max-steps",
            "200", "--batch-size", "4", "--grad-accum", "2", "--save-every", "20"]
    whole = run(args + ["--out", str(base / "r-whole")], 2)
    out = base / "r-killed"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlptl"]
    kill_after_checkpoint(launcher + args + ["--out", str(out), "--json", "--quiet", "--precision", "fp32"], out, 40,
                          ENV)
    assert not (out / "nlptl-run.json").exists()
    resumed = run(args + ["--out", str(out), "--resume"], 2)
    assert {k: resumed[k] for k in ("perplexity", "steps", "train_tokens")} == \
        {k: whole[k] for k in ("perplexity", "steps", "train_tokens")}
    a, b = load_file(str(base / "r-whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_launch_runs_two_processes(base):
    """`accelerate launch -m nlptl` works too (on a CPU machine, --multi_gpu starts the gloo processes)."""
    out = base / "accelerate-launch"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "nlptl",
           "adapt", "--from", str(base / "base"), "--corpus", "sample-reviews", "--block-size", "32",
           "--max-steps", "3", "--batch-size", "4", "--out", str(out), "--json", "--quiet", "--precision", "fp32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["train_tokens"] == 3 * 2 * 4 * 32  # two processes, 4 blocks each per step
