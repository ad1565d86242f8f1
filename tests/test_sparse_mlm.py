"""Masked-only MLM prediction gives the loss (and gradients) of full-vocabulary prediction."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masked_only_loss_equals_the_full_loss(kind):
    import transformers as tf

    from nlptl.models import masked_only

    torch.manual_seed(0)
    if kind == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64))
    else:
        model = tf.RobertaForMaskedLM(tf.RobertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64,
                                                       max_position_embeddings=514))
    model.eval()  # no dropout: both paths must see the same network
    ids = torch.randint(5, 200, (4, 24))
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape) < 0.2
    labels[chosen] = ids[chosen]
    full = model(input_ids=ids, labels=labels).loss
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sparse = masked_only(model)(input_ids=ids, labels=labels).loss
    sparse.backward()
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    for n, p in model.named_parameters():
        if n in full_grads:
            assert torch.allclose(p.grad, full_grads[n], atol=1e-6), n


def test_masked_only_declines_models_without_a_positionwise_head():
    import transformers as tf

    from nlptl.models import masked_only

    model = tf.DistilBertForMaskedLM(tf.DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    assert masked_only(model) is None  # the stage then uses the stock forward
