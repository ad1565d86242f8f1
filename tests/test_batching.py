"""Length-grouped batching: every example exactly once per epoch, with less padding than random batches."""

from __future__ import annotations

import random

import torch


class Recorder(torch.nn.Module):
    """A model that records which examples each batch holds; its loss trains one weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list[int]] = []

    def forward(self, input_ids, attention_mask, labels):
        self.batches.append(labels.tolist())
        return type("Out", (), {"loss": (self.w - 1).pow(2).sum() + 0 * input_ids.sum()})()


def padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_epoch_sees_every_example_once_with_less_padding():
    import datasets
    from accelerate import Accelerator

    from nlptl.config import TrainConfig
    from nlptl.objective import Objective
    from nlptl.train import train

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(203)]
    data = [{"input_ids": list(range(n)), "labels": i} for i, n in enumerate(lengths)]

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}

    grouped, random_order = Recorder(), Recorder()
    cfg = TrainConfig(epochs=1, batch_size=8, log_every=1000)
    dataset = datasets.Dataset.from_list(data)
    train(Accelerator(cpu=True), grouped, dataset, cfg, Objective(collate, by_length=True), description="t")
    train(Accelerator(cpu=True), random_order, dataset, cfg, Objective(collate), description="t")
    seen = sorted(i for b in grouped.batches for i in b)
    assert seen == list(range(len(data)))  # each example exactly once
    assert padded_tokens(grouped.batches, lengths) < 0.3 * padded_tokens(random_order.batches, lengths)
    means = [sum(lengths[i] for i in b) / len(b) for b in grouped.batches]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # grouped, not one global sort
