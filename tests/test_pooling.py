"""Classifier pooling: shapes, and for every pooling a finetune directory that transformers' pipeline
loads and that agrees with `nlptl predict` on every input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nlptl.heads import pool

TEXTS = ["A warm, funny and clever film.", "Broken on arrival, avoid.", "ok",
         "It was fine, I suppose, nothing more " * 3]


def test_pool_shapes_and_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert pool(hidden, mask, "cls").shape == (2, 3)
    assert torch.equal(pool(hidden, mask, "last")[1], hidden[1, 1])  # last real token, not padding
    assert torch.allclose(pool(hidden, mask, "mean")[1], hidden[1, :2].mean(0))
    concat = pool(hidden, mask, "concat")
    assert concat.shape == (2, 9)
    assert torch.equal(concat[1, 3:6], hidden[1, :2].max(0).values)  # max ignores padding
    left = torch.tensor([[0, 0, 1, 1]])  # left padding: the last real token is still the last one
    assert torch.equal(pool(hidden[:1], left, "last")[0], hidden[0, 3])


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    from nlptl.config import FinetuneConfig, PretrainConfig
    from nlptl.stages import finetune, pretrain

    root = tmp_path_factory.mktemp("pooling")
    dirs = {}
    for arch in ("gpt", "bert"):
        pretrain.run(PretrainConfig(arch=arch, size="tiny", corpus="sample-reviews", out=str(root / arch),
                                    max_steps=2, block_size=64, vocab_size=500))
        for pooling in ("cls", "mean", "last", "concat"):
            out = root / f"{arch}-{pooling}"
            finetune.run(FinetuneConfig(from_model=str(root / arch), task="sample-sentiment", out=str(out), max_steps=3,
                                        pooling=pooling, lr=1e-3, max_length=32, eval_every=3))
            dirs[(arch, pooling)] = out
    return dirs


def test_every_pooling_agrees_with_the_pipeline(classifiers):
    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    # The pipeline runs in a fresh process: trust_remote_code registers the head class process-wide.
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "out = {}\n"
        "for d in sys.argv[2:]:\n"
        "    pl = pipeline('text-classification', model=d, trust_remote_code=True, truncation=True, max_length=32)\n"
        "    out[d] = [[r['label'], r['score']] for r in pl(json.loads(sys.argv[1]))]\n"
        "print(json.dumps(out))\n"
    )
    dirs = [str(d) for d in classifiers.values()]
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(TEXTS), *dirs], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_pipeline = json.loads(proc.stdout.strip().splitlines()[-1])
    for (arch, pooling), d in classifiers.items():
        # pipeline() knows nothing of nlptl's fitted temperature: compare with the raw scores
        ours = predict.run(PredictConfig(model=str(d), texts=TEXTS, raw_scores=True))
        theirs = from_pipeline[str(d)]
        assert [r["label"] for r in ours] == [t[0] for t in theirs], (arch, pooling)
        assert [r["score"] for r in ours] == pytest.approx([t[1] for t in theirs], abs=1e-5), (arch, pooling)
        stock = (arch, pooling) in (("bert", "cls"), ("gpt", "last"))
        assert (d / "modeling_nlptl.py").exists() != stock  # head code shipped only where needed
        config = json.loads((d / "config.json").read_text())
        assert ("auto_map" in config) != stock
        # nlptl's head under a model type of its own: stock transformers refuses it without trust_remote_code
        assert config["model_type"] == ({"gpt": "gpt2", "bert": "bert"}[arch] if stock else "nlptl")
        assert config["id2label"] == {"0": "negative", "1": "positive"}
