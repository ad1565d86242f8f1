"""`nlptl adapt` (stages/adapt.py): continue a language model on domain text."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import adapt_cfg

from nlptl.config import AdaptConfig, resolve
from nlptl.errors import UsageError
from nlptl.stages import adapt


@pytest.fixture(scope="module")
def memorized(checkpoints, repetitive_corpus, tmp_path_factory):
    """GPT-2 (CLM) and DistilBERT (MLM) trained on a corpus they can memorize, plus a one-step GPT-2
    run with another seed (same held-out blocks expected)."""
    root = tmp_path_factory.mktemp("adapt-memorized")
    runs = {}
    for family in ("gpt2", "distilbert"):
        runs[family] = adapt.run(adapt_cfg(from_model=str(checkpoints[family]), corpus=str(repetitive_corpus),
                                           out=str(root / family), max_steps=20, lr=3e-3, seed=1))
    runs["gpt2-seed2"] = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(repetitive_corpus),
                                             out=str(root / "gpt2-seed2"), max_steps=1, seed=2))
    return runs


@pytest.mark.parametrize("family", ["gpt2", "distilbert"])
def test_perplexity_falls_on_a_corpus_it_can_memorize(memorized, family):
    result = memorized[family]
    assert result["perplexity"] < 0.5 * result["perplexity_before"], result


def test_held_out_blocks_do_not_depend_on_the_seed(memorized):
    """Same model, same held-out blocks -> the same perplexity before training, whatever --seed."""
    a, b = memorized["gpt2"], memorized["gpt2-seed2"]
    assert a["config"]["seed"] != b["config"]["seed"]
    assert a["n_eval"] == b["n_eval"] and a["n_train"] == b["n_train"]
    assert a["perplexity_before"] == b["perplexity_before"]


def test_run_directory(adapted, corpus_file):
    out, result = adapted["gpt2"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "nlptl-run.json",
            "config.yaml"} <= names
    assert not [n for n in names if n.endswith((".bin", ".partial", ".tmp"))]
    assert not list(out.parent.glob(f".{out.name}*"))  # the staging directory is gone

    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "adapt"
    assert record["config"] == result["config"]
    assert record["metrics"]["perplexity"] == result["perplexity"]
    assert set(record["metrics"]) == set(result) - {"config", "lineage", "output_dir"}
    lineage = record["lineage"]
    assert lineage["corpus"]["sha256"] == hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    assert lineage["objective"] == "clm" and lineage["block_size"] == 32 and lineage["steps"] == 4
    assert lineage["tokens_seen"] == result["train_tokens"]
    assert [h["step"] for h in record["history"] if "loss" in h] == [2, 4]  # log_every 2

    # config.yaml is the resolved config, usable as --config to run it again.
    again = resolve(AdaptConfig, config_file=str(out / "config.yaml"))
    assert again == AdaptConfig(**record["config"])


def test_refuses_a_classifier(finetuned, corpus_file, tmp_path):
    with pytest.raises(UsageError, match="classifier"):
        adapt.run(adapt_cfg(from_model=str(finetuned["distilbert"][0]), corpus=str(corpus_file),
                            out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_refuses_a_block_size_beyond_the_positions(checkpoints, corpus_file, tmp_path):
    with pytest.raises(UsageError, match="--block-size 256 is larger than the model's 128 positions"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(tmp_path / "x"),
                            block_size=256))


def test_default_from_is_the_latest_pretrain_run(nlptl_home, corpus_file):
    with pytest.raises(UsageError, match="no completed pretrain run"):
        adapt.run(AdaptConfig(corpus=str(corpus_file)))


def test_existing_out_needs_overwrite(adapted, checkpoints, corpus_file):
    out, _ = adapted["gpt2"]
    with pytest.raises(UsageError, match="--overwrite"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out)))


def test_corpus_column_of_a_table(checkpoints, tmp_path):
    """Two text columns in one file: each gives its own blocks (the packing cache must not mix them up)."""
    import csv

    path = tmp_path / "two.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["a", "b"])
        w.writerows([[f"the red lamp {i} was painted blue", f"nine ten eleven twelve {i}"] for i in range(200)])
    results = {}
    for col in ("a", "b"):
        results[col] = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(path), text_column=col,
                                           out=str(tmp_path / col), max_steps=1))
    assert results["a"]["lineage"]["corpus"]["text_column"] == "a"
    # Different texts, so different held-out perplexities before training (same model).
    assert results["a"]["perplexity_before"] != results["b"]["perplexity_before"]


def test_mlm_evaluation_masks_are_fixed(checkpoints):
    """Each evaluation gets a fresh collator with the same seed: the same masked positions every time
    (perplexity before and after training compare like with like), unlike the training masks."""
    import torch
    from transformers import AutoTokenizer

    from nlptl.data.collate import lm_collators

    tok = AutoTokenizer.from_pretrained(checkpoints["distilbert"])
    examples = [{"input_ids": tok("the old baker painted a blue kettle near the river")["input_ids"]}] * 8
    train_collate, eval_collate = lm_collators(tok, "mlm", 0.3, seed=42)
    first, second = eval_collate()(examples), eval_collate()(examples)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert (first["labels"] != -100).any()
    assert not torch.equal(train_collate(examples)["labels"], train_collate(examples)["labels"])
    # ... and do not depend on the training seed: runs with different --seed are scored on the same masks.
    other_seed = lm_collators(tok, "mlm", 0.3, seed=43)[1]()(examples)
    assert torch.equal(other_seed["labels"], first["labels"])
    other_eval_seed = lm_collators(tok, "mlm", 0.3, seed=42, eval_seed=7)[1]()(examples)
    assert not torch.equal(other_eval_seed["labels"], first["labels"])


def _arrow_files() -> set:
    import os
    from pathlib import Path

    return {p for p in Path(os.environ["HF_DATASETS_CACHE"]).rglob("*.arrow")}


def test_unchanged_corpus_reuses_the_cached_blocks(checkpoints, tmp_path):
    """A second run on an unchanged corpus writes no new Arrow file (nothing is tokenized or packed
    again) and records its preprocessing time; a changed corpus is tokenized anew."""
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n".join(f"review {i}: the plot was slow but the actors were fine ." for i in range(120)) + "\n")

    def run(name):
        return adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus), out=str(tmp_path / name),
                                   max_steps=1))

    first = run("a")
    files = _arrow_files()
    second = run("b")
    assert _arrow_files() == files
    assert second["n_train"] == first["n_train"] and second["perplexity_before"] == first["perplexity_before"]
    assert first["preprocess_seconds"] > 0 and second["preprocess_seconds"] > 0
    record = json.loads((tmp_path / "b" / "nlptl-run.json").read_text())
    assert record["metrics"]["preprocess_seconds"] == second["preprocess_seconds"]
    with corpus.open("a") as f:
        f.write("a new review that changes the corpus .\n")
    run("c")
    assert _arrow_files() - files


@pytest.mark.slow  # compiling takes about a minute per model on 2 cores
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_compile_gives_the_eager_loss(checkpoints, corpus_file, tmp_path, family):
    """--compile (torch.compile of the model) trains like eager mode: the same training losses step by
    step and the same held-out loss, for CLM and for the masked-only MLM wrapper."""
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        result = adapt.run(adapt_cfg(from_model=str(checkpoints[family]), corpus=str(corpus_file), out=str(out),
                                     max_steps=3, log_every=1, compile=compiled))
        history = json.loads((out / "nlptl-run.json").read_text())["history"]
        losses[compiled] = [h["loss"] for h in history if "loss" in h] + [result["loss"]]
        assert result["config"]["compile"] is compiled
    assert len(losses[True]) == 4
    # Nearly, not exactly: compiled dropout draws from inductor's own random stream.
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)


@pytest.mark.slow  # one compilation, about a minute on 2 cores
def test_compiled_lm_training_compiles_one_graph(checkpoints, corpus_file, tmp_path):
    """Over several epochs whose last batch would be shorter, with held-out scoring before and after:
    one graph, no recompilation (fixed batch shapes; evaluation runs eager)."""
    from torch._dynamo.utils import counters

    counters.clear()
    out = tmp_path / "compiled"
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out),
                                 batch_size=7, epochs=2.5, max_steps=None, compile=True))
    assert result["n_train"] % 7 != 0 and result["steps"] == int(2.5 * (result["n_train"] // 7))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
