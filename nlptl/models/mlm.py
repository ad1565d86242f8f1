"""Masked-LM training on the masked positions only: the same loss as the stock forward, without
projecting every position onto the vocabulary.
"""

from __future__ import annotations


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
        masked_only = True  # what `unwrap_lm` looks for

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


def unwrap_lm(model):
    """The language model inside `masked_only`'s wrapper, or `model` itself: what held-out scoring and
    the probe run on while the loop trains the wrapper."""
    return model.lm if getattr(model, "masked_only", False) else model


class _Output:
    def __init__(self, loss):
        self.loss = loss
