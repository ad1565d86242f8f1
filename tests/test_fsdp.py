"""Sharded training (FSDP2, issue 27) on two CPU processes (torchrun, gloo): the parameters really are
DTensors, the weights match an unsharded run, every rank writes its shards of a checkpoint, a killed run
resumes bit-identically on the same number of processes and is refused in one line on another.
accelerate leaves FSDP off on a CPU, so these runs shard with nlptl's own --fsdp (sharding.shard);
saving, resuming and gathering the final model are the same code under accelerate's FSDP plugin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import kill_after_checkpoint
from conftest import build_checkpoint
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPTL_HOME": ""}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlptl"]
ASSETS = Path(__file__).resolve().parents[1] / "nlptl" / "assets"
NO_DROPOUT = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    """Tiny checkpoints: without dropout (whose streams differ per process) to compare weights across
    process counts, and a BERT with its dropout for exact resumption."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {"root": root, "bert": build_checkpoint("bert", root / "bert")}
    for family in ("gpt2", "bert"):
        path = build_checkpoint(family, root / f"{family}-still")
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **{k: 0.0 for k in NO_DROPOUT if k in config}}))
        out[f"{family}-still"] = path
    return out


def launch(args: list, processes: int, ok: bool = True) -> tuple[dict | None, str]:
    """(the --json result, the log) of `nlptl ARGS` in 1 process or 2 under torchrun."""
    launcher = [sys.executable, "-m", "nlptl"] if processes == 1 else TORCHRUN
    proc = subprocess.run(launcher + [str(a) for a in args] + ["--json", "--precision", "fp32"], capture_output=True,
                          text=True, env=ENV, timeout=600)
    if not ok:
        assert proc.returncode != 0
        return None, proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, from the main process only
    return json.loads(lines[0]), proc.stderr


def sharded(log: str) -> int:
    """The number of parameters the run's log says it trained as DTensors (0: none)."""
    counts = {int(n) for n in re.findall(r"sharded: (\d+) parameters as DTensor", log)}
    assert len(counts) <= 1, counts
    return counts.pop() if counts else 0


def weights(run) -> dict:
    return load_file(str(run / "model.safetensors"))


def close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_clm_adapt_sharded_over_two_processes_matches_one_process(bases):
    """The same global batch: 1 process x 8 blocks, or 2 sharded processes x 4. With one process --fsdp
    shards nothing, and says so."""
    root = bases["root"]
    args = ["adapt", "--from", bases["gpt2-still"], "--corpus", "sample-reviews", "--block-size", "32", "--max-steps",
            "12", "--lr", "5e-4", "--fsdp"]
    one, one_log = launch(args + ["--batch-size", "8", "--out", root / "clm-1"], 1)
    two, two_log = launch(args + ["--batch-size", "4", "--out", root / "clm-2"], 2)
    assert "--fsdp: one process, nothing to shard; training unsharded" in one_log and sharded(one_log) == 0
    assert sharded(two_log) > 0  # really sharded: the parameters were DTensors
    assert two["train_tokens"] == one["train_tokens"] == 12 * 8 * 32
    assert close(weights(root / "clm-1"), weights(root / "clm-2"), atol=1e-5)  # float tolerance (sums reordered)
    # The final model is one plain Hugging Face checkpoint, and no checkpoint is left behind.
    assert (root / "clm-2" / "config.json").is_file() and not (root / "clm-2" / "checkpoints").exists()


@pytest.mark.slow
def test_mlm_adapt_and_finetune_sharded_match_unsharded_processes(bases):
    """MLM masks per process: a sharded run equals the unsharded (DDP) run of the same two processes; a
    finetune keeps its best evaluation (sharded best weights) as the DDP run does."""
    root = bases["root"]
    adapt = ["adapt", "--from", bases["bert-still"], "--corpus", "sample-reviews", "--block-size", "32",
             "--max-steps", "8", "--lr", "5e-4", "--batch-size", "4"]
    _, log = launch(adapt + ["--fsdp", "--out", root / "mlm-fsdp"], 2)
    launch(adapt + ["--out", root / "mlm-ddp"], 2)
    assert sharded(log) > 0
    assert close(weights(root / "mlm-fsdp"), weights(root / "mlm-ddp"), atol=1e-5)

    finetune = ["finetune", "--from", root / "mlm-ddp", "--task", "sample-sentiment", "--max-length", "24",
                "--max-steps", "8", "--lr", "1e-3", "--eval-every", "4", "--batch-size", "8"]
    fsdp, log = launch(finetune + ["--fsdp", "--out", root / "ft-fsdp"], 2)
    ddp, _ = launch(finetune + ["--out", root / "ft-ddp"], 2)
    assert sharded(log) > 0
    assert fsdp["best_step"] == ddp["best_step"] and fsdp["accuracy"] == pytest.approx(ddp["accuracy"])
    assert close(weights(root / "ft-fsdp"), weights(root / "ft-ddp"), atol=1e-5)


@pytest.mark.slow
def test_lora_and_contrastive_adapt_sharded_match_unsharded(bases):
    root = bases["root"]
    lora = ["adapt", "--from", bases["gpt2-still"], "--corpus", "sample-reviews", "--block-size", "32", "--max-steps",
            "6", "--lr", "1e-3", "--batch-size", "4", "--lora"]
    _, log = launch(lora + ["--fsdp", "--out", root / "lora-fsdp"], 2)
    launch(lora + ["--out", root / "lora-ddp"], 2)
    assert sharded(log) > 0
    a, b = (load_file(str(root / run / "adapter" / "adapter_model.safetensors")) for run in ("lora-fsdp", "lora-ddp"))
    assert close(a, b, atol=1e-5)

    contrastive = ["adapt", "--objective", "contrastive", "--from", bases["bert-still"], "--corpus",
                   "task:classification", "--train", ASSETS / "sentiment_train.csv", "--max-steps", "6",
                   "--batch-size", "8"]
    _, log = launch(contrastive + ["--fsdp", "--out", root / "pairs-fsdp"], 2)
    launch(contrastive + ["--out", root / "pairs-ddp"], 2)
    assert sharded(log) > 0
    assert close(weights(root / "pairs-fsdp"), weights(root / "pairs-ddp"), atol=1e-5)


# A sharded MLM run with dropout, kept-best selection (--patience) and a checkpoint every 10 steps.
RESUMABLE = ["adapt", "--corpus", "sample-reviews", "--block-size", "32", "--max-steps", "40", "--batch-size", "4",
             "--grad-accum", "2", "--save-every", "10", "--eval-every", "10", "--patience", "50", "--fsdp"]


@pytest.fixture(scope="module")
def killed(bases):
    """A 2-process sharded run killed with SIGKILL (every process) after its checkpoint at step 20."""
    out = bases["root"] / "killed"
    cmd = TORCHRUN + [str(a) for a in RESUMABLE] + ["--from", str(bases["bert"]), "--out", str(out), "--json",
                                                    "--quiet", "--precision", "fp32"]
    kill_after_checkpoint(cmd, out, 20, ENV)
    assert not (out / "nlptl-run.json").exists()
    return out


def test_every_rank_writes_its_shards_into_a_published_checkpoint(killed):
    from nlptl.checkpoint import verify_checkpoint

    step = killed / "checkpoints" / "step-000020"
    names = {p.name for p in step.iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "sharding.json", "manifest.json"} <= names
    assert "model.safetensors" not in names and "optimizer.pt" not in names
    assert json.loads((step / "sharding.json").read_text()) == {"world_size": 2, "best": True}
    assert verify_checkpoint(step) is None  # the shards are in the manifest
    assert not list(killed.glob("checkpoints/.*"))  # nothing staged is left beside the published checkpoints


def test_a_sharded_checkpoint_on_another_number_of_processes_is_refused_in_one_line(bases, killed):
    _, log = launch(RESUMABLE + ["--from", bases["bert"], "--out", killed, "--resume", "--quiet"], 1, ok=False)
    lines = log.strip().splitlines()
    assert len(lines) == 1 and "was written by 2 process(es) with sharded weights (FSDP); resume it with 2" in lines[0]
    assert "(this run has 1, unsharded)" in lines[0]


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_bit_identical_to_an_uninterrupted_one(bases, killed):
    root = bases["root"]
    whole, _ = launch(RESUMABLE + ["--from", bases["bert"], "--out", root / "whole", "--quiet"], 2)
    resumed, log = launch(RESUMABLE + ["--from", bases["bert"], "--out", killed, "--resume"], 2)
    assert "resuming from" in log and sharded(log) > 0
    assert {k: resumed[k] for k in ("perplexity", "steps", "train_tokens", "best_step")} == \
        {k: whole[k] for k in ("perplexity", "steps", "train_tokens", "best_step")}
    a, b = weights(root / "whole"), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- in one process


def test_deepspeed_and_fsdp_version_1_are_refused_in_one_line(tmp_path):
    from accelerate.utils import DistributedType

    from nlptl.config import TrainConfig
    from nlptl.errors import UsageError
    from nlptl.train import train

    cfg = TrainConfig(max_steps=1)
    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(UsageError, match=r"^nlptl does not support DeepSpeed yet; use FSDP: .*--fsdp_version 2"):
        train(deepspeed, None, [], None, cfg, description="adapt")
    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False)
    with pytest.raises(UsageError, match=r"^nlptl supports FSDP version 2 only"):
        train(fsdp1, None, [], None, cfg, description="adapt")


@pytest.mark.parametrize("family, blocks", [("bert", "bert.encoder.layer"), ("gpt2", "transformer.h")])
def test_the_units_of_sharding_are_the_transformer_blocks(checkpoints, family, blocks):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from nlptl.sharding import transformer_blocks

    model = (AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM).from_pretrained(checkpoints[family])
    assert transformer_blocks(model) == list(model.get_submodule(blocks))


def test_a_checkpoint_laid_out_otherwise_is_refused(tmp_path, monkeypatch):
    from torch import nn

    from nlptl import sharding
    from nlptl.errors import NlptlError

    (tmp_path / "sharding.json").write_text(json.dumps({"world_size": 2, "best": False}))
    monkeypatch.setattr(sharding, "is_sharded", lambda model: True)  # as a model sharded over 3 processes
    with pytest.raises(NlptlError, match=r"written by 2 process\(es\) with sharded weights \(FSDP\); resume it with "
                                         r"2, sharded \(this run has 3\)$"):
        sharding.check_layout(tmp_path, nn.Linear(2, 2), 3)
    sharding.check_layout(tmp_path, nn.Linear(2, 2), 2)
    (tmp_path / "sharding.json").unlink()
    with pytest.raises(NlptlError, match="holds unsharded weights and this run shards them"):
        sharding.check_layout(tmp_path, nn.Linear(2, 2), 2)
