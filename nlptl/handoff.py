"""The hand-off between stages: what a stage's `auto` choices read of the checkpoint it starts from.

Every stage that makes a checkpoint (pretrain, adapt with any objective, finetune) writes a `handoff`
entry into its lineage: the pooling its texts are read with, where the body comes from (an nlptl model
trained from scratch, or a pretrained one), its objective and its positions. The next stage reads it
here, and only here. A checkpoint nlptl did not make (a hub model, a plain `save_pretrained` directory)
has no entry: what it says of itself (sentence-transformers' 1_Pooling, its config) stands in.

Each `auto` choice is a `Choice`: what was chosen and why ("pooling mean: from the base checkpoint's
sentence-transformers config"). Stages log it when made and record it in the run's lineage
(`choices`), which the model card shows. Before this record, `adapt` silently dropped a sentence
encoder's mean pooling, and the classifier after it pooled the first token (issue 24).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("nlptl")

# Where a body comes from, which decides the rate that fine-tunes it (rates.DEFAULT_RATES).
SCRATCH, PRETRAINED, CONTRASTIVE = "scratch", "pretrained", "contrastive"


@dataclass(frozen=True)
class Choice:
    """One `auto` choice of a stage: its option, the value chosen and why."""

    name: str
    value: object
    why: str

    def record(self) -> dict:
        return {"value": self.value, "why": self.why}


def announce(*choices: Choice | None) -> dict:
    """Log each choice (one line: what and why) and return them as the lineage's `choices` entry."""
    out = {}
    for c in choices:
        if c is None:
            continue
        log.info("%s %s: %s", c.name, _fmt(c.value), c.why)
        out[c.name] = c.record()
    return out


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def of(ref) -> dict:
    """The hand-off entry the run behind `ref` wrote ({} for a checkpoint nlptl did not make, or an older run)."""
    return ref.lineage.get("handoff") or {}


def origin(ref) -> Choice:
    """Where the body of `ref` comes from: an nlptl model pretrained from scratch, a contrastive adapt
    run, or a pretrained checkpoint (anything else)."""
    recorded = of(ref).get("origin")
    lineage = ref.lineage
    if lineage.get("objective") == "contrastive":
        # A contrastive run on a body pretrained from scratch is still a scratch body: SetFit's slow body
        # and fast head leave its classifier at chance (a tiny GPT: -6 to -18 points against finetuning it
        # directly), where the scratch rate matches direct finetuning (docs/results.md, "Composing stages").
        if of(ref).get("body", SCRATCH if _scratch_root(lineage) else PRETRAINED) == SCRATCH:
            return Choice("origin", SCRATCH, f"{ref.spec} is a contrastive adapt run on a body pretrained from scratch")
        return Choice("origin", CONTRASTIVE, f"{ref.spec} is a contrastive adapt run")
    if recorded in (SCRATCH, PRETRAINED):
        return Choice("origin", recorded, f"recorded by the {lineage.get('stage', 'nlptl')} run {ref.spec}")
    if _scratch_root(lineage):  # runs written before the hand-off record
        return Choice("origin", SCRATCH, f"{ref.spec}'s lineage starts with a pretrain from scratch")
    return Choice("origin", PRETRAINED, f"{ref.spec} is a pretrained checkpoint")


def _scratch_root(lineage: dict) -> bool:
    """Whether the lineage starts with a pretrain from random weights."""
    root = lineage
    while isinstance(root.get("parent"), dict):
        root = root["parent"]
    return root.get("stage") == "pretrain" and root.get("source") == "scratch"


def lm_origin(ref) -> str:
    """The origin a language-modelling stage hands on from `ref` (and the body a contrastive stage records):
    a contrastive encoder continued with MLM or CLM is a pretrained body again (its pair geometry is not
    what it keeps); one trained from scratch stays scratch."""
    where = origin(ref).value
    return PRETRAINED if where == CONTRASTIVE else where


def pooling(ref, config, requested: str = "auto", sentence: bool = False) -> Choice:
    """The pooling a classifier (or a contrastive stage) reads `ref`'s texts with: --pooling as given; else
    what the run behind `ref` handed on; else what a sentence encoder's own files say; else the family's
    default: the last real token for decoders; for encoders the first token, or with `sentence` (a
    sentence embedding: the contrastive stage) the mean of the tokens, as sentence-transformers and SetFit."""
    from nlptl import models

    if requested != "auto":
        return Choice("pooling", requested, "--pooling")
    carried = carried_pooling(ref)
    if carried is not None:
        return carried
    family = models.family(config)
    if sentence and family == "encoder":
        return Choice("pooling", "mean",
                      f"the sentence-embedding default for an encoder; {ref.spec} records no pooling")
    return Choice("pooling", models.resolve_pooling(config, "auto"),
                  f"the {family} default; {ref.spec} records no pooling")


def carried_pooling(ref) -> Choice | None:
    """The pooling `ref` says it was trained with: what the nlptl run behind it handed on, else a
    sentence encoder's own files (sentence-transformers' 1_Pooling); None when it says nothing."""
    from nlptl import models

    handed = of(ref).get("pooling")
    if handed:
        return Choice("pooling", handed["value"], f"handed on by {ref.spec} ({handed['why']})")
    trained = models.trained_pooling(ref)
    if trained:
        return Choice("pooling", trained, f"from {ref.spec}'s sentence-transformers config (1_Pooling)")
    return None


def record(*, pooling: Choice | str | None, origin_of: str, objective: str | None, config,
           body: str | None = None) -> dict:
    """The `handoff` entry a stage writes into its lineage for the stages after it; `body`: a contrastive
    run's, where its body came from (scratch or pretrained), which decides finetune's rates after it."""
    from nlptl.models import positions_of

    out: dict = {"origin": origin_of, "objective": objective, "max_positions": positions_of(config),
                 **({"body": body} if body else {})}
    if isinstance(pooling, Choice):
        out["pooling"] = {"value": pooling.value, "why": pooling.why}
    elif pooling:
        out["pooling"] = {"value": pooling, "why": "the pooling this stage trained with"}
    return out
