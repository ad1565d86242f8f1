"""adapt -> finetune for each model family nlptl supports: encoders (BERT without an LM head, RoBERTa,
DistilBERT) and decoders (GPT-2, Llama). Tiny random-init checkpoints, a few steps each."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES
from safetensors import safe_open

ENCODERS = ("bert", "roberta", "distilbert")
LM_KEYS = {"perplexity", "perplexity_before", "loss", "n_eval", "steps", "n_train", "train_tokens", "train_seconds",
           "output_dir", "config", "lineage"}
CLS_KEYS = {"accuracy", "f1_macro", "loss", "n_eval", "steps", "n_train", "train_tokens", "train_seconds",
            "output_dir", "config", "lineage"}


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", FAMILIES)
def test_adapt(family, adapted):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    out, result = adapted[family]
    assert LM_KEYS <= set(result), LM_KEYS - set(result)
    json.dumps(result)  # plain JSON: what `--json` prints
    assert result["steps"] == 4
    # Packed blocks carry no padding: every step sees exactly batch x block_size tokens.
    assert result["train_tokens"] == 4 * 4 * 32
    assert result["n_train"] > 0 and result["n_eval"] > 0
    assert 1 < result["perplexity"] < float("inf") and 1 < result["perplexity_before"] < float("inf")
    assert result["output_dir"] == str(out)
    assert result["lineage"]["objective"] == ("mlm" if family in ENCODERS else "clm")
    # Only the bare BertModel lacked an LM head; its "before" perplexity is then no baseline, and says so.
    assert result["lm_head_added"] == (family == "bert")

    cls = AutoModelForMaskedLM if family in ENCODERS else AutoModelForCausalLM
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not [k for k in info["missing_keys"] if not k.endswith("position_ids")], info["missing_keys"]
    assert (out / "nlptl-run.json").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune(family, finetuned):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, result = finetuned[family]
    assert CLS_KEYS <= set(result), CLS_KEYS - set(result)
    json.dumps(result)
    assert result["steps"] == 4 and result["n_train"] == 240 and result["n_eval"] == 40
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["f1_macro"] <= 1 and result["loss"] > 0
    assert result["train_tokens"] > 0

    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    # A decoder's tokenizer is saved with the pad token nlptl gave it, and the config knows its id.
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["short", "a somewhat longer text to pad against"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_bert_without_lm_head_keeps_its_pooler(checkpoints, adapted, finetuned):
    """A bare BertModel (like all-MiniLM-L6-v2): adapt adds an MLM head and carries the pooler along, so
    the classifier starts from the pretrained pooler, not a random one."""
    from transformers import AutoModelForSequenceClassification

    from nlptl import models

    original = tensors(checkpoints["bert"])
    assert "pooler.dense.weight" in original and not any(k.startswith("cls.") for k in original)

    out, _ = adapted["bert"]
    adapted_tensors = tensors(out)
    assert any(k.startswith("cls.predictions") for k in adapted_tensors)  # the new MLM head
    for name in ("weight", "bias"):
        assert torch.equal(adapted_tensors[f"bert.pooler.dense.{name}"], original[f"pooler.dense.{name}"])

    # What finetune builds from the adapted run, before any training.
    ref = models.inspect_model(str(out))
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    classifier = models.load_classifier(ref, config, ["negative", "positive"], tokenizer)
    assert torch.equal(classifier.bert.pooler.dense.weight.detach(), original["pooler.dense.weight"])

    # And the fine-tuned run is a complete classifier with a pooler.
    ft_out, _ = finetuned["bert"]
    _, info = AutoModelForSequenceClassification.from_pretrained(ft_out, output_loading_info=True)
    assert not info["missing_keys"]
    assert "bert.pooler.dense.weight" in tensors(ft_out)


def test_bert_adapt_note_and_lineage(adapted, checkpoints):
    out, result = adapted["bert"]
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "adapt"
    assert record["lineage"]["base_model"] == str(checkpoints["bert"].resolve())
    assert "parent" not in record["lineage"]  # a plain checkpoint, not an nlptl run


@pytest.mark.parametrize("family,positions", [("roberta", 512), ("llama", 128), ("bert", 128)])
def test_tokenizer_length_falls_back_to_model_positions(family, positions, checkpoints):
    """RoBERTa's tokenizer says 1e30, Llama's says nothing: the model's positions are the truth
    (RoBERTa: 514 - 2 for the padding offset)."""
    from transformers import AutoTokenizer

    from nlptl import models

    raw = AutoTokenizer.from_pretrained(checkpoints[family])
    ref = models.inspect_model(str(checkpoints[family]))
    tokenizer = models.load_tokenizer(ref, models.load_config(ref))
    assert tokenizer.model_max_length == positions
    if family != "bert":
        assert raw.model_max_length > 1e20
    # Truncation with the fallback never exceeds what the model can embed.
    ids = tokenizer(" ".join(["word"] * 2000), truncation=True)["input_ids"]
    assert len(ids) == positions


def test_distilbert_has_no_token_type_ids(adapted, finetuned):
    from transformers import AutoTokenizer

    for out in (adapted["distilbert"][0], finetuned["distilbert"][0]):
        assert "token_type_ids" not in AutoTokenizer.from_pretrained(out)("hello there")
