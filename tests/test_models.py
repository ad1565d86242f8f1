"""Models and tokenizers (models.py): what a --from is, tokenizer fixes, LM heads, models from scratch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES

from nlptl import models
from nlptl.errors import NlptlError, UsageError
from nlptl.models import positions_of

OBJECTIVES = {"bert": "mlm", "roberta": "mlm", "distilbert": "mlm", "gpt2": "clm", "llama": "clm"}
POSITIONS = {"bert": 128, "roberta": 512, "distilbert": 128, "gpt2": 128, "llama": 128}


def load(path):
    ref = models.inspect_model(str(path))
    return ref, models.load_config(ref)


# --------------------------------------------------------------------------- inspect_model


def test_inspect_a_checkpoint_and_a_hub_id(checkpoints, monkeypatch):
    from nlptl import hub

    ref = models.inspect_model(str(checkpoints["gpt2"]))
    assert ref.local and ref.config["model_type"] == "gpt2" and ref.run is None and not ref.is_classifier
    monkeypatch.setattr(hub, "_reachable", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    remote = models.inspect_model("org/some-model")
    assert not remote.local and remote.config is None and remote.path == "org/some-model"
    monkeypatch.setattr(hub, "_reachable", False)  # offline and not cached: one line at once
    with pytest.raises(NlptlError, match="--from org/some-model: the Hugging Face Hub is unreachable"):
        models.inspect_model("org/some-model")


def test_inspect_runs(adapted, finetuned):
    assert not models.inspect_model(str(adapted["gpt2"][0])).is_classifier
    ref = models.inspect_model(str(finetuned["gpt2"][0]))
    assert ref.is_classifier and ref.run["stage"] == "finetune"


@pytest.mark.parametrize("case,message", [
    ("file", "is a file, not a model directory"),
    ("tokenizer_only", "holds a tokenizer but no model"),
    ("unfinished", "is an unfinished run"),
    ("empty", "not a model directory (no config.json)"),
    ("bad_json", "config.json is not valid JSON"),
    ("no_model_type", "config.json has no model_type"),
    ("no_weights", "holds a config but no weights"),
    ("bad_path", "no such directory"),
])
def test_inspect_refuses_what_is_not_a_model(case, message, tmp_path, checkpoints):
    d = tmp_path / "m"
    d.mkdir()
    if case == "file":
        d = tmp_path / "model.bin"
        d.write_bytes(b"x")
    elif case == "tokenizer_only":
        shutil.copy(checkpoints["gpt2"] / "tokenizer.json", d)
    elif case == "unfinished":
        (d / "checkpoints").mkdir()
    elif case == "bad_json":
        (d / "config.json").write_text("{nope")
    elif case == "no_model_type":
        (d / "config.json").write_text(json.dumps({"hidden_size": 4}))
    elif case == "no_weights":
        shutil.copy(checkpoints["gpt2"] / "config.json", d)
    elif case == "bad_path":
        d = tmp_path / "a" / "b" / "c"
    with pytest.raises(UsageError) as e:
        models.inspect_model(str(d))
    assert message in str(e.value) and "--from" in str(e.value)


# --------------------------------------------------------------------------- tokenizers and config facts


@pytest.mark.parametrize("family", FAMILIES)
def test_family_facts(family, checkpoints):
    ref, config = load(checkpoints[family])
    assert models.default_objective(config) == OBJECTIVES[family]
    assert models.positions_of(config) == positions_of(ref.config) == POSITIONS[family]
    tokenizer = models.load_tokenizer(ref, config)
    assert tokenizer.is_fast and tokenizer.model_max_length == POSITIONS[family]
    assert tokenizer.pad_token is not None
    if family in ("gpt2", "llama"):  # no pad token of their own: EOS pads
        assert tokenizer.pad_token == tokenizer.eos_token
    else:
        assert tokenizer.pad_token in ("[PAD]", "<pad>")


def test_tokenizer_missing(checkpoints, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints["gpt2"] / name, d)
    ref, config = load(d)
    with pytest.raises(NlptlError, match="holds a model but no tokenizer files"):
        models.load_tokenizer(ref, config)


def test_tokenizer_larger_than_the_embeddings(checkpoints, tmp_path):
    """A tokenizer from another model (more tokens than the embedding matrix) is refused before training."""
    d = tmp_path / "m"
    shutil.copytree(checkpoints["gpt2"], d)
    config = json.loads((d / "config.json").read_text())
    config["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(config))
    ref, config = load(d)
    with pytest.raises(NlptlError, match="the tokenizer has .* tokens but the model's embeddings hold 100"):
        models.load_tokenizer(ref, config)


# --------------------------------------------------------------------------- heads


def test_bare_encoder_gets_an_lm_head_and_keeps_its_pooler(checkpoints):
    ref, config = load(checkpoints["bert"])
    model, note, kept = models.load_lm(ref, config, "mlm")
    assert type(model).__name__ == "BertForMaskedLM"
    assert note and "no masked-LM head: added a new one" in note
    assert set(kept) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    bare = __import__("transformers").AutoModel.from_pretrained(checkpoints["bert"])
    assert torch.equal(kept["bert.pooler.dense.weight"], bare.pooler.dense.weight.detach())
    # The encoder weights themselves were loaded, not re-initialised.
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, bare.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("family", ["gpt2", "roberta", "llama"])
def test_complete_lm_loads_without_note(family, checkpoints):
    ref, config = load(checkpoints[family])
    _, note, kept = models.load_lm(ref, config, OBJECTIVES[family])
    assert note is None and kept == {}


def test_wrong_objective_for_the_family(checkpoints):
    ref, config = load(checkpoints["gpt2"])
    with pytest.raises(NlptlError, match="a gpt2 model has no masked-LM class; use --objective clm"):
        models.load_lm(ref, config, "mlm")


def test_classifier_head_from_an_lm_checkpoint(checkpoints):
    ref, config = load(checkpoints["gpt2"])
    tokenizer = models.load_tokenizer(ref, config)
    clf = models.load_classifier(ref, config, ["a", "b", "c"], tokenizer)
    assert clf.config.num_labels == 3 and clf.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert clf.config.pad_token_id == tokenizer.pad_token_id  # a decoder must find the last real token
    lm = __import__("transformers").AutoModelForCausalLM.from_pretrained(checkpoints["gpt2"])
    assert torch.equal(clf.transformer.h[0].mlp.c_fc.weight, lm.transformer.h[0].mlp.c_fc.weight)


def test_trained_classifier_for_inference(finetuned):
    out, _ = finetuned["roberta"]
    model, tokenizer, names, max_length = models.load_trained_classifier(models.inspect_model(str(out), "--model"))
    assert names == ["negative", "positive"] and max_length == 32  # the length it was trained with
    assert tokenizer.model_max_length == 512


# --------------------------------------------------------------------------- from scratch


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_build_from_scratch(arch):
    texts = iter([[f"the {w} sat on the mat {i}" for w in ("cat", "dog", "owl") for i in range(30)]])
    tokenizer = models.train_tokenizer(arch, texts, 300, 256)  # byte-level BPE starts from 256 bytes
    assert tokenizer.model_max_length == 256 and len(tokenizer) <= 300
    model = models.build_scratch(arch, "tiny", tokenizer)
    layers, hidden, heads, positions = models.PRESETS["tiny"]
    assert model.config.num_hidden_layers == layers and model.config.hidden_size == hidden
    assert model.config.vocab_size == len(tokenizer)
    assert models.positions_of(model.config) == positions
    assert models.default_objective(model.config) == ("clm" if arch == "gpt" else "mlm")
    ids = tokenizer(["the cat sat"], return_tensors="pt")["input_ids"]
    if arch == "bert":
        assert ids[0, 0].item() == tokenizer.cls_token_id and ids[0, -1].item() == tokenizer.sep_token_id
    else:  # GPT-2 style: no pad token until a stage sets one (load_tokenizer)
        assert tokenizer.pad_token is None and tokenizer.eos_token == models.GPT_EOS
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert 0 < models.count_parameters(model) < 1_000_000


# --------------------------------------------------------------------------- model code


def test_the_head_code_is_one_file_that_ships_itself(tmp_path):
    """nlptl/models/heads.py is the file a pooled classifier's directory ships as modeling_nlptl.py
    (its auto_map names that file): it imports nothing of nlptl, and `nlptl.heads` (the README's
    `from nlptl.heads import register`) is the same module."""
    import ast
    from types import SimpleNamespace

    import nlptl.heads
    import nlptl.models.heads

    assert nlptl.heads is nlptl.models.heads
    source = Path(nlptl.models.heads.__file__)
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.split(".")[0] == "nlptl"}
    models.save_head_code(SimpleNamespace(config=SimpleNamespace(nlptl_pooling="mean")), tmp_path)
    assert (tmp_path / "modeling_nlptl.py").read_bytes() == source.read_bytes()


# Where a checkpoint's config and tokenizer are loaded: models.load_config_and_tokenizer, which every
# caller in nlptl/ uses. Left: stages/lm.py's lm_from (the lead's file while this was made: to move), and
# pretrain.py, which reads back the tokenizer it trained itself (a tokenizer cache, not a checkpoint).
LOADS = re.compile(r"\bload_(config|tokenizer)\(|Auto(Config|Tokenizer)\.from_pretrained\(")
LOADS_LEFT = {"models/loading.py", "stages/pretrain.py"}


def test_config_and_tokenizer_load_in_one_place():
    package = Path(models.__file__).parents[1]
    found = [f"{path.relative_to(package)}:{n}: {line.strip()}" for path in sorted(package.rglob("*.py"))
             if path.relative_to(package).as_posix() not in LOADS_LEFT
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if LOADS.search(line) and not line.lstrip().startswith(("def ", "#"))]
    assert not found, f"load them with models.load_config_and_tokenizer: {found}"
