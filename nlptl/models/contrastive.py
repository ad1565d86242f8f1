"""The model of contrastive task adaptation (`nlptl adapt --objective contrastive`, stages/contrastive.py):
an encoder, pooled, that embeds the two texts of each pair, and the pair losses of sentence-transformers
(SetFit's first stage). Light at import: torch loads inside the functions."""

from __future__ import annotations

from types import SimpleNamespace

MARGIN = 0.5  # sentence-transformers' ContrastiveLoss default


def pair_loss(cosine, target, kind: str):
    """The loss of a batch of pairs from their cosine similarities and 1/0 targets."""
    if kind == "cosine":
        return ((cosine - target) ** 2).mean()
    distance = 1 - cosine
    hinge = (MARGIN - distance).clamp(min=0)
    return 0.5 * (target * distance**2 + (1 - target) * hinge**2).mean()


def pair_encoder(encoder, pooling: str, loss: str):
    """The training model: the encoder, pooled, embedding both halves of a batch; its output's `loss`
    is the pair loss (what train() steps on)."""
    import torch
    from torch import nn

    from nlptl.models.heads import pool

    class PairEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, labels=None):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            first, second = pool(hidden, attention_mask, pooling).float().chunk(2)
            cosine = torch.nn.functional.cosine_similarity(first, second, dim=-1)
            return SimpleNamespace(loss=None if labels is None else pair_loss(cosine, labels.float(), loss),
                                   cosine=cosine)

    return PairEncoder()
