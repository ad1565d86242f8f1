"""Models and tokenizers, one module per concern; import what you need from here.

- refs.py: what a `--from` is (`inspect_model`, light: config.json only), a model's positions;
- loading.py: config, tokenizer, language model, classifier (new head or fine-tuned);
- scratch.py: from-scratch presets, tokenizer training, a random GPT-2 or BERT;
- mlm.py: the masked-only MLM wrapper (loss on the masked positions alone);
- lora.py: LoRA adapters (peft), and how a LoRA run is saved;
- contrastive.py: the pair encoder of `adapt --objective contrastive` and its pair losses;
- heads.py: nlptl's pooled sequence classifier (shipped in run directories as modeling_nlptl.py, so it
  imports nothing of nlptl; `nlptl.heads` is the same module under its older name).

Every module but heads.py is light to import: torch, transformers and peft load inside the functions.
heads.py imports torch and transformers at the top (it is a transformers modeling file): import it by name.
"""

from nlptl.models.contrastive import pair_encoder, pair_loss
from nlptl.models.loading import (
    DEFAULT_MAX_LENGTH,
    count_parameters,
    default_max_length,
    default_objective,
    family,
    load_classifier,
    load_config,
    load_config_and_tokenizer,
    load_lm,
    load_tokenizer,
    load_trained_classifier,
    resolve_pooling,
    save_head_code,
    save_sentence_pooling,
    trained_objective,
    trained_pooling,
    uses_stock_head,
)
from nlptl.models.lora import (
    CLASSIFIER_HEADS,
    LORA_TARGETS,
    PEFT_MISSING,
    apply_lora,
    lora_targets,
    require_peft,
    save_lora,
)
from nlptl.models.mlm import masked_only, mlm_head, unwrap_lm
from nlptl.models.refs import (
    OFFSET_POSITIONS,
    TOKENIZER_FILES,
    ModelRef,
    hub_guard,
    inspect_model,
    load_error,
    positions_of,
)
from nlptl.models.scratch import (
    BERT_MAX_POSITIONS,
    DEFAULT_VOCAB,
    GPT_EOS,
    PRESETS,
    build_scratch,
    scratch_positions,
    train_tokenizer,
)

__all__ = [
    "BERT_MAX_POSITIONS", "CLASSIFIER_HEADS", "DEFAULT_MAX_LENGTH", "DEFAULT_VOCAB", "GPT_EOS", "LORA_TARGETS",
    "OFFSET_POSITIONS", "PEFT_MISSING", "PRESETS", "TOKENIZER_FILES", "ModelRef", "apply_lora", "build_scratch",
    "count_parameters", "default_max_length", "default_objective", "family", "hub_guard", "inspect_model",
    "load_classifier", "load_config", "load_config_and_tokenizer", "load_error", "load_lm", "load_tokenizer",
    "load_trained_classifier",
    "lora_targets", "masked_only", "mlm_head", "pair_encoder", "pair_loss", "positions_of", "require_peft",
    "resolve_pooling", "save_head_code", "save_lora", "save_sentence_pooling", "trained_objective", "trained_pooling",
    "scratch_positions", "train_tokenizer", "unwrap_lm", "uses_stock_head",
]
