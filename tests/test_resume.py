"""Exact resume: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends with the same
weights and metrics as an uninterrupted run, bitwise, for adapt and finetune, with gradient accumulation;
also for adapt on a streamed corpus (read over many times: the stream's position and pass are in the
checkpoint) and on a mixture of corpora."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPTL_HOME": "", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from nlptl.config import PretrainConfig
    from nlptl.stages import pretrain

    root = tmp_path_factory.mktemp("resume")
    pretrain.run(PretrainConfig(arch="gpt", size="tiny", corpus="sample-reviews", out=str(root / "base"), max_steps=2,
                                block_size=32, vocab_size=400, precision="fp32"))
    from conftest import general_sentences

    # Small: a streamed run of 300 steps reads it many times over.
    (root / "small.txt").write_text("\n".join(general_sentences(300, seed=9)) + "\n", encoding="utf-8")
    return root


def command(stage: str, base: Path, out: Path, *extra: str) -> list[str]:
    common = ["--out", str(out), "--save-every", "20", "--grad-accum", "2", "--batch-size", "4", "--precision", "fp32",
              "--json", "--quiet", "--seed", "3"]
    if stage.startswith("adapt"):
        corpus = {"adapt": "sample-reviews", "adapt-streaming": str(base / "small.txt"),
                  "adapt-mixture": f"sample-reviews:0.8,{base / 'small.txt'}:0.2"}[stage]
        args = ["adapt", "--from", str(base / "base"), "--corpus", corpus, "--block-size", "32",
                "--max-steps", "300", "--lr", "1e-3"]
        if stage == "adapt-streaming":
            args += ["--streaming", "--max-eval-blocks", "8"]
    else:
        args = ["finetune", "--from", str(base / "base"), "--task", "sample-sentiment", "--max-length", "24",
                "--max-steps", "240", "--eval-every", "60", "--lr", "1e-3"]
    return [sys.executable, "-m", "nlptl", *args, *common, *extra]


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def start_and_stop(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, wait for its first checkpoint, then send `sig` at a random moment after it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = out / "checkpoints" / "step-000020" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be interrupted; raise --max-steps")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def metric_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in csv.DictReader(f)]


def same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("stage", ["adapt", "finetune", "adapt-streaming",
                                   pytest.param("adapt-mixture", marks=pytest.mark.slow)])
def test_kill_9_then_resume_equals_uninterrupted(stage, base):
    whole = run(command(stage, base, base / f"{stage}-whole"))
    out = base / f"{stage}-killed"
    killed = start_and_stop(command(stage, base, out), out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "nlptl-run.json").exists()  # no half-written run that looks complete
    resumed = run(command(stage, base, out, "--resume"))
    same_weights(base / f"{stage}-whole", out)
    keys = ["perplexity", "perplexity_before", "loss", "steps", "train_tokens"] if stage.startswith("adapt") else \
        ["accuracy", "f1_macro", "loss", "steps", "best_step", "train_tokens"]
    assert {k: resumed[k] for k in keys} == {k: whole[k] for k in keys}
    # metrics.csv: the same rows as the uninterrupted run, none repeated (throughput aside: timing).
    assert metric_rows(out) == metric_rows(base / f"{stage}-whole")
    assert not (out / "checkpoints").exists()  # a finished run keeps its final model, not its checkpoints


def test_ctrl_c_saves_and_says_how_to_resume(base):
    out = base / "finetune-interrupted"
    stopped = start_and_stop(command("finetune", base, out), out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted at step") and "--resume" in message
    assert stopped.stdout == ""
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert 1 <= len(steps) <= 2  # --keep-last 2
    if not (base / "finetune-whole").exists():
        run(command("finetune", base, base / "finetune-whole"))
    run(command("finetune", base, out, "--resume"))
    same_weights(base / "finetune-whole", out)


def test_corrupted_checkpoint_is_skipped_for_the_previous_one(base, tmp_path):
    import shutil

    from nlptl.checkpoint import find_resume_checkpoint, save_training_state, verify_checkpoint
    from nlptl.errors import UsageError

    root = tmp_path / "run" / "checkpoints"
    for step in (10, 20):
        save_training_state(root, step, {"w.bin": lambda p, s=step: p.write_bytes(bytes([s]) * 64)}, {"step": step}, 2)
    assert find_resume_checkpoint(tmp_path / "run", None).name == "step-000020"
    (root / "step-000020" / "w.bin").write_bytes(b"torn")
    assert "corrupted" in verify_checkpoint(root / "step-000020")
    assert find_resume_checkpoint(tmp_path / "run", None).name == "step-000010"
    shutil.rmtree(root / "step-000010")
    with pytest.raises(UsageError, match="no intact checkpoint"):
        find_resume_checkpoint(tmp_path / "run", None)


def test_same_command_twice_gives_the_same_metrics(base):
    from nlptl.config import FinetuneConfig
    from nlptl.stages import finetune

    def once(out):
        r = finetune.run(FinetuneConfig(from_model=str(base / "base"), task="sample-sentiment", out=str(base / out),
                                        max_steps=6, eval_every=3, max_length=24, batch_size=8, precision="fp32"))
        return {k: r[k] for k in ("accuracy", "f1_macro", "loss", "best_step", "train_tokens")}

    assert once("twice-1") == once("twice-2")
    same_weights(base / "twice-1", base / "twice-2")


def test_sigterm_saves_and_exits_143(base):
    out = base / "adapt-terminated"
    stopped = start_and_stop(command("adapt", base, out), out, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "--resume" in stopped.stderr.strip().splitlines()[-1]
    from nlptl.checkpoint import find_resume_checkpoint

    latest = find_resume_checkpoint(out, None)  # intact, and newer than the first periodic checkpoint
    assert latest.name >= "step-000020"


def test_sighup_saves_and_exits_129(base):
    """A closed terminal or a dropped ssh session (SIGHUP) stops a run as SIGTERM does: a checkpoint at
    the step boundary, the resume hint, exit 128 + 1."""
    out = base / "adapt-hung-up"
    stopped = start_and_stop(command("adapt", base, out), out, signal.SIGHUP)
    assert stopped.returncode == 129, stopped.stderr[-2000:]
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted at step") and "--resume" in message
    from nlptl.checkpoint import find_resume_checkpoint

    assert find_resume_checkpoint(out, None).name >= "step-000020"


# A run whose data loader stalls after step 4 (a hung network file system, a dead worker): no step
# boundary comes after a stop signal.
STALL = """
import sys, time
import nlptl.train
from nlptl.cli import main

original = nlptl.train._Loop.epoch_batches

def stalled(self, loader):
    for batch in original(self, loader):
        if self.state.step >= 4:
            print("stalled", flush=True)
            while True:
                time.sleep(0.05)
        yield batch

nlptl.train._Loop.epoch_batches = stalled
main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig,signals,grace", [(signal.SIGTERM, 1, "1"), (signal.SIGINT, 2, "600")],
                         ids=["TERM-then-the-grace", "INT-twice"])
def test_a_stop_signal_ends_a_stalled_run_at_once(base, tmp_path, sig, signals, grace):
    """No step boundary after a stop signal: the run ends when the grace is over, or at a second signal,
    saying that it saved nothing now and keeps its last checkpoint."""
    out = tmp_path / "stalled"
    args = command("adapt", base, out)[3:]  # the arguments after `python -m nlptl`
    args.remove("--json")
    args[args.index("--save-every") + 1] = "2"
    proc = subprocess.Popen([sys.executable, "-c", STALL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**ENV, "NLPTL_STOP_GRACE": grace})
    assert proc.stdout.readline().strip() == "stalled", proc.communicate()[1][-2000:]
    t0 = time.time()
    for _ in range(signals):
        proc.send_signal(sig)
        time.sleep(0.5)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert time.time() - t0 < 15
    message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: stopped by {signal.Signals(sig).name} at once"), message
    assert "the last one (if any) is kept" in message and "--resume" in message
    from nlptl.checkpoint import find_resume_checkpoint

    assert find_resume_checkpoint(out, None).name == "step-000004"


def test_a_corrupted_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    from nlptl.checkpoint import checkpoints_dir, find_resume_checkpoint, save_training_state

    out = tmp_path / "run"
    for step in (10, 20):
        save_training_state(checkpoints_dir(out), step, {"model.safetensors": lambda p: p.write_bytes(b"weights")},
                            {"step": step}, keep_last=2)
    (checkpoints_dir(out) / "step-000020" / "model.safetensors").write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        assert find_resume_checkpoint(out, None).name == "step-000010"
    assert "skipped step-000020: model.safetensors is corrupted" in caplog.text
    assert "resuming from step-000010" in caplog.text
