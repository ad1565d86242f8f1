"""`nlptl pretrain` (stages/pretrain.py): from scratch (tokenizer + tiny model), or from a checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import adapt_cfg, pretrain_cfg

from nlptl.config import PretrainConfig
from nlptl.errors import UsageError
from nlptl.stages import adapt, pretrain


@pytest.fixture(scope="module")
def scratch(repetitive_corpus, tmp_path_factory):
    """arch -> (run dir, result): tiny models trained from scratch on a corpus they can memorize."""
    root = tmp_path_factory.mktemp("pretrain")
    return {arch: (root / arch, pretrain.run(pretrain_cfg(arch=arch, corpus=str(repetitive_corpus),
                                                          out=str(root / arch), max_steps=20, lr=3e-3)))
            for arch in ("gpt", "bert")}


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_from_scratch(scratch, arch, repetitive_corpus):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    out, result = scratch[arch]
    assert result["perplexity"] < 0.5 * result["perplexity_before"], result
    assert result["steps"] == 20
    # Whole blocks only (an epoch's last batch may be short): no padding is ever counted.
    assert result["train_tokens"] % 32 == 0 and 0 < result["train_tokens"] <= 20 * 4 * 32

    cls = AutoModelForCausalLM if arch == "gpt" else AutoModelForMaskedLM
    model = cls.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64  # the tiny preset
    assert model.config.vocab_size == len(tokenizer) <= 300
    if arch == "bert":
        assert tokenizer.mask_token == "[MASK]"
        # Texts are wrapped as BERT's are, so blocks and classifier inputs start with [CLS].
        assert tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"]) == ["[CLS]", "the", "cat", "[SEP]"]
    else:
        assert tokenizer.eos_token == "<|endoftext|>"

    record = json.loads((out / "nlptl-run.json").read_text())
    lineage = record["lineage"]
    assert record["stage"] == "pretrain"
    assert lineage["source"] == "scratch" and lineage["arch"] == arch and lineage["size"] == "tiny"
    assert lineage["vocab_size"] == len(tokenizer)
    assert lineage["corpus"]["sha256"] == hashlib.sha256(repetitive_corpus.read_bytes()).hexdigest()
    assert lineage["objective"] == ("clm" if arch == "gpt" else "mlm")
    assert "base_model" not in lineage


def test_scratch_tokenizer_is_reused_for_the_same_corpus(scratch, repetitive_corpus, tmp_path):
    """The tokenizer cache lives under $NLPTL_HOME; a second run on the same corpus finds it."""
    out, _ = scratch["gpt"]
    cached = list((tmp_path / "nlptl-home").glob(".cache/tokenizers/*/tokenizer.json"))
    assert cached == []  # this test's NLPTL_HOME is empty
    pretrain.run(pretrain_cfg(arch="gpt", corpus=str(repetitive_corpus), out=str(tmp_path / "a"), max_steps=1))
    cached = list((tmp_path / "nlptl-home").glob(".cache/tokenizers/*/tokenizer.json"))
    assert len(cached) == 1
    pretrain.run(pretrain_cfg(arch="gpt", corpus=str(repetitive_corpus), out=str(tmp_path / "b"), max_steps=1))
    assert list((tmp_path / "nlptl-home").glob(".cache/tokenizers/*/tokenizer.json")) == cached
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_objective_must_match_the_arch(repetitive_corpus, tmp_path):
    with pytest.raises(UsageError, match="--arch gpt trains with clm"):
        pretrain.run(pretrain_cfg(arch="gpt", objective="mlm", corpus=str(repetitive_corpus), out=str(tmp_path / "x")))


def test_from_a_checkpoint_without_corpus_copies_it(checkpoints, tmp_path):
    src = checkpoints["gpt2"]
    out = tmp_path / "general"
    result = pretrain.run(PretrainConfig(from_model=str(src), out=str(out)))
    assert result["steps"] == 0 and result["perplexity"] is None and result["output_dir"] == str(out)
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "pretrain" and record["metrics"] == {}
    assert record["lineage"]["source"] == "checkpoint"
    assert record["lineage"]["base_model"] == str(src.resolve())
    assert (out / "config.yaml").is_file()


def test_from_a_checkpoint_with_corpus_continues_training(checkpoints, corpus_file, tmp_path):
    result = pretrain.run(pretrain_cfg(from_model=str(checkpoints["distilbert"]), corpus=str(corpus_file),
                                       out=str(tmp_path / "cont"), max_steps=2))
    assert result["steps"] == 2
    assert result["lineage"]["source"] == "checkpoint, continued"
    assert result["lineage"]["objective"] == "mlm"  # the checkpoint's family decides, not --arch


def test_refuses_a_classifier(finetuned, tmp_path):
    with pytest.raises(UsageError, match="classifier"):
        pretrain.run(PretrainConfig(from_model=str(finetuned["gpt2"][0]), out=str(tmp_path / "x")))


def test_adapt_nests_the_pretrain_record(scratch, corpus_file, tmp_path):
    """Lineage: adapt's record carries the pretrain lineage as its parent."""
    pre_out, _ = scratch["bert"]
    pre_record = json.loads((pre_out / "nlptl-run.json").read_text())
    result = adapt.run(adapt_cfg(from_model=str(pre_out), corpus=str(corpus_file), out=str(tmp_path / "adapt"),
                                 max_steps=1))
    lineage = result["lineage"]
    assert lineage["stage"] == "adapt" and lineage["base_model"] == str(pre_out.resolve())
    assert lineage["parent"] == pre_record["lineage"]
    assert lineage["parent"]["corpus"]["sha256"] != lineage["corpus"]["sha256"]
    assert json.loads((tmp_path / "adapt" / "nlptl-run.json").read_text())["lineage"]["parent"] == pre_record["lineage"]
