"""Interoperability: nlptl's stage directories load in plain transformers (Auto classes and pipelines),
and checkpoints saved elsewhere (plain `save_pretrained` directories) work as `--from` for every stage."""

from __future__ import annotations

import json

import pytest
from conftest import adapt_cfg, finetune_cfg


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_adapt_dir_in_fill_mask_pipeline(family, adapted):
    from transformers import AutoModelForMaskedLM, pipeline

    out, _ = adapted[family]
    AutoModelForMaskedLM.from_pretrained(out)
    fill = pipeline("fill-mask", model=str(out))
    predictions = fill(f"the cat sat on the {fill.tokenizer.mask_token} .")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapt_dir_in_text_generation_pipeline(family, adapted):
    from transformers import AutoModelForCausalLM, pipeline

    out, _ = adapted[family]
    AutoModelForCausalLM.from_pretrained(out)
    generate = pipeline("text-generation", model=str(out))
    text = generate("the cat", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("the cat") and len(text) > len("the cat")


@pytest.mark.parametrize("family", ["distilbert", "gpt2"])
def test_finetune_dir_in_text_classification_pipeline(family, finetuned, task_files):
    from transformers import pipeline

    from nlptl.config import PredictConfig
    from nlptl.stages import predict

    out, _ = finetuned[family]
    texts = ["the film was great from start to finish.", "the soup was awful for the price."]
    theirs = pipeline("text-classification", model=str(out))(texts)
    ours = predict.run(PredictConfig(model=str(out), texts=texts))
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert {t["label"] for t in theirs} <= {"negative", "positive"}  # names, not LABEL_0


def test_plain_checkpoint_as_from_for_every_stage(checkpoints, corpus_file, task_files, tmp_path):
    """A random-init model + tokenizer saved with save_pretrained (not made by nlptl): pretrain takes it
    (and continues it on a corpus), adapt and finetune start from it, and the chain goes on."""
    from nlptl.config import PretrainConfig
    from nlptl.stages import adapt, finetune, pretrain

    plain = checkpoints["bert"]
    assert not (plain / "nlptl-run.json").exists()
    taken = pretrain.run(PretrainConfig(from_model=str(plain), out=str(tmp_path / "general")))
    assert taken["lineage"]["source"] == "checkpoint"
    continued = pretrain.run(PretrainConfig(from_model=str(plain), corpus=str(corpus_file), out=str(tmp_path / "cont"),
                                            block_size=32, validation_percentage=10.0, max_steps=2, batch_size=4,
                                            precision="fp32"))
    assert continued["steps"] == 2 and continued["lineage"]["source"] == "checkpoint, continued"
    for base in (plain, tmp_path / "general"):
        lm = adapt.run(adapt_cfg(from_model=str(base), corpus=str(corpus_file), out=str(tmp_path / f"lm-{base.name}")))
        assert lm["steps"] == 4
    ft = finetune.run(finetune_cfg(from_model=str(plain), train_file=str(task_files["train"]),
                                   eval_file=str(task_files["eval"]), out=str(tmp_path / "ft")))
    record = json.loads((tmp_path / "ft" / "nlptl-run.json").read_text())
    assert ft["steps"] == 4 and record["lineage"]["base_model"] == str(plain.resolve())
