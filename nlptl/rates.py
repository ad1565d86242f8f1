"""The rates a stage trains at: --lr and --head-lr, resolved here, once, for every stage.

The rule, in order:

1. `--lr 3e-4` (a number): that rate; the head's is --head-lr where given, else the same.
2. `--lr auto`: the learning-rate range test's rate (lr_find.py), kept in its record: for finetune capped
   by the body's origin (AUTO_CAP) and lowered after a one-class start (stages/classifier.py); the head's
   is --head-lr where given.
3. `--lr` not given: finetune by where the body comes from (DEFAULT_RATES, read from the checkpoint's
   lineage: handoff.origin), adapt by its objective (OBJECTIVE_RATES); a given --head-lr wins over the
   default's head rate.

`resolve` returns the rates and, where nlptl chose them, the choice and its reason (logged and kept in the
lineage's `choices`). They become the training config's `lr` and `head_lr` (`Rates.apply`), which train()
reads, and the stage's metrics (`lr`, `head_lr`) show them. The config a run records keeps --lr as typed
(a number, auto, or unset), so that a recipe or a rerun resolves it again by the same rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nlptl.handoff import CONTRASTIVE, PRETRAINED, SCRATCH, Choice

# finetune's (body, head) peak rates when --lr is not given, by origin (docs/results.md, "Default rates").
# - pretrained (a hub encoder, or an nlptl run that started from one): 1e-4, the best of the ablation's
#   grid {2e-5, 5e-5, 1e-4} for all-MiniLM-L6-v2 at 500 labels and tied best at 100.
# - scratch (an nlptl model pretrained from random weights, at any later stage): a small body that has
#   seen a few million tokens learns a classifier at 3e-4 to 1e-3 and barely moves at 1e-4 (the
#   ablation's gpt-plain rows; a tiny GPT scored chance at 1e-4 since the first release).
# - contrastive: the body moves slowly and the head fast, as SetFit trains its differentiable head: at
#   1e-4 everywhere the body's pair geometry is overwritten (docs/results.md, few labels).
DEFAULT_RATES = {PRETRAINED: (1e-4, None), SCRATCH: (1e-3, None), CONTRASTIVE: (1e-5, 1e-2)}
# --lr auto never goes above this for a pretrained body: the range test's "divergence/100" picked 3.5e-3
# for all-MiniLM-L6-v2, which collapses it to one class (issue 24); the ablation's best rates were 5e-5-1e-4.
AUTO_CAP = {PRETRAINED: 3e-4, CONTRASTIVE: 1e-4, SCRATCH: None}
# adapt's rate when --lr is not given, by objective, with what the default is: SetFit's body rate for the
# contrastive stage (every few-label cell of docs/results.md ran at it), 1e-4 for MLM and CLM.
OBJECTIVE_RATES = {"mlm": (1e-4, ""), "clm": (1e-4, ""), "contrastive": (2e-5, " (SetFit's body rate)")}


@dataclass(frozen=True)
class Rates:
    """The peak rates of a run: `lr` (the body's, and the head's without `head_lr`), and how nlptl chose them
    (None when --lr was given as a number)."""

    lr: float
    head_lr: float | None = None
    choice: Choice | None = None

    def apply(self, cfg):
        """`cfg` with these rates: what train() and the stage's metrics read."""
        head = {"head_lr": self.head_lr} if hasattr(cfg, "head_lr") else {}
        return dataclasses.replace(cfg, lr=self.lr, **head)


def resolve(cfg, *, origin: Choice | None = None, objective: str | None = None,
            range_test: dict | None = None) -> Rates:
    """The rates of a stage by the rule above. `origin`: where finetune's body comes from (handoff.origin);
    `objective`: adapt's (mlm, clm, contrastive); `range_test`: --lr auto's record (lr_find.py)."""
    head_lr = getattr(cfg, "head_lr", None)
    if cfg.lr == "auto":
        lr = range_test["lr"]
        # The rate the test found, where its record kept it beside the capped one: the choice says both.
        return Rates(lr, head_lr, capped(range_test.get("found", lr), origin)[1] if origin is not None else None)
    if cfg.lr is not None:
        return Rates(cfg.lr, head_lr)
    if origin is not None:
        body, head = DEFAULT_RATES[origin.value]
        head = head_lr or head
        why = f"the default for a {origin.value} body ({origin.why})"
        if head is not None:
            why += f"; head lr {head:g}"
        return Rates(body, head, Choice("lr", body, why))
    lr, note = OBJECTIVE_RATES[objective]
    return Rates(lr, head_lr, Choice("lr", lr, f"the default for --objective {objective}{note}"))


def capped(found: float, origin: Choice) -> tuple[float, Choice]:
    """--lr auto for finetune: the range test's rate, capped for a pretrained body (AUTO_CAP)."""
    cap = AUTO_CAP[origin.value]
    if cap is not None and found > cap:
        return cap, Choice("lr", cap, f"--lr auto: the range test found {found:.3g}, capped at {cap:g} for a "
                                      f"{origin.value} body (higher rates collapse one: docs/results.md)")
    return found, Choice("lr", found, "--lr auto: the learning-rate range test (lr_find.json)")
