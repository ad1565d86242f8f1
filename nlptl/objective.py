"""What a training run optimises, handed to the loop (train.py) as one object: how examples become a
batch (collating; MLM masking; contrastive pairs), the loss a step computes, how the run is evaluated and
which evaluation keeps the weights, and when it stops early.

The stages build it: the language-modelling stages (`language_model`, stages/lm.py), finetune
(stages/classifier.py `classification`), contrastive adapt (stages/contrastive.py, its pairs collated by
PairCollator) and the learning-rate range test (lr_find.py: a stage's objective without its evaluations,
stopped at divergence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """One run's objective. Only `collate` is needed: the rest defaults to the model's own loss, no
    evaluation, and batches in a random order."""

    collate: Callable  # examples -> a batch, in the loader (on the CPU)
    # loss(model, batch) where the model's own loss is not the one to train on (class weights).
    loss: Callable | None = None
    # Applied to each batch in the loop (MLM masking), so that its random state at a step boundary is
    # exact; it draws from `random_source.generator` (default: `collate`'s), checkpointed with the run.
    transform: Callable | None = None
    random_source: object = None
    evaluate: Callable | None = None  # evaluate(model) -> metrics, at each evaluation
    # The metric and mode that keep the best weights, e.g. ("accuracy", "max"); "max_latest" keeps the
    # later of equal scores. None: the last weights are kept.
    select: tuple[str, str] | None = None
    evaluations: int = 0  # evenly spaced evaluations when --eval-every is not given
    by_length: bool = False  # batches of similar lengths (less padding), in a random order
    # stop_when(step, loss): True ends training after that step (the range test stops at divergence).
    stop_when: Callable | None = None

    def step_loss(self, model, batch):
        """The loss one micro-batch trains on."""
        return self.loss(model, batch) if self.loss is not None else model(**batch).loss

    @property
    def generator_owner(self):
        """The object whose `generator` the batch transform draws from: its state is checkpointed."""
        return self.random_source if self.random_source is not None else self.collate

    def without_evaluation(self, stop_when: Callable | None = None) -> Objective:
        """The same steps, without evaluations or selection (the range test's run)."""
        return dataclasses.replace(self, evaluate=None, select=None, evaluations=0, stop_when=stop_when)


def language_model(collate, objective: str, evaluate: Callable | None = None,
                   select: tuple[str, str] | None = None) -> Objective:
    """A language model's objective: `collate` is the objective's collator (data/collate.lm_collators).
    MLM masks in the loop: the loader stacks the blocks, the collator's `transform` masks them. With
    `evaluate`, four evaluations by default."""
    selection = {"evaluate": evaluate, "select": select, "evaluations": 4} if evaluate is not None else {}
    if objective != "mlm":
        return Objective(collate, **selection)
    return Objective(collate.stack, transform=collate.transform, random_source=collate, **selection)
