"""Loading a checkpoint: its config, tokenizer, a language model with the objective's head, a classifier
with a new head (stock transformers classes, or nlptl's pooled head), or a fine-tuned classifier.
"""

from __future__ import annotations

from pathlib import Path

from nlptl.errors import NlptlError, UsageError
from nlptl.models.refs import TOKENIZER_FILES, ModelRef, hub_guard, load_error, positions_of

DEFAULT_MAX_LENGTH = 256  # classifier inputs, when neither --max-length nor the model says less


def default_max_length(config) -> int:
    """A classifier's input length without --max-length: 256 tokens, or the model's positions if fewer."""
    return min(DEFAULT_MAX_LENGTH, positions_of(config) or DEFAULT_MAX_LENGTH)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_type(config) -> str:
    """The architecture's model type: for nlptl's head (model type "nlptl"), its backbone's."""
    return getattr(config, "backbone_model_type", None) or config.model_type


def default_objective(config) -> str:
    """MLM for encoders (the model type has a masked-LM class), CLM for decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_decoder", False):
        return "clm"
    return "mlm" if model_type(config) in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "clm"


def trained_objective(config) -> str:
    """The objective of the LM head a checkpoint carries (its `architectures`: a causal-LM or a masked-LM
    class), else the family's (`default_objective`): an encoder adapted with --objective clm is scored
    as the causal LM it now is."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("CausalLM", "LMHeadModel")) for a in archs):
        return "clm"
    if any(a.endswith("MaskedLM") for a in archs):
        return "mlm"
    return default_objective(config)


def load_tokenizer(ref: ModelRef, config):
    """The checkpoint's tokenizer, with a usable model_max_length and a pad token."""
    from transformers import AutoTokenizer

    # Checked first: without tokenizer files transformers 5 builds an empty tokenizer from the model type
    # (every text -> no tokens) instead of failing.
    if ref.local and not any((Path(ref.path) / f).is_file() for f in TOKENIZER_FILES):
        raise NlptlError(f"--from {ref.spec}: holds a model but no tokenizer files; save the tokenizer next to it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
    except Exception as e:  # noqa: BLE001 - turned into one line
        raise load_error(ref, e) from e
    if not getattr(tokenizer, "is_fast", True):
        raise NlptlError(f"--from {ref.spec}: nlptl needs a fast (Rust) tokenizer (tokenizer.json); "
                         "convert it with transformers")
    positions = positions_of(config)
    if positions and (not tokenizer.model_max_length or tokenizer.model_max_length > positions):
        # Many checkpoints store a huge placeholder (1e30) or nothing: the model's positions are the truth.
        tokenizer.model_max_length = positions
    if tokenizer.pad_token is None:
        # GPT-style tokenizers have no pad token. Padding with EOS is safe: attention masks hide it,
        # and the classifier reads the last real token.
        if tokenizer.eos_token is None:
            raise NlptlError(f"--from {ref.spec}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > config.vocab_size:
        raise UsageError(
            f"--from {ref.spec}: the tokenizer has {len(tokenizer)} tokens "
            f"but the model's embeddings hold {config.vocab_size}; "
            "pass the tokenizer the model was trained with"
        )
    return tokenizer


def load_config(ref: ModelRef):
    """The checkpoint's config. For a classifier with nlptl's head, its backbone's config with the head's
    `nlptl_*` keys (what every loader here takes: the family's classes, positions, LoRA targets), as
    directories of nlptl before issue 24 stored it; the head's model makes it the head's own again."""
    from transformers import AutoConfig

    if ref.config is None or ref.config.get("model_type") == "nlptl":
        # nlptl's head has a model type of its own, which transformers does not know until told. (Only
        # where it may be needed: the head's module imports torch.)
        from nlptl.models.heads import register

        register()
    try:
        config = AutoConfig.from_pretrained(ref.path)
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e) from e
    return backbone_config(config)


def load_config_and_tokenizer(ref: ModelRef, tokenizer_ref: ModelRef | None = None):
    """(config, tokenizer) of a checkpoint: what every stage loads first. A hub id fails fast offline
    unless cached. `tokenizer_ref`: where the tokenizer is, when not beside the config (a LoRA run's
    tokenizer is in the run, its config in the base model)."""
    hub_guard(ref)
    config = load_config(ref)
    return config, load_tokenizer(tokenizer_ref or ref, config)


def backbone_config(config):
    """`config` in its backbone's own class: nlptl's head config unwrapped (its `nlptl_*` keys ride along),
    any other config as it is. What a directory meant for stock transformers without the head's code
    (an ONNX export: the head is in the graph) saves."""
    return config.unwrap() if getattr(config, "model_type", None) == "nlptl" else config


def load_lm(ref: ModelRef, config, objective: str):
    """An LM of the checkpoint's family with an `objective` head. Returns (model, note, kept) where
    `kept` holds the checkpoint's tensors the LM class does not use (e.g. BERT's pooler), so they can be
    written back and the classifier later starts from the whole encoder."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    try:
        model, info = cls.from_pretrained(ref.path, config=config, output_loading_info=True)
    except ValueError as e:
        raise NlptlError(
            f"--from {ref.spec}: a {model_type(config)} model "
            f"has no {'masked' if objective == 'mlm' else 'causal'}-LM class; "
            f"use --objective {'clm' if objective == 'mlm' else 'mlm'}"
        ) from e
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e) from e
    note = None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        head = "masked-LM" if objective == "mlm" else "causal-LM"
        note = f"the checkpoint has no {head} head: added a new one ({len(missing)} tensors, randomly initialised)"
    kept = _unused_tensors(ref, model, set(info.get("unexpected_keys", [])))
    return model, note, kept


def _unused_tensors(ref: ModelRef, model, unexpected: set[str]) -> dict:
    if not unexpected or not ref.local:
        return {}
    from safetensors import safe_open

    prefix = model.base_model_prefix
    kept = {}
    for f in sorted(Path(ref.path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            keys = list(fh.keys())
            has_prefix = any(k.startswith(prefix + ".") for k in keys)
            for k in keys:
                if k in unexpected:
                    kept[k if has_prefix else f"{prefix}.{k}"] = fh.get_tensor(k)
    return kept


def family(config) -> str:
    """'encoder' (masked-LM family) or 'decoder' (causal LM)."""
    return "encoder" if default_objective(config) == "mlm" else "decoder"


def resolve_pooling(config, pooling: str) -> str:
    """auto -> the family's default: the first token for encoders, the last real token for decoders."""
    if pooling != "auto":
        return pooling
    return "cls" if family(config) == "encoder" else "last"


# sentence-transformers' Pooling modes (1_Pooling/config.json) and nlptl's names for them.
SENTENCE_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                     "pooling_mode_lasttoken": "last"}


def trained_pooling(ref: ModelRef) -> str | None:
    """The pooling a sentence encoder was trained with, where the checkpoint says so: sentence-transformers'
    `1_Pooling/config.json` (all-MiniLM-L6-v2: mean), which nlptl's contrastive adapt also writes. A
    classifier should pool as the encoder was trained: a mean-pooled encoder's first token is no summary."""
    import json

    if not ref.local:
        return None
    path = Path(ref.path) / "1_Pooling" / "config.json"
    try:
        modes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    chosen = [name for key, name in SENTENCE_POOLINGS.items() if modes.get(key)]
    return chosen[0] if len(chosen) == 1 else None


def save_sentence_pooling(directory, pooling: str, width: int, max_length: int) -> None:
    """Write the sentence-transformers files (modules.json, 1_Pooling/) that say how the encoder in
    `directory` pools: `trained_pooling` reads them, and `SentenceTransformer(directory)` loads it."""
    import json

    directory = Path(directory)
    (directory / "1_Pooling").mkdir(exist_ok=True)
    modes = {key: name == pooling for key, name in SENTENCE_POOLINGS.items()}
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": width, **modes}, indent=2), encoding="utf-8")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}), encoding="utf-8")


def uses_stock_head(config, pooling: str) -> bool:
    """Whether transformers' own sequence-classification class implements this pooling."""
    return (family(config), pooling) in (("encoder", "cls"), ("decoder", "last"))


def _stock_class(config):
    """The family's stock classifier class, looked up by name (not through the Auto registry, which
    a trust_remote_code load in the same process can redirect)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type(config))
    if name is None or not hasattr(transformers, name):
        raise NlptlError(f"transformers has no sequence-classification class for {model_type(config)}; "
                         "try --pooling mean")
    return getattr(transformers, name)


def load_classifier(ref: ModelRef, config, labels: list[str], tokenizer, pooling: str = "auto"):
    """A classifier with a new head on the checkpoint's body. Stock transformers classes where they
    implement the pooling; otherwise nlptl's pooled head (nlptl/models/heads.py, shipped via auto_map)."""
    config = backbone_config(config)
    id2label = dict(enumerate(labels))
    config.num_labels = len(labels)
    config.id2label = id2label
    config.label2id = {v: k for k, v in id2label.items()}
    # Decoders classify from the last non-pad token; the config must know the pad id.
    config.pad_token_id = tokenizer.pad_token_id
    pooling = resolve_pooling(config, pooling)
    try:
        # Long documents (windows pooled inside forward) need nlptl's head, whatever the pooling.
        if uses_stock_head(config, pooling) and not getattr(config, "nlptl_window", None):
            for attr in ("nlptl_pooling", "auto_map"):
                if hasattr(config, attr):
                    delattr(config, attr)
            return _stock_class(config).from_pretrained(ref.path, config=config, ignore_mismatched_sizes=True)
        from nlptl.models.heads import NlptlConfig, NlptlForSequenceClassification

        config.nlptl_pooling = pooling
        # Its own model type (and auto_map, for trust_remote_code): stock transformers must not take it
        # for the backbone's stock classifier, whose pooler and head it would make anew.
        head_config = NlptlConfig.wrap(config)
        return NlptlForSequenceClassification.from_pretrained(ref.path, config=head_config,
                                                              ignore_mismatched_sizes=True)
    except NlptlError:
        raise
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e) from e


def save_head_code(model, directory) -> None:
    """Ship nlptl's head code next to a classifier that uses it (for trust_remote_code loading)."""
    import shutil

    if getattr(model.config, "nlptl_pooling", None):
        shutil.copy2(Path(__file__).parent / "heads.py", Path(directory) / "modeling_nlptl.py")


def load_trained_classifier(ref: ModelRef):
    """A fine-tuned classifier for inference: (model, tokenizer, label names, max_length)."""
    config, tokenizer = load_config_and_tokenizer(ref)
    try:
        if getattr(config, "nlptl_pooling", None):
            from nlptl.models.heads import NlptlConfig, NlptlForSequenceClassification

            model = NlptlForSequenceClassification.from_pretrained(ref.path, config=NlptlConfig.wrap(config))
        else:
            model = _stock_class(config).from_pretrained(ref.path, config=config)
    except NlptlError:
        raise
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e, "--model") from e
    if model.config.pad_token_id is None:
        # A decoder classifier saved without a pad id (stock GPT-2 heads find the last token by it) would
        # refuse batches of more than one text: it pads with the tokenizer's pad token (EOS for GPTs).
        model.config.pad_token_id = tokenizer.pad_token_id
    names = [config.id2label[i] for i in range(config.num_labels)]
    max_length = (ref.run or {}).get("max_length") or default_max_length(config)
    return model, tokenizer, names, max_length
