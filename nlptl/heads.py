"""nlptl's pooled sequence classifier: any transformers backbone + a pooling + a linear head.

Used for the poolings that no stock transformers class offers (mean and ULMFiT's concat pooling for
every family, cls for decoders, last for encoders). A finetune directory that uses it ships this file
as `modeling_nlptl.py` and names it in `auto_map`, so it loads anywhere with

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
    pipeline("text-classification", model=DIR, trust_remote_code=True)

Self-contained on purpose (torch and transformers only): it is copied into run directories.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("cls", "mean", "last", "concat")


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

    config_class = PretrainedConfig
    base_model_prefix = "backbone"  # replaced per instance by the family's own prefix (bert, transformer, model...)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.pooling = getattr(config, "nlptl_pooling", "mean")
        try:
            # The pooler of BERT-style models is unused here; leaving it out keeps multi-process
            # training free of unused parameters.
            backbone = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            backbone = AutoModel.from_config(config)
        # The body sits under the family's own prefix (bert., transformer., model., ...), so language-model
        # checkpoints of that family load into it as they are and saved weights keep the usual names.
        self.base_model_prefix = backbone.base_model_prefix
        setattr(self, self.base_model_prefix, backbone)
        width = config.hidden_size * (3 if self.pooling == "concat" else 1)
        self.dropout = nn.Dropout(getattr(config, "nlptl_dropout", 0.1))
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
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
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        inputs.update({k: v for k, v in kwargs.items() if k in ("inputs_embeds", "position_ids")})
        hidden = self.backbone(**inputs).last_hidden_state
        logits = self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
