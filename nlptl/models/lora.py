"""LoRA (peft): adapters injected into a model for parameter-efficient training, and how a LoRA run is saved."""

from __future__ import annotations

import logging

from nlptl.errors import UsageError
from nlptl.models.loading import count_parameters, model_type, save_head_code

log = logging.getLogger("nlptl")

# Attention projections LoRA adapts by default, per model type (the choice of the LoRA paper: query and
# value). Other types fall back to peft's own table; --lora-targets overrides both.
LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}
# Classifier heads are new (random) weights: they train in full, as peft's modules_to_save.
CLASSIFIER_HEADS = ("pre_classifier", "classifier", "score", "window_attention")
PEFT_MISSING = "--lora needs peft: pip install 'nlptl[lora]' (or pip install peft)"


def require_peft() -> None:
    """peft is an optional extra: fail with the install command, before any heavy loading."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UsageError(PEFT_MISSING)


def lora_targets(model_type: str, override: str | None) -> list[str]:
    if override:
        targets = [t.strip() for t in override.split(",") if t.strip()]
        if not targets:
            raise UsageError("--lora-targets expects module names separated by commas, e.g. query,value")
        return targets
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if model_type in PEFT_TARGETS:
        return list(PEFT_TARGETS[model_type])
    raise UsageError(f"--lora: no default LoRA target modules for model type '{model_type}'; pass --lora-targets "
                     "with the names of its attention projections (e.g. --lora-targets q_proj,v_proj)")


def apply_lora(model, cfg):
    """Wrap `model` in a peft LoRA model. The adapters are injected into `model` itself, so the training
    loop trains `model` (or a wrapper of it such as `masked_only`) as usual: only the LoRA matrices and
    the classifier head (modules_to_save) require gradients. Returns the PeftModel, for saving."""
    require_peft()
    import torch.nn as nn
    from peft import LoraConfig, get_peft_model

    family = model_type(model.config)  # nlptl's head: its backbone's
    targets = lora_targets(family, cfg.lora_targets)
    heads = [n for n in CLASSIFIER_HEADS if isinstance(getattr(model, n, None), nn.Module)]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, modules_to_save=heads or None,
                        # GPT-2 stores its projections as Conv1D, whose weight is transposed.
                        fan_in_fan_out=family == "gpt2")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        if "not found" in str(e) or "Target modules" in str(e):
            raise UsageError(f"--lora-targets {','.join(targets)}: no such modules in this {family} model; "
                             "pass the names of its attention projections (e.g. query,value)") from None
        raise
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%g on %s%s: %d of %d parameters train (%.2f%%)", cfg.lora_r, cfg.lora_alpha,
             ",".join(targets), f" (+ head: {','.join(heads)})" if heads else "", trainable,
             count_parameters(model), 100 * trainable / max(1, count_parameters(model)))
    return peft_model


def save_lora(writer, peft_model, tokenizer, merge: bool, kept: dict | None = None) -> dict:
    """Write a LoRA run: the adapter always (OUT/adapter/: adapter_config.json, adapter_model.safetensors,
    loadable with peft's PeftModel.from_pretrained(base, OUT/adapter)), and with `merge` the merged
    model at the top, a normal stage directory that loads without peft. Returns the record's `lora` entry."""
    peft_model.save_pretrained(writer.path / "adapter")
    config = peft_model.peft_config["default"]
    info = {"adapter": "adapter", "base_model": config.base_model_name_or_path, "r": config.r,
            "alpha": config.lora_alpha, "targets": sorted(config.target_modules),
            "modules_to_save": sorted(config.modules_to_save or []), "merged": merge}
    if merge:
        merged = peft_model.merge_and_unload()
        writer.save_model(merged, tokenizer, kept)
        save_head_code(merged, writer.path)
    else:
        # The tokenizer still goes at the top: the adapter plus the base is the model.
        tokenizer.save_pretrained(writer.path)
    return info
