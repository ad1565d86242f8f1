"""Exporting a fine-tuned classifier to ONNX, checking the export against torch, and quantizing it.

`torch.onnx.export` (the TorchScript exporter) does the export, not optimum: optimum 2.x moved its
ONNX exporter and ORTModel classes into the separate optimum-onnx package, whose release (0.1.0)
requires transformers < 4.58 and optimum 2.1 (nlptl runs on transformers 5), and whose exporter knows
only stock transformers classes, not nlptl's pooled head (shipped as remote code). The classifier is
traced as it runs in `nlptl predict` (same inputs, logits out); the directory holds the files
`ORTModelForSequenceClassification.from_pretrained(DIR)` reads (model.onnx, config.json, tokenizer
files; not tested here, for the reason above) plus nlptl's record (nlptl-export.json).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from nlptl.inference import EXPORT_RECORD, ONNX_FILE, QUANTIZED_FILE

log = logging.getLogger("nlptl")

PARITY_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime (fp32) and torch
OPSET = 17
# Texts a parity check runs on when no --data is given: lengths from a word to past --max-length.
SAMPLE_TEXTS = [
    "Great.", "Awful, never again.", "It was fine, I suppose, though the second half dragged on a bit.",
    "The staff were friendly and the room was clean, but the street outside was loud until two in the morning.",
    "Not bad at all!", "I would not recommend this to anyone who values their time or their money.",
]


def logits_module(model, names: list[str]):
    """The classifier as a module of its input tensors (positional, in `names` order) -> logits: what
    the ONNX graph computes."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(names, tensors, strict=True))).logits

    return LogitsOnly().eval()


def input_names(tokenizer) -> list[str]:
    """The tokenizer's outputs the model takes, in a fixed order."""
    given = set(tokenizer.model_input_names)
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in given]


def export_onnx(classifier, path, opset: int = OPSET) -> list[str]:
    """Trace `classifier` (an inference.Classifier on the CPU) into an ONNX file with dynamic batch and
    sequence axes. Returns the graph's input names."""
    import warnings

    import torch

    names = input_names(classifier.tokenizer)
    # Two texts of different lengths: the batch has padding, so the attention-mask path is traced (with
    # a batch without padding transformers skips the mask, and the graph would ignore padding).
    texts = ["a short one", "a somewhat longer text, with more words in it than the first"]
    pairs = ["and its pair", "a pair"] if classifier.pairs else None
    enc, _ = classifier.encode(texts, pairs)
    args = tuple(enc[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The tracer warns about every Python branch on a shape; the parity check below is the test.
        warnings.simplefilter("ignore")
        torch.onnx.export(logits_module(classifier.model, names), args, str(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return names


def parity(torch_classifier, onnx_classifier, texts: list[str], pairs: list[str] | None, batch_size: int = 16) -> dict:
    """Logits of both engines on the same batches: the largest difference, and whether every result
    (label, labels or value) is the same."""
    import torch

    diffs, same, n = [], 0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            chunk_pairs = pairs[start : start + batch_size] if pairs else None
            enc, _ = torch_classifier.encode(chunk, chunk_pairs)
            a = torch_classifier.logits(enc).float().cpu()
            b = onnx_classifier.logits(enc).float()
            diffs.append((a - b).abs().max().item())
            from nlptl.inference import outputs

            ra, rb = outputs(a, torch_classifier.config), outputs(b, torch_classifier.config)
            same += sum(_decision(x) == _decision(y) for x, y in zip(ra, rb, strict=True))
            n += len(chunk)
    return {"texts": n, "max_abs_diff": max(diffs) if diffs else 0.0, "same_decision": same}


def _decision(result: dict):
    """What a result decides: the label, the set of labels, or the value (rounded to 2 decimals)."""
    if "label" in result:
        return result["label"]
    if "labels" in result:
        return tuple(result["labels"])
    return round(result["value"], 2)


def quantize_int8(src, dst) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly): onnxruntime's
    recipe for transformer encoders on CPUs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _without_preprocessing_advice():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


@contextmanager
def _without_preprocessing_advice():
    """quantize_dynamic advises, with `logging.warning` on the root logger, to pre-process the model first
    (shape inference for static quantization; nothing dynamic int8 needs, and the agreement check after it
    is what tells whether the int8 model is fine). Only that record is dropped, only during the call; a
    handler is held on the root logger meanwhile, because `logging.warning` on a root logger without one
    calls basicConfig(), which would print this and every later root record on stderr for good."""
    root = logging.getLogger()

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    hold = logging.NullHandler()
    root.addHandler(hold)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        root.removeHandler(hold)


def accuracy(classifier, texts: list[str], pairs: list[str] | None, gold: list[str], batch_size: int = 32) -> float:
    results = classifier(texts, pairs, batch_size)
    return sum(r.get("label") == g for r, g in zip(results, gold, strict=True)) / max(1, len(gold))


__all__ = ["EXPORT_RECORD", "ONNX_FILE", "PARITY_TOLERANCE", "QUANTIZED_FILE", "SAMPLE_TEXTS", "accuracy",
           "export_onnx", "parity", "quantize_int8"]
