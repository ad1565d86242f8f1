"""nlptl's pooled sequence classifier: any transformers backbone + a pooling + a linear head.

Used for the poolings that no stock transformers class offers (mean and ULMFiT's concat pooling for
every family, cls for decoders, last for encoders). A finetune directory that uses it ships this file
as `modeling_nlptl.py` and names it in `auto_map`, so it loads anywhere with

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
    pipeline("text-classification", model=DIR, trust_remote_code=True)

Its config (`NlptlConfig`) has a model type of its own, "nlptl", and carries the backbone's keys flat
with the backbone's type in `backbone_model_type`. Saved under the backbone's type (as nlptl did before
issue 24), stock transformers without trust_remote_code loaded the directory as the backbone's stock
classifier with a new random pooler and head, and only logged it; a type it does not know makes it
refuse, asking for trust_remote_code. nlptl itself loads it without: `register()` tells the Auto
classes of its own process.

Long documents (`config.nlptl_window`): a text longer than one window is cut, inside `forward`, into
overlapping windows (each with the model's special tokens), every window is encoded and pooled, and
the windows are pooled into one document (mean, max or learned attention) before the head: ULMFiT's
BPT3C for transformers. Because it happens in the model, `pipeline()` on a whole document gives the
same answer as `nlptl predict`.

The loss follows `config.problem_type`, as transformers' own heads do: cross-entropy (one label),
binary cross-entropy per label (multi-label) or mean squared error (regression).

Self-contained on purpose (torch and transformers only): it is copied into run directories.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

POOLINGS = ("cls", "mean", "last", "concat")
DOC_POOLINGS = ("mean", "max", "attention")
# Where stock transformers finds the head's code, with trust_remote_code=True: this file, shipped as
# modeling_nlptl.py.
AUTO_MAP = {"AutoConfig": "modeling_nlptl.NlptlConfig",
            "AutoModelForSequenceClassification": "modeling_nlptl.NlptlForSequenceClassification"}
# Keys of the head's config that are not the backbone's.
HEAD_ONLY = ("model_type", "backbone_model_type", "auto_map", "transformers_version", "_name_or_path")


class NlptlConfig(PretrainedConfig):
    """The pooled classifier's config: the backbone's keys under their own names (GPT-2's n_embd), the
    backbone's type (`backbone_model_type`), the head's `nlptl_*` settings and the labels."""

    model_type = "nlptl"

    def __init__(self, backbone_model_type: str | None = None, **kwargs):
        # A backbone's own config dict (peft reads the base model's config.json with this class) names
        # the backbone in model_type; the instance's own model_type is always the class's.
        given = kwargs.pop("model_type", None)
        if backbone_model_type is None and given != self.model_type:
            backbone_model_type = given
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        self.backbone_model_type = backbone_model_type

    @classmethod
    def wrap(cls, config: PretrainedConfig) -> NlptlConfig:
        """The head's config around a backbone's config (one that nlptl's loaders or an older nlptl
        directory give: the backbone's class with the head's keys); a head's config as it is."""
        if getattr(config, "model_type", None) == cls.model_type:
            return config
        keys = {k: v for k, v in config.to_dict().items() if k not in HEAD_ONLY}
        return cls(backbone_model_type=config.model_type, attn_implementation=config._attn_implementation, **keys)

    def unwrap(self) -> PretrainedConfig:
        """The backbone's own config (its class, its defaults), the head's keys riding along."""
        keys = {k: v for k, v in self.to_dict().items() if k not in HEAD_ONLY}
        return AutoConfig.for_model(self.backbone_model_type, attn_implementation=self._attn_implementation, **keys)

    def to_diff_dict(self) -> dict:
        # What the backbone's class saves (the keys that differ from its own defaults), under the head's type.
        if not self.backbone_model_type:
            return super().to_diff_dict()  # a bare NlptlConfig(): no backbone to take defaults from
        out = self.unwrap().to_diff_dict()
        out.update(model_type=self.model_type, backbone_model_type=self.backbone_model_type,
                   auto_map=getattr(self, "auto_map", None) or dict(AUTO_MAP))
        return out

    def __getattr__(self, name: str):
        # Only for names not set on the config: the backbone's aliases of transformers' common names
        # (GPT-2's hidden_size is n_embd), which its config class would answer.
        backbone = self.__dict__.get("backbone_model_type")
        alias = CONFIG_MAPPING[backbone].attribute_map.get(name) if backbone in CONFIG_MAPPING else None
        if alias is None or alias not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self.__dict__[alias]


def register() -> None:
    """Let this process's AutoConfig and AutoModelForSequenceClassification load nlptl's head (nlptl's
    own loaders call it; stock transformers elsewhere needs trust_remote_code=True instead)."""
    AutoConfig.register(NlptlConfig.model_type, NlptlConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(NlptlConfig, NlptlForSequenceClassification, exist_ok=True)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """[batch, seq, width] -> [batch, width] (concat: [batch, 3 * width] = [last, max, mean], ULMFiT)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "cls":
        return hidden[:, 0]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    # The last real token, whatever the padding side: the highest position the mask keeps.
    last_index = (attention_mask.to(torch.long) * positions).argmax(-1)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
    if how == "last":
        return last
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "mean":
        return mean
    neg = torch.finfo(hidden.dtype).min
    maxed = hidden.masked_fill(mask == 0, neg).max(1).values
    return torch.cat([last, maxed, mean], dim=-1)


class NlptlForSequenceClassification(PreTrainedModel):
    """Backbone (`AutoModel` of the checkpoint's family) -> pooling (`config.nlptl_pooling`) -> dropout -> linear."""

    config_class = NlptlConfig
    base_model_prefix = "backbone"  # replaced per instance by the family's own prefix (bert, transformer, model...)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: PretrainedConfig):
        # A backbone's config (an older nlptl directory, or a caller's) becomes the head's own, so that
        # whatever saves this model saves it under the head's model type.
        config = NlptlConfig.wrap(config)
        super().__init__(config)
        self.pooling = getattr(config, "nlptl_pooling", "mean")
        body_config = config.unwrap()
        try:
            # The pooler of BERT-style models is unused here; leaving it out keeps multi-process
            # training free of unused parameters.
            backbone = AutoModel.from_config(body_config, add_pooling_layer=False)
        except TypeError:
            backbone = AutoModel.from_config(body_config)
        # The body sits under the family's own prefix (bert., transformer., model., ...), so language-model
        # checkpoints of that family load into it as they are and saved weights keep the usual names.
        self.base_model_prefix = backbone.base_model_prefix
        setattr(self, self.base_model_prefix, backbone)
        width = body_config.hidden_size * (3 if self.pooling == "concat" else 1)
        self.window = getattr(config, "nlptl_window", None)
        self.doc_pooling = getattr(config, "nlptl_doc_pooling", "mean")
        if self.window and self.doc_pooling == "attention":
            self.window_attention = nn.Linear(width, 1)  # a learned score per window
        self.dropout = nn.Dropout(getattr(config, "nlptl_dropout", 0.1))
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None) or module is getattr(self, "window_attention", None):
            nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)
        elif hasattr(self, "base_model_prefix") and hasattr(self, self.base_model_prefix):
            getattr(self, self.base_model_prefix)._init_weights(module)

    @property
    def backbone(self):
        return getattr(self, self.base_model_prefix)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if self.window and input_ids is not None and input_ids.shape[1] > self.window:
            pooled = self._documents(input_ids, attention_mask)
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            inputs.update({k: v for k, v in kwargs.items() if k in ("inputs_embeds", "position_ids")})
            hidden = self.backbone(**inputs).last_hidden_state
            pooled = pool(hidden, attention_mask, self.pooling)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _documents(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[batch, long seq] -> [batch, width]: each text cut into windows of `nlptl_window` tokens that
        share `nlptl_stride` tokens, each window framed by the special tokens the text starts and ends
        with (`nlptl_window_specials`: how many), encoded, pooled, then pooled over the text's windows."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        n_pre, n_post = getattr(self.config, "nlptl_window_specials", (0, 0))
        body = self.window - n_pre - n_post
        step = max(1, body - int(getattr(self.config, "nlptl_stride", 0) or 0))
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        windows, counts = [], []
        for ids in (row[m.bool()] for row, m in zip(input_ids, attention_mask, strict=True)):
            pre, content, post = ids[:n_pre], ids[n_pre:len(ids) - n_post], ids[len(ids) - n_post:]
            starts = range(0, max(1, len(content) - body + step), step) if len(content) > body else [0]
            for s in starts:
                windows.append(torch.cat([pre, content[s:s + body], post]))
            counts.append(len(starts))
        width = max(len(w) for w in windows)
        ids = input_ids.new_full((len(windows), width), pad)
        mask = torch.zeros_like(ids)
        for i, w in enumerate(windows):
            ids[i, :len(w)], mask[i, :len(w)] = w, 1
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        per_window = pool(hidden, mask, self.pooling)
        docs = []
        for reps in torch.split(per_window, counts):
            if self.doc_pooling == "max":
                docs.append(reps.max(0).values)
            elif self.doc_pooling == "attention":
                weights = self.window_attention(reps).float().softmax(0).to(reps.dtype)
                docs.append((weights * reps).sum(0))
            else:
                docs.append(reps.mean(0))
        return torch.stack(docs)


def _cross_entropy(logits, labels, weight):
    return nn.functional.cross_entropy(logits, labels, weight=weight)


def _binary_cross_entropy(logits, labels, weight):
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)


def _mean_squared_error(logits, labels, weight):
    return nn.functional.mse_loss(logits.squeeze(-1), labels.float().view(-1))


# The loss of each task shape, by its problem_type: the loss column of nlptl/shapes.py's table, kept here
# because this file is copied into run directories and imports nothing of nlptl (a test holds the two equal).
LOSSES = {"single_label_classification": _cross_entropy, "multi_label_classification": _binary_cross_entropy,
          "regression": _mean_squared_error}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config, weight: torch.Tensor | None = None):
    """The loss of `config.problem_type` (transformers' rule when unset: one output is a regression).
    `weight`: per-class weights (cross-entropy) or per-label positive weights (multi-label)."""
    problem = getattr(config, "problem_type", None) or (
        "regression" if config.num_labels == 1 else "single_label_classification")
    return LOSSES.get(problem, _cross_entropy)(logits.float(), labels, weight)


class _PipelineCheckFilter:
    """transformers' text-classification pipeline checks the model's class against its list of stock
    classes and, for a class it was not told about (this one, in a directory whose config names the
    backbone's type), logs an error listing 100+ class names, then runs the model fine. That record,
    for this class only, is dropped at its logger; every other record passes."""

    prefix = "The model 'NlptlForSequenceClassification' is not supported for"

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _quiet_pipeline_check() -> None:
    import logging

    logger = logging.getLogger("transformers.pipelines.base")
    # Once per process, though this file runs again each time a directory's copy loads as remote code.
    if not any(type(f).__name__ == _PipelineCheckFilter.__name__ for f in logger.filters):
        logger.addFilter(_PipelineCheckFilter())


_quiet_pipeline_check()
