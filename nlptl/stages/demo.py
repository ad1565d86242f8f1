"""The whole chain on the sample data shipped with nlptl, offline, on a CPU, in about 20 seconds (one torch thread).

    nlptl demo                 # runs into $NLPTL_HOME/demo (default ./runs/demo)

A smoke run, not a result: a tiny GPT (2 layers, 64 wide) is pretrained from scratch on ~300 KB of
generated English, adapted on ~200 KB of generated reviews, and fine-tuned on 1,600 generated
sentiment sentences. The real recipe is in the README (adapt a pretrained checkpoint on `reviews`,
fine-tune on `sentiment`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nlptl.config import AdaptConfig, EvaluateConfig, FinetuneConfig, PredictConfig, PretrainConfig, runs_root
from nlptl.data.registry import ASSETS

log = logging.getLogger("nlptl")

EXAMPLES = [
    "The battery lasts for days and the screen is gorgeous.",
    "Dull plot, wooden acting, and far too long.",
    "Not bad at all, I would happily buy it again.",
]


def run(out: str | None = None) -> dict:
    import os

    from nlptl import console
    from nlptl.stages import adapt, evaluate, finetune, predict, pretrain

    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        # The demo's models are 2 x 64: a second thread only adds synchronisation. On a busy 2-core
        # machine (2026-11-30) the demo took 22 s with one thread and 137-199 s with two or torch's
        # default; OMP_NUM_THREADS overrides.
        torch.set_num_threads(1)
    root = Path(out) if out else runs_root() / "demo"
    dirs = {s: str(root / s) for s in ("pretrain", "adapt", "finetune")}
    rows, times = [], {}

    def timed(name, fn, cfg):
        log.info("demo: %s", name)
        t = time.perf_counter()
        result = fn(cfg)
        times[name] = time.perf_counter() - t
        return result

    pre = timed("pretrain", pretrain.run, PretrainConfig(
        arch="gpt", size="tiny", corpus="sample-general", out=dirs["pretrain"], overwrite=True, epochs=2, lr=2e-3))
    ada = timed("adapt", adapt.run, AdaptConfig(
        from_model=dirs["pretrain"], corpus="sample-reviews", out=dirs["adapt"], overwrite=True, epochs=1, lr=1e-3))
    fin = timed("finetune", finetune.run, FinetuneConfig(
        from_model=dirs["adapt"], task="sample-sentiment", out=dirs["finetune"], overwrite=True, epochs=2, lr=1e-3))
    ev = timed("evaluate", evaluate.run, EvaluateConfig(
        model=dirs["finetune"], data=str(ASSETS / "sentiment_test.csv")))
    preds = timed("predict", predict.run, PredictConfig(model=dirs["finetune"], texts=EXAMPLES))

    rows = [
        ["pretrain (tiny GPT, from scratch)",
         f"perplexity {pre['perplexity_before']:.0f} -> {pre['perplexity']:.1f}", times["pretrain"]],
        ["adapt (sample reviews)",
         f"perplexity {ada['perplexity_before']:.1f} -> {ada['perplexity']:.1f}", times["adapt"]],
        ["finetune (sample sentiment)",
         f"eval accuracy {fin['accuracy']:.3f}", times["finetune"]],
        ["evaluate (held-out test)",
         f"accuracy {ev['accuracy']:.3f}, macro-F1 {ev['f1_macro']:.3f}", times["evaluate"]],
    ]
    console.table("nlptl demo: a smoke run on tiny generated data (chance = 0.5)", ["stage", "result", "seconds"], rows)
    console.table("predictions", ["label", "score", "text"], [[p["label"], p["score"], p["text"]] for p in preds])
    log.info("runs are in %s. This was a smoke test on tiny data; for real results adapt a pretrained model on "
             "`reviews` and fine-tune on `sentiment` (see the README).", root)
    return {
        "pretrain": {k: pre[k] for k in ("perplexity_before", "perplexity", "output_dir")},
        "adapt": {k: ada[k] for k in ("perplexity_before", "perplexity", "output_dir")},
        "finetune": {k: fin[k] for k in ("accuracy", "f1_macro", "output_dir")},
        "test_accuracy": ev["accuracy"],
        "test_f1_macro": ev["f1_macro"],
        "predictions": [{"text": p["text"], "label": p["label"], "score": p["score"]} for p in preds],
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }
