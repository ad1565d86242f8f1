"""Corpora at scale: `nlptl preprocess` and the block cache (stages/preprocess.py, data/lm.py), mixtures
of corpora (`--corpus A:0.8,B:0.2`), hub corpora by name (`hf:NAME[:CONFIG][@SPLIT]`) and --streaming.
Exact resume of streamed and mixed runs after kill -9 is in test_resume.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import adapt_cfg, general_sentences

from nlptl.config import AdaptConfig, PreprocessConfig
from nlptl.errors import NlptlError, UsageError


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory):
    """2,600 short documents: three packing batches of 1,000, so that two processes share the work."""
    path = tmp_path_factory.mktemp("many") / "many.txt"
    path.write_text("\n".join(general_sentences(2600, seed=5)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2_tok(checkpoints):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoints["gpt2"])


def test_blocks_are_the_same_whatever_the_number_of_processes(many_docs, gpt2_tok, tmp_path):
    """Each process packs whole batches of documents: 1 or 2 processes write the same blocks."""
    from nlptl.data.corpora import load_corpus, resolve_corpus
    from nlptl.data.lm import build_blocks, packer

    texts = load_corpus(resolve_corpus(str(many_docs)))
    pack = packer(gpt2_tok, 32)
    one = build_blocks(texts, pack, tmp_path / "one", 1, False, {"block_size": 32})
    two = build_blocks(texts, pack, tmp_path / "two", 2, False, {"block_size": 32})
    assert len(one) > 100 and one["input_ids"] == two["input_ids"]
    info = json.loads((tmp_path / "two" / "blocks.json").read_text())
    assert info["num_proc"] == 2 and info["documents"] == 2600 and info["blocks"] == len(two)
    assert info["tokens"] == 32 * len(two) and info["bytes"] > 0
    assert not list(tmp_path.glob("*.tmp-*"))  # written aside, then renamed


def test_preprocess_writes_the_cache_adapt_reads(checkpoints, many_docs, tmp_path, monkeypatch):
    """After `preprocess`, adapt with the same tokenizer, corpus and block size tokenizes nothing."""
    from nlptl.data import lm
    from nlptl.stages import adapt, preprocess

    result = preprocess.run(PreprocessConfig(from_model=str(checkpoints["gpt2"]), corpus=str(many_docs),
                                             block_size=32, num_proc=2))
    (cache,) = result["caches"]
    assert cache["corpus"] == str(many_docs) and cache["blocks"] > 100 and cache["bytes"] > 0
    assert (lm.blocks_dir(cache["path"].rsplit("/", 1)[1]) / "blocks.arrow").is_file()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("adapt tokenized a corpus that preprocess had cached")

    monkeypatch.setattr(lm, "build_blocks", no_tokenizing)
    run = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(many_docs), out=str(tmp_path / "a")))
    assert run["n_train"] + run["n_eval"] == cache["blocks"]
    # Another block size is another cache.
    with pytest.raises(AssertionError, match="preprocess had cached"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(many_docs), out=str(tmp_path / "b"),
                            block_size=48))


def test_preprocess_command_line(checkpoints, corpus_file):
    proc = subprocess.run([sys.executable, "-m", "nlptl", "preprocess", "--from", str(checkpoints["gpt2"]), "--corpus",
                           str(corpus_file), "--block-size", "32", "--num-proc", "1", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["caches"][0]["blocks"] > 10 and result["objective"] == "clm"
    assert result["caches"][0]["path"] in proc.stderr  # says where the cache lives


def test_preprocess_needs_a_model_and_a_corpus():
    with pytest.raises(UsageError, match="--from MODEL"):
        PreprocessConfig(corpus="reviews")
    with pytest.raises(UsageError, match="--num-proc must be a positive integer"):
        PreprocessConfig(from_model="m", corpus="c", num_proc=0)


# --------------------------------------------------------------------------- mixtures and hub names


def test_a_mixture_names_each_corpus_and_its_share(corpus_file, repetitive_corpus):
    from nlptl.data.corpora import mixture_key, resolve_corpora

    one = resolve_corpora(str(corpus_file))
    assert len(one) == 1 and one[0].weight is None
    both = resolve_corpora(f"{corpus_file}:3,{repetitive_corpus}:1")
    assert [s.spec for s in both] == [str(corpus_file), str(repetitive_corpus)]
    assert [s.weight for s in both] == [0.75, 0.25]
    assert mixture_key(both) != mixture_key(resolve_corpora(f"{corpus_file}:1,{repetitive_corpus}:1"))
    with pytest.raises(UsageError, match="give each corpus of a mixture its share"):
        resolve_corpora(f"{corpus_file},{repetitive_corpus}:0.2")
    with pytest.raises(UsageError, match="a share must be a positive number"):
        resolve_corpora(f"{corpus_file}:0,{repetitive_corpus}:1")


def test_a_mixture_draws_blocks_in_its_shares():
    import datasets

    from nlptl.data.lm import mix

    a = datasets.Dataset.from_dict({"input_ids": [[0, i] for i in range(5000)]})
    b = datasets.Dataset.from_dict({"input_ids": [[1, i] for i in range(5000)]})
    mixed = mix([a, b], [0.8, 0.2], seed=3)
    share_b = sum(ids[0] for ids in mixed["input_ids"]) / len(mixed)
    assert 0.17 < share_b < 0.23
    assert mix([a, b], [0.8, 0.2], seed=3)["input_ids"] == mixed["input_ids"]  # seeded
    assert mix([a, b], [0.8, 0.2], seed=4)["input_ids"] != mixed["input_ids"]


def test_hub_corpus_by_name_config_and_split(monkeypatch):
    from nlptl import hub
    from nlptl.data.corpora import resolve_corpora

    monkeypatch.setattr(hub, "require", lambda *a, **k: None)
    (src,) = resolve_corpora("hf:Salesforce/wikitext:wikitext-2-raw-v1@test", text_column="text")
    assert (src.hub, src.hub_config, src.hub_splits) == ("Salesforce/wikitext", "wikitext-2-raw-v1", ("test",))
    (src,) = resolve_corpora("hf:someone/reviews", text_column="body")
    assert (src.hub, src.hub_config, src.hub_splits, src.text_column) == ("someone/reviews", None, ("train",), "body")
    mixed = resolve_corpora("hf:someone/reviews:0.9,hf:Salesforce/wikitext:wikitext-2-raw-v1@train:0.1")
    assert [(s.hub, s.hub_config, s.weight) for s in mixed] == [("someone/reviews", None, 0.9),
                                                                ("Salesforce/wikitext", "wikitext-2-raw-v1", 0.1)]
    with pytest.raises(UsageError, match="expected hf:NAME"):
        resolve_corpora("hf:someone/reviews@")


def test_hub_corpus_offline_fails_at_once_in_one_line(monkeypatch):
    from nlptl import hub
    from nlptl.data.corpora import resolve_corpora

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_reachable", None)
    with pytest.raises(NlptlError) as e:
        resolve_corpora("hf:nobody/no-such-corpus@train")
    message = str(e.value)
    assert message.startswith("--corpus hf:nobody/no-such-corpus@train: the Hugging Face Hub is unreachable (offline)")
    assert "\n" not in message


# --------------------------------------------------------------------------- streaming


def test_streaming_needs_max_steps():
    with pytest.raises(UsageError, match="--streaming reads a corpus of unknown length: pass --max-steps N"):
        AdaptConfig(corpus="reviews", streaming=True)


def test_streamed_adapt_holds_out_the_first_blocks_and_caches_nothing(checkpoints, corpus_file, tmp_path):
    from pathlib import Path

    import datasets

    from nlptl.stages import adapt

    cache = Path(datasets.config.HF_DATASETS_CACHE) / "nlptl-blocks"
    cached = set(cache.glob("*")) if cache.exists() else set()
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(tmp_path / "s"),
                                 streaming=True, max_eval_blocks=8, max_steps=6))
    assert result["steps"] == 6 and result["n_eval"] == 8 and result["n_train"] is None
    assert result["lineage"]["streaming"] is True
    assert (set(cache.glob("*")) if cache.exists() else set()) == cached  # nothing tokenized ahead
    record = json.loads((tmp_path / "s" / "nlptl-run.json").read_text())
    assert record["config"]["streaming"] is True


def test_streaming_a_tiny_corpus_says_what_to_do(checkpoints, tmp_path):
    from nlptl.stages import adapt

    small = tmp_path / "small.txt"
    small.write_text("\n".join(general_sentences(20)) + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match="lower --max-eval-blocks, or drop --streaming"):
        adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(small), out=str(tmp_path / "s"),
                            streaming=True, max_eval_blocks=500))


@pytest.mark.parametrize("mixture", [False, True], ids=["one-corpus", "mixture"])
def test_a_stream_whose_blocks_are_all_held_out_is_refused(checkpoints, corpus_file, tmp_path, mixture):
    """A corpus of exactly --max-eval-blocks blocks leaves nothing to train on: one line and exit 2, not a
    loop waiting forever for a first batch (alone) or a StopIteration (in a mixture). In a process of its
    own, with a time limit: the failure was a hang."""
    import re

    from cli_helpers import assert_one_line_error, run_cli

    from nlptl.stages import adapt

    small = tmp_path / "small.txt"
    small.write_text("\n".join(general_sentences(20)) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as e:
        adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(small), out=str(tmp_path / "s"),
                            streaming=True, max_eval_blocks=500))
    n = int(re.search(r"gives only (\d+) block", str(e.value)).group(1))
    corpus = f"{corpus_file}:0.5,{small}:0.5" if mixture else str(small)
    res = run_cli(["adapt", "--from", checkpoints["gpt2"], "--corpus", corpus, "--streaming", "--max-eval-blocks", n,
                   "--block-size", "32", "--max-steps", "2", "--batch-size", "4", "--precision", "fp32", "--quiet",
                   "--out", tmp_path / "s"], tmp_path, timeout=120)
    assert_one_line_error(res, 2, f"--corpus {small}", f"--max-eval-blocks {n}", "nothing left to train on")


def test_a_block_stream_that_gives_nothing_fails_instead_of_looping():
    """A pass from the top with no block fails; a resumed pass that starts at the end of the stream is
    only the end of that pass."""
    from nlptl.data.stream import BlockStream

    class Stream(list):
        def load_state_dict(self, state):
            del self[state["at"]:]

        def state_dict(self):
            return {"at": len(self)}

    with pytest.raises(NlptlError, match="no training block in a whole pass"):
        list(BlockStream(Stream))
    stream = BlockStream(lambda: Stream([1, 2]))
    stream.load_state_dict({"epoch": 3, "position": {"at": 0}})
    assert list(stream) == [] and list(stream) == [1, 2] and stream.epoch == 5


def test_mixed_adapt_records_the_mixture_and_each_perplexity(checkpoints, corpus_file, repetitive_corpus, tmp_path):
    from nlptl.stages import adapt

    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), out=str(tmp_path / "m"),
                                 corpus=f"{corpus_file}:0.8,{repetitive_corpus}:0.2"))
    lineage = result["lineage"]
    assert lineage["corpus"]["spec"] == str(corpus_file)  # perplexity is the first corpus's
    assert [m["weight"] for m in lineage["mixture"]] == [0.8, 0.2]
    assert set(result["perplexity_by_corpus"]) == {str(corpus_file), str(repetitive_corpus)}
    assert result["perplexity_by_corpus"][str(corpus_file)] == result["perplexity"]


def test_streamed_mlm_with_whole_word_masking(checkpoints, corpus_file, tmp_path):
    """An encoder's masked-LM batches (masking in the loop) from a stream, with word starts packed on the fly."""
    from nlptl.stages import adapt

    result = adapt.run(adapt_cfg(from_model=str(checkpoints["distilbert"]), corpus=str(corpus_file),
                                 out=str(tmp_path / "s"), streaming=True, max_eval_blocks=8, whole_word_mask=True))
    assert result["lineage"]["objective"] == "mlm" and result["steps"] == 4
    assert result["lineage"]["masking"] == "whole-word"


def test_pretrain_from_scratch_takes_one_corpus_read_ahead(corpus_file, repetitive_corpus, tmp_path):
    from conftest import pretrain_cfg

    from nlptl.stages import pretrain

    with pytest.raises(UsageError, match="a mixture of corpora needs --from MODEL"):
        pretrain.run(pretrain_cfg(corpus=f"{corpus_file}:1,{repetitive_corpus}:1", out=str(tmp_path / "p")))
    with pytest.raises(UsageError, match="--streaming needs --from MODEL"):
        pretrain.run(pretrain_cfg(corpus=str(corpus_file), streaming=True, out=str(tmp_path / "q")))
