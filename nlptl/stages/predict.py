"""Use a classifier: labels with scores for texts given as arguments, in a file, or on stdin.

    nlptl predict "What a lovely film" "Dull and far too long"      # the latest finetune run
    nlptl predict --model runs/finetune-... --input texts.txt --json
    cat texts.txt | nlptl predict --model DIR --input - --json      # JSON Lines, one object per text
"""

from __future__ import annotations

from nlptl.checkpoint import default_from
from nlptl.config import PredictConfig
from nlptl.data.files import read_lines
from nlptl.errors import UsageError
from nlptl.models import inspect_model
from nlptl.stages.common import check_max_length


def run(cfg: PredictConfig) -> list[dict]:
    ref = inspect_model(cfg.model or default_from("predict"), "--model")
    if not ref.is_classifier:
        raise UsageError(f"--model {ref.spec} is not a classifier; predict needs a finetune run")
    check_max_length(cfg.max_length, ref.config)
    texts = list(cfg.texts) + (read_lines(cfg.input) if cfg.input else [])
    if not texts:
        raise UsageError("no texts to classify; pass them as arguments, or --input FILE, or --input - for standard input")

    import torch

    from nlptl import models, runtime

    runtime.quiet_libraries()
    model, tokenizer, names, max_length = models.load_trained_classifier(ref)
    max_length = cfg.max_length or max_length
    device = runtime.inference_device()
    model.to(device).eval()
    # Sorting by length keeps padding (and time) low; results come back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs: list = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            p = model(**enc).logits.float().softmax(-1)
            for i, row in zip(idx, p.tolist(), strict=True):
                probs[i] = row
    out = []
    for text, row in zip(texts, probs, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"text": text, "label": names[best], "score": row[best],
                    "scores": {names[j]: row[j] for j in range(len(row))}})
    return out
