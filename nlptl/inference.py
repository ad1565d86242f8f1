"""Inference with a fine-tuned classifier, for every task shape: what `nlptl predict` runs, and what a
server or an exported model answers with.

The task shape is the checkpoint's `config.problem_type`, as transformers names it:

- single_label_classification: softmax; {"label", "score", "scores"}
- multi_label_classification: sigmoid; every label at or above the threshold (`config.nlptl_threshold`,
  default 0.5): {"labels", "scores", "threshold"}
- regression: the number itself: {"value"}

A model trained on text pairs (`config.nlptl_text_pair`) takes (text, text_pair) and its results carry
both. A result has "truncated": true when the text was longer than the model's input and was cut.
"""

from __future__ import annotations

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)
DEFAULT_THRESHOLD = 0.5


def problem_type(config) -> str:
    """The task shape a classifier's config says it was trained for (transformers' own rule when unset:
    one output is a regression)."""
    problem = getattr(config, "problem_type", None)
    if problem in PROBLEM_TYPES:
        return problem
    return REGRESSION if getattr(config, "num_labels", 2) == 1 else SINGLE


def label_names(config) -> list[str]:
    return [config.id2label[i] for i in range(config.num_labels)]


def threshold_of(config) -> float:
    return float(getattr(config, "nlptl_threshold", None) or DEFAULT_THRESHOLD)


def takes_pairs(config) -> bool:
    return bool(getattr(config, "nlptl_text_pair", False))


def outputs(logits, config, threshold: float | None = None) -> list[dict]:
    """[batch, num_labels] logits (a tensor or nested lists) -> one result per row, for the config's shape."""
    import torch

    logits = torch.as_tensor(logits).float()
    problem, names = problem_type(config), label_names(config)
    if problem == REGRESSION:
        return [{"value": v} for v in logits[:, 0].tolist()]
    if problem == MULTI:
        t = threshold_of(config) if threshold is None else threshold
        out = []
        for row in logits.sigmoid().tolist():
            out.append({"labels": [n for n, p in zip(names, row, strict=True) if p >= t],
                        "scores": dict(zip(names, row, strict=True)), "threshold": t})
        return out
    out = []
    for row in logits.softmax(-1).tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row, strict=True))})
    return out


class Classifier:
    """A fine-tuned classifier loaded once, answering batches of texts (or pairs) in input order.

    `ref`: a models.ModelRef of a classifier; `max_length`: input cut (default: what it was trained with)."""

    def __init__(self, ref, max_length: int | None = None, device=None):
        from nlptl import models, runtime

        self.model, self.tokenizer, self.names, trained_length = models.load_trained_classifier(ref)
        self.config = self.model.config
        self.max_length = max_length or trained_length
        self.device = device or runtime.inference_device()
        self.model.to(self.device).eval()
        self.problem = problem_type(self.config)
        self.pairs = takes_pairs(self.config)

    def encode(self, texts: list[str], text_pairs: list[str] | None = None):
        """Tokenized batch (padded, cut to max_length) and, per text, whether it was cut."""
        pairs = text_pairs if text_pairs is not None else None
        full = self.tokenizer(texts, pairs)["input_ids"]
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return enc, [len(ids) > self.max_length for ids in full]

    def __call__(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32,
                 threshold: float | None = None) -> list[dict]:
        import torch

        if self.pairs and text_pairs is None:
            raise ValueError("this classifier was trained on text pairs: pass text_pairs")
        if not self.pairs and text_pairs is not None:
            raise ValueError("this classifier takes single texts, not pairs")
        # Sorting by length keeps padding (and time) low; results come back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(text_pairs[i] if text_pairs else ""))
        results: list = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc, cut = self.encode([texts[i] for i in idx], [text_pairs[i] for i in idx] if text_pairs else None)
                logits = self.model(**enc.to(self.device)).logits
                for i, res, was_cut in zip(idx, outputs(logits, self.config, threshold), cut, strict=True):
                    head = {"text": texts[i]} | ({"text_pair": text_pairs[i]} if text_pairs else {})
                    results[i] = head | res | ({"truncated": True} if was_cut else {})
        return results
