"""Layer groups, discriminative learning rates, schedules and gradual unfreezing (ULMFiT's techniques)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from nlptl.optim import GradualUnfreezing, build_optimizer, layer_groups, param_groups, schedule_factor


def tiny_classifier(kind: str):
    import transformers as tf

    common = dict(vocab_size=100, num_labels=2)
    if kind == "bert":
        cfg = tf.BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, **common)
        return tf.BertForSequenceClassification(cfg)
    if kind == "roberta":
        cfg = tf.RobertaConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=514, **common)
        return tf.RobertaForSequenceClassification(cfg)
    if kind == "distilbert":
        cfg = tf.DistilBertConfig(dim=16, n_layers=3, n_heads=2, hidden_dim=32, **common)
        return tf.DistilBertForSequenceClassification(cfg)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=16, n_layer=3, n_head=2, n_positions=64, pad_token_id=0, **common)
        return tf.GPT2ForSequenceClassification(cfg)
    cfg = tf.LlamaConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=32, pad_token_id=0, **common)
    return tf.LlamaForSequenceClassification(cfg)


FAMILIES = {  # family: (a parameter that must be in the embeddings group, one that must be in the head)
    "bert": ("bert.embeddings.word_embeddings.weight", "classifier.weight"),
    "roberta": ("roberta.embeddings.word_embeddings.weight", "classifier.out_proj.weight"),
    "distilbert": ("distilbert.embeddings.word_embeddings.weight", "classifier.weight"),
    "gpt2": ("transformer.wte.weight", "score.weight"),
    "llama": ("model.embed_tokens.weight", "score.weight"),
}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_layer_groups_follow_the_model_structure(kind):
    model = tiny_classifier(kind)
    names, groups = layer_groups(model)
    assert names == ["embeddings", "block 0", "block 1", "block 2", "head"]
    seen = [n for g in groups for n, _ in g]
    assert sorted(seen) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    emb, head = FAMILIES[kind]
    assert emb in [n for n, _ in groups[0]]
    assert head in [n for n, _ in groups[-1]]
    for i in range(3):  # block i holds only block i's parameters
        assert groups[1 + i] and all(f".{i}." in n for n, _ in groups[1 + i])


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_discriminative_lr_divides_by_the_factor_per_group(kind):
    model = tiny_classifier(kind)
    groups = param_groups(model, lr=1e-3, weight_decay=0.01, discriminative_lr=2.6)
    by_layer = {g["layer_group"]: g["lr"] for g in groups}
    assert sorted(by_layer) == [0, 1, 2, 3, 4]
    for layer, lr in by_layer.items():
        assert lr == pytest.approx(1e-3 / 2.6 ** (4 - layer))
    # biases and norms carry no weight decay, matrices do
    for g in groups:
        assert all((p.ndim < 2) == (g["weight_decay"] == 0.0) for p in g["params"])
    flat = build_optimizer(model, 1e-3, 0.01, 1.0)
    assert {g["lr"] for g in flat.param_groups} == {1e-3}


def test_unknown_architecture_falls_back_to_body_and_head(caplog):
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 4))
    model.add_module("classifier", torch.nn.Linear(4, 2))
    with caplog.at_level(logging.INFO, logger="nlptl"):
        names, groups = layer_groups(model)
    assert names == ["body", "head"]
    assert [n for n, _ in groups[1]] == ["classifier.weight", "classifier.bias"]
    assert "two groups" in caplog.text


def test_slanted_triangular_schedule_values():
    f = schedule_factor("stlr", total=100, cut_frac=0.1, ratio=32)
    assert f(0) == pytest.approx(1 / 32)
    assert f(10) == pytest.approx(1.0)  # the peak at cut = floor(T * cut_frac)
    assert f(5) == pytest.approx((1 + 0.5 * 31) / 32)
    assert f(55) == pytest.approx((1 + 0.5 * 31) / 32)  # halfway down the long decay
    assert f(100) == pytest.approx(1 / 32)
    assert all(f(t) < f(10) for t in range(100) if t != 10)


def test_other_schedules_values():
    lin = schedule_factor("linear", total=100, warmup_ratio=0.1)
    assert lin(0) == pytest.approx(1 / 11) and lin(10) == pytest.approx(1.0) and lin(55) == pytest.approx(0.5)
    cos = schedule_factor("cosine", total=110, warmup_ratio=0.0)
    assert cos(0) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    const = schedule_factor("constant", total=100, warmup_ratio=0.1)
    assert const(50) == 1.0 and const(99) == 1.0 and const(0) < 1
    one = schedule_factor("one-cycle", total=100)
    assert one(0) == pytest.approx(1 / 25)
    assert one(25) == pytest.approx(1.0)
    assert one(100) == pytest.approx(1 / 25e4)
    assert one(12) < one(25) and one(60) < one(25)


def test_gradual_unfreezing_opens_one_group_per_period():
    model = tiny_classifier("bert")
    opt = build_optimizer(model, 1e-3, 0.0)
    unfreeze = GradualUnfreezing(opt, every=2)
    counts = []
    for step in range(0, 12, 2):
        unfreeze.update(step)
        counts.append(n_trainable(unfreeze))
    total = sum(p.numel() for p in model.parameters())
    assert counts[0] == sum(p.numel() for n, p in layer_groups(model)[1][-1])  # head only
    assert counts == sorted(counts) and len(set(counts)) == 5  # one more group each period, 5 groups
    assert counts[-1] == total


def test_frozen_groups_do_not_move_in_the_loop(tmp_path):
    """Through the real loop: with 5 groups and a new group every 2 steps, 4 steps train only the head
    and the top block; embeddings and the lower blocks keep their weights exactly."""
    from accelerate import Accelerator

    from nlptl.config import TrainConfig
    from nlptl.objective import Objective
    from nlptl.train import train

    torch.manual_seed(0)
    model = tiny_classifier("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = [{"input_ids": torch.randint(5, 100, (8,)), "labels": torch.tensor(i % 2)} for i in range(32)]

    def collate(rows):
        return {"input_ids": torch.stack([r["input_ids"] for r in rows]),
                "labels": torch.stack([r["labels"] for r in rows])}

    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, gradual_unfreeze=True, unfreeze_every=2, warmup_ratio=0.0)
    model, result = train(Accelerator(cpu=True), model, data, cfg, Objective(collate), description="test")
    assert result.steps == 4
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("classifier") for n in moved)
    assert any(".layer.2." in n for n in moved)  # unfrozen at step 2
    assert not any(".layer.0." in n or ".layer.1." in n or "embeddings" in n for n in moved)
    assert math.isfinite(result.final_loss)


def test_optimizer_is_fused_on_cpu_and_updates_like_the_loop():
    """The fused AdamW (default on CPU and CUDA) gives the per-tensor loop's update, also for parameters
    whose gradients gradual unfreezing dropped (they must stay untouched)."""
    import copy

    model = tiny_classifier("bert")
    other, before = copy.deepcopy(model), copy.deepcopy(model)
    fused, loop = build_optimizer(model, 1e-3, 0.01, 2.6), build_optimizer(other, 1e-3, 0.01, 2.6, fused=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    torch.manual_seed(0)
    for _ in range(3):
        for a, b in zip(model.parameters(), other.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        for opt in (fused, loop):  # the embeddings group frozen, as gradual unfreezing does
            for p in opt.param_groups[-1]["params"]:
                p.grad = None
            opt.step()
    frozen = {id(p) for p in fused.param_groups[-1]["params"]}
    for (name, a), b, c in zip(model.named_parameters(), other.parameters(), before.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
        if id(a) in frozen:
            assert torch.equal(a, c), name


def n_trainable(unfreezing) -> int:
    """Parameters in the layer groups gradual unfreezing lets train."""
    return sum(p.numel() for g in unfreezing.optimizer.param_groups
               if g.get("layer_group", 0) >= unfreezing.trainable_from for p in g["params"])
