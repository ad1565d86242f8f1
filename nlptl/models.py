"""Models and tokenizers: what a `--from` is, building from scratch, adding LM and classifier heads.

`inspect_model` is light (reads config.json only) so that a wrong `--from` fails before torch loads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from nlptl.errors import NlptlError, UsageError

log = logging.getLogger("nlptl")

# name: (layers, hidden, heads, positions)
PRESETS = {
    "tiny": (2, 64, 2, 256),
    "mini": (4, 256, 4, 512),
    "small": (6, 512, 8, 1024),
    "base": (12, 768, 12, 1024),
}
DEFAULT_VOCAB = {"tiny": 4000, "mini": 8000, "small": 16000, "base": 32000}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
# Families whose position ids start after the padding index (max length = positions - 2).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "roberta-prelayernorm"}
GPT_EOS = "<|endoftext|>"


@dataclass
class ModelRef:
    spec: str  # as typed
    path: str  # local dir or hub id
    local: bool
    config: dict | None  # config.json when local
    run: dict | None  # nlptl-run.json when it is an nlptl run dir

    @property
    def is_classifier(self) -> bool:
        c = self.config or {}
        archs = c.get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in archs) or (
            self.run is not None and self.run.get("stage") == "finetune")


def inspect_model(spec: str, flag: str = "--from") -> ModelRef:
    """Check a model reference without importing torch: a local checkpoint dir, or a hub id."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{flag} {spec}: is a file, not a model directory (expected a directory with config.json)")
        cfg_path = p / "config.json"
        adapter = next((a for a in (p / "adapter", p) if (a / "adapter_config.json").is_file()), None)
        if not cfg_path.is_file() and adapter is not None:
            raise UsageError(
                f"{flag} {spec}: is a LoRA adapter without a merged model; rerun that stage with --lora --merge "
                f"(or load it with peft: PeftModel.from_pretrained(base_model, '{adapter}'))"
            )
        if not cfg_path.is_file():
            if any((p / f).is_file() for f in TOKENIZER_FILES):
                raise UsageError(f"{flag} {spec}: holds a tokenizer but no model (no config.json); pass a model checkpoint directory")
            if (p / "checkpoints").is_dir():
                raise UsageError(f"{flag} {spec}: is an unfinished run (no final model); resume it or pass a finished run")
            raise UsageError(f"{flag} {spec}: not a model directory (no config.json); pass a run directory, a checkpoint or a hub id")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{flag} {spec}: config.json is not valid JSON") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise UsageError(f"{flag} {spec}: config.json has no model_type; not a Hugging Face model checkpoint")
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise UsageError(f"{flag} {spec}: holds a config but no weights (*.safetensors or *.bin)")
        run = None
        if (p / "nlptl-run.json").is_file():
            try:
                run = json.loads((p / "nlptl-run.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                run = None
        return ModelRef(spec, str(p), True, config, run)
    # Not on disk: a hub id has the form name or org/name.
    if spec.count("/") > 1 or spec.startswith((".", "~")) or "\\" in spec or not spec.strip():
        raise UsageError(f"{flag} {spec}: no such directory")
    if "/" in spec and p.parent.is_dir():
        # 'runs/genral' where ./runs exists: a typo in a local path, not a hub id.
        from nlptl.errors import did_you_mean

        siblings = [c.name for c in p.parent.iterdir() if c.is_dir()]
        raise UsageError(f"{flag} {spec}: no such directory{did_you_mean(p.name, siblings)}")
    from nlptl import hub

    hub.require(spec, "model", f"{flag} {spec}", "pass a local checkpoint directory")
    return ModelRef(spec, spec, False, None, None)


def hub_guard(ref: ModelRef, flag: str = "--from") -> None:
    """For a hub id: fail fast offline, unless it is already in the local cache."""
    if ref.local:
        return
    from nlptl import hub

    hub.prepare(ref.path)


def load_error(ref: ModelRef, e: Exception, flag: str = "--from") -> NlptlError:
    from nlptl import hub

    if not ref.local and not hub.reachable():
        return NlptlError(
            f"{flag} {ref.spec}: the Hugging Face Hub is unreachable (offline) and the model is not in the local cache; "
            "pass a local checkpoint directory"
        )
    if not ref.local:
        return NlptlError(f"{flag} {ref.spec}: not a local directory and not loadable from the hub ({str(e).splitlines()[0][:160]})")
    return NlptlError(f"{flag} {ref.spec}: could not load the model: {str(e).splitlines()[0][:200]}")


def max_positions(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value - 2 if config.model_type in OFFSET_POSITIONS else value
    return None


def default_objective(config) -> str:
    """MLM for encoders (the model type has a masked-LM class), CLM for decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_decoder", False):
        return "clm"
    return "mlm" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "clm"


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
        raise NlptlError(f"--from {ref.spec}: nlptl needs a fast (Rust) tokenizer (tokenizer.json); convert it with transformers")
    positions = max_positions(config)
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
            f"--from {ref.spec}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings hold {config.vocab_size}; "
            "pass the tokenizer the model was trained with"
        )
    return tokenizer


def load_config(ref: ModelRef):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.path)
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e) from e


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
            f"--from {ref.spec}: a {config.model_type} model has no {'masked' if objective == 'mlm' else 'causal'}-LM class; "
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


def uses_stock_head(config, pooling: str) -> bool:
    """Whether transformers' own sequence-classification class implements this pooling."""
    return (family(config), pooling) in (("encoder", "cls"), ("decoder", "last"))


def _stock_class(config):
    """The family's stock classifier class, looked up by name (not through the Auto registry, which
    a trust_remote_code load in the same process can redirect)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None or not hasattr(transformers, name):
        raise NlptlError(f"transformers has no sequence-classification class for {config.model_type}; try --pooling mean")
    return getattr(transformers, name)


def load_classifier(ref: ModelRef, config, labels: list[str], tokenizer, pooling: str = "auto"):
    """A classifier with a new head on the checkpoint's body. Stock transformers classes where they
    implement the pooling; otherwise nlptl's pooled head (nlptl/heads.py, shipped via auto_map)."""
    id2label = dict(enumerate(labels))
    config.num_labels = len(labels)
    config.id2label = id2label
    config.label2id = {v: k for k, v in id2label.items()}
    # Decoders classify from the last non-pad token; the config must know the pad id.
    config.pad_token_id = tokenizer.pad_token_id
    pooling = resolve_pooling(config, pooling)
    try:
        if uses_stock_head(config, pooling):
            for attr in ("nlptl_pooling", "auto_map"):
                if hasattr(config, attr):
                    delattr(config, attr)
            return _stock_class(config).from_pretrained(ref.path, config=config, ignore_mismatched_sizes=True)
        from nlptl.heads import NlptlForSequenceClassification

        config.nlptl_pooling = pooling
        config.auto_map = {"AutoModelForSequenceClassification": "modeling_nlptl.NlptlForSequenceClassification"}
        return NlptlForSequenceClassification.from_pretrained(ref.path, config=config, ignore_mismatched_sizes=True)
    except NlptlError:
        raise
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e) from e


def save_head_code(model, directory) -> None:
    """Ship nlptl's head code next to a classifier that uses it (for trust_remote_code loading)."""
    import shutil

    if getattr(model.config, "nlptl_pooling", None):
        shutil.copy2(Path(__file__).with_name("heads.py"), Path(directory) / "modeling_nlptl.py")


# --------------------------------------------------------------------------- from scratch


def train_tokenizer(arch: str, texts, vocab_size: int, positions: int):
    """Byte-level BPE (gpt) or WordPiece (bert) trained on `texts` (an iterator of lists of str)."""
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if arch == "gpt":
        tk = ByteLevelBPETokenizer(add_prefix_space=False)
        tk.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[GPT_EOS],
                               show_progress=False)
        return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, bos_token=GPT_EOS, eos_token=GPT_EOS,
                                       unk_token=GPT_EOS, model_max_length=positions)
    tk = BertWordPieceTokenizer(lowercase=True)
    tk.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # BertWordPieceTokenizer sets its [CLS] ... [SEP] template only when the vocabulary exists at
    # construction, so a tokenizer trained from nothing has none: set it now.
    from tokenizers.processors import BertProcessing

    tk._tokenizer.post_processor = BertProcessing(("[SEP]", tk.token_to_id("[SEP]")), ("[CLS]", tk.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                   model_max_length=positions)


def build_scratch(arch: str, size: str, tokenizer):
    """A randomly initialised GPT-2 or BERT of a preset size, sized to the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config

    layers, hidden, heads, positions = PRESETS[size]
    vocab = len(tokenizer)
    if arch == "gpt":
        config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return AutoModelForCausalLM.from_config(config)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=min(positions, 512),
                        pad_token_id=tokenizer.pad_token_id)
    return AutoModelForMaskedLM.from_config(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_trained_classifier(ref: ModelRef):
    """A fine-tuned classifier for inference: (model, tokenizer, label names, max_length)."""
    hub_guard(ref, "--model")
    config = load_config(ref)
    tokenizer = load_tokenizer(ref, config)
    try:
        if getattr(config, "nlptl_pooling", None):
            from nlptl.heads import NlptlForSequenceClassification

            model = NlptlForSequenceClassification.from_pretrained(ref.path, config=config)
        else:
            model = _stock_class(config).from_pretrained(ref.path, config=config)
    except NlptlError:
        raise
    except Exception as e:  # noqa: BLE001
        raise load_error(ref, e, "--model") from e
    names = [config.id2label[i] for i in range(config.num_labels)]
    max_length = (ref.run or {}).get("max_length") or min(256, max_positions(config) or 256)
    return model, tokenizer, names, max_length


# --------------------------------------------------------------------------- masked-only MLM


def mlm_head(model):
    """The module that maps hidden states to vocabulary logits in a masked-LM model, when it is one
    module that works position by position (BERT's `cls`, RoBERTa's `lm_head`); else None."""
    import torch.nn as nn

    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def masked_only(model):
    """Wrap a masked-LM model so that training predicts only the masked positions.

    Most tokens of a block are not masked, yet the stock forward projects every position onto the
    vocabulary; for a small encoder that projection costs about as much as the rest of the model.
    The loss is the same (cross-entropy over the masked positions). Returns None when the model's
    head cannot be applied to a subset of positions (the caller then uses the stock forward)."""
    import torch.nn as nn
    import torch.nn.functional as F

    head = mlm_head(model)
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or base is None or base is model:
        return None

    class MaskedOnly(nn.Module):
        # A module of its own so that DDP wraps it: the forward below must run inside DDP's forward
        # for gradients to be synchronised across processes.
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, labels, attention_mask=None, token_type_ids=None):
            inputs = {"input_ids": input_ids}
            if attention_mask is not None:
                inputs["attention_mask"] = attention_mask
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            hidden = getattr(self.lm, self.lm.base_model_prefix)(**inputs).last_hidden_state
            selected = labels != -100
            if not selected.any():  # nothing masked in this batch: a zero loss that keeps the graph
                return _Output(hidden.sum() * 0.0)
            logits = mlm_head(self.lm)(hidden[selected])
            return _Output(F.cross_entropy(logits.float(), labels[selected]))

    return MaskedOnly(model)


class _Output:
    def __init__(self, loss):
        self.loss = loss


# --------------------------------------------------------------------------- LoRA (peft)

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
CLASSIFIER_HEADS = ("pre_classifier", "classifier", "score")
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
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model.config.model_type, cfg.lora_targets)
    import torch.nn as nn

    heads = [n for n in CLASSIFIER_HEADS if isinstance(getattr(model, n, None), nn.Module)]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, modules_to_save=heads or None,
                        # GPT-2 stores its projections as Conv1D, whose weight is transposed.
                        fan_in_fan_out=model.config.model_type == "gpt2")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        if "not found" in str(e) or "Target modules" in str(e):
            raise UsageError(f"--lora-targets {','.join(targets)}: no such modules in this {model.config.model_type} model; "
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
