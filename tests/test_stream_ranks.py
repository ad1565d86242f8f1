"""--streaming with several processes (issue 27): each process reads its own share of the stream, none
read twice and none skipped across ranks; a mixture keeps its shares on every rank; the stream's
position is saved for every rank, so a resumed run continues each rank exactly where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import adapt_cfg


def blocks(cfg, corpora, tokenizer, rank: int, world: int) -> list[tuple]:
    """One pass of the training stream as process `rank` of `world` reads it."""
    from nlptl.stages.lm import blocks_of

    accelerator = SimpleNamespace(num_processes=world, process_index=rank)
    stream, _, _ = blocks_of(cfg, corpora, tokenizer, "clm", accelerator)
    return [tuple(b["input_ids"]) for b in stream]


@pytest.fixture(scope="module")
def gpt_tokenizer(checkpoints):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoints["gpt2"])


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_streams_its_own_share(corpus_file, gpt_tokenizer, world):
    from nlptl.data.corpora import resolve_corpora

    cfg = adapt_cfg(corpus=str(corpus_file), streaming=True, max_eval_blocks=4, max_steps=2)
    corpora = resolve_corpora(cfg.corpus)
    whole = blocks(cfg, corpora, gpt_tokenizer, 0, 1)
    shares = [blocks(cfg, corpora, gpt_tokenizer, r, world) for r in range(world)]
    assert len(whole) > 2 * world
    assert sorted(b for share in shares for b in share) == sorted(whole)  # none read twice, none skipped
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # an even split


def test_a_mixture_keeps_its_shares_on_every_rank(corpus_file, repetitive_corpus, gpt_tokenizer):
    from nlptl.data.corpora import resolve_corpora

    cfg = adapt_cfg(corpus=f"{corpus_file}:0.7,{repetitive_corpus}:0.3", streaming=True, max_eval_blocks=4,
                    max_steps=2)
    corpora = resolve_corpora(cfg.corpus)
    one_corpus = SimpleNamespace(**{**cfg.__dict__, "corpus": str(corpus_file)})
    first = set(blocks(one_corpus, corpora[:1], gpt_tokenizer, 0, 1))
    for rank in range(2):
        share = blocks(cfg, corpora, gpt_tokenizer, rank, 2)
        from_first = sum(b in first for b in share) / len(share)
        assert 0.5 < from_first < 0.9, (rank, from_first)  # about 0.7 of each rank's blocks


def test_a_rank_resumes_its_stream_where_it_stopped(corpus_file, gpt_tokenizer):
    from nlptl.data.corpora import resolve_corpora
    from nlptl.stages.lm import blocks_of

    cfg = adapt_cfg(corpus=str(corpus_file), streaming=True, max_eval_blocks=4, max_steps=2)
    accelerator = SimpleNamespace(num_processes=2, process_index=1)
    stream, _, _ = blocks_of(cfg, resolve_corpora(cfg.corpus), gpt_tokenizer, "clm", accelerator)
    it = iter(stream)
    head = [tuple(next(it)["input_ids"]) for _ in range(3)]
    state = stream.state_dict()
    rest = [tuple(b["input_ids"]) for b in it]
    again, _, _ = blocks_of(cfg, resolve_corpora(cfg.corpus), gpt_tokenizer, "clm", accelerator)
    again.load_state_dict(state)
    assert [tuple(b["input_ids"]) for b in again] == rest and head[-1] not in rest


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPTL_HOME": ""}


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlptl",
           *map(str, args), "--json", "--quiet", "--precision", "fp32"]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


STREAM = ["--streaming", "--batch-size", "2", "--block-size", "32", "--max-eval-blocks", "4"]


def test_two_processes_stream(checkpoints, corpus_file, tmp_path):
    """Was: refused ("--streaming runs on one process"). Now each rank reads its share."""
    proc = torchrun(["adapt", "--from", checkpoints["gpt2"], "--corpus", corpus_file, *STREAM, "--max-steps", "4",
                     "--out", tmp_path / "s2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 4 and result["train_tokens"] == 4 * 2 * 2 * 32  # two processes, 2 blocks each


@pytest.mark.slow
def test_a_killed_two_process_stream_resumes_exactly(checkpoints, corpus_file, tmp_path):
    """SIGKILL both processes of a streamed run after a checkpoint; resumed with two processes, each rank
    continues its own shard from its saved position: the weights equal the uninterrupted run's."""
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    # Two files of different lengths: each rank reads a whole file, so their positions differ.
    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(lines[: len(lines) * 2 // 3]) + "\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n".join(lines[len(lines) * 2 // 3:]) + "\n", encoding="utf-8")
    args = ["adapt", "--from", checkpoints["gpt2"], "--corpus", corpus, *STREAM, "--max-steps", "120",
            "--save-every", "20"]
    whole = torchrun([*args, "--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlptl",
           *map(str, args), "--out", str(out), "--json", "--quiet", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-000040" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint"
        time.sleep(0.05)
    streams = torch.load(out / "checkpoints" / "step-000040" / "rng.pt", weights_only=False)["streams"]
    assert len(streams) == 2 and streams[0] != streams[1]  # each rank's own position
    subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    proc.wait(timeout=60)
    resumed = torchrun([*args, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
