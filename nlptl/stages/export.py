"""Export a fine-tuned classifier to ONNX, for onnxruntime (and optimum's ORTModelForSequenceClassification).

    nlptl export runs/finetune-... --format onnx --out exported/
    nlptl export runs/finetune-... --format onnx --quantize int8 --data test.csv --out exported-int8/
    nlptl predict --model exported-int8/ --int8 "What a lovely film"  # the int8 model (fp32 without --int8)
    nlptl predict --model exported/ "What a lovely film"          # onnxruntime instead of torch
    nlptl serve exported/                                         # the same, over HTTP

The directory holds model.onnx (fp32, what predict and serve run; with --quantize int8 also
model_quantized.onnx, which they run with --int8), config.json (labels, task shape), the tokenizer,
and nlptl-export.json: where the model came from and what the parity check found. The check runs
after every export: logits of onnxruntime and torch on the same texts (--data's, else a built-in
sample) must agree within 1e-4, and every predicted label must be the same; with --quantize int8
the accuracy on --data of the int8 model is reported next to torch's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nlptl.config import ExportConfig, to_dict
from nlptl.errors import NlptlError, UsageError
from nlptl.inference import EXPORT_RECORD, ONNX_FILE, ONNX_MISSING, is_onnx_export
from nlptl.models import inspect_model
from nlptl.rundir import Product, StageWriter
from nlptl.stages.common import Run, check_max_length, open_product

log = logging.getLogger("nlptl")
MAX_PARITY_TEXTS = 256
# What --out may hold: an export, replaced with --overwrite.
EXPORT = Product("the model directory", "the export", "an nlptl export", is_onnx_export)


def run(cfg: ExportConfig) -> dict:
    import importlib.util

    ref = inspect_model(cfg.model, "MODEL")
    if not ref.is_classifier:
        raise UsageError(f"MODEL {ref.spec} is not a classifier; export takes a finetune run")
    check_max_length(cfg.max_length, ref.config)
    if (ref.config or {}).get("nlptl_window"):
        # The head splits a long document into windows in Python: a trace would fix the number of windows
        # to the example's, and texts of other lengths would be wrong.
        raise UsageError(f"MODEL {ref.spec}: a long-document model (windowed head) cannot be exported to ONNX yet; "
                         "serve it with torch (nlptl serve MODEL)")
    with open_product("export", cfg.out, cfg.overwrite, ref.path, EXPORT) as opened:
        for module in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                raise UsageError(ONNX_MISSING.replace("onnxruntime)", "onnx onnxruntime)"))
        return export(opened, cfg, ref)


def export(run: Run, cfg: ExportConfig, ref) -> dict:
    """The export into the Run's --out: traced, checked against torch, quantized if asked, renamed into place."""
    texts, pairs, gold = parity_texts(cfg, ref)

    from nlptl import exporting, runtime
    from nlptl.inference import Classifier, OnnxClassifier
    from nlptl.models.loading import backbone_config

    runtime.quiet_libraries()
    torch_model = Classifier(ref, cfg.max_length, device="cpu")
    if texts is None:
        texts = exporting.SAMPLE_TEXTS
        pairs = list(reversed(texts)) if torch_model.pairs else None
    with StageWriter(run.out) as w:
        stage = w.path
        exporting.export_onnx(torch_model, stage / ONNX_FILE)
        # The backbone's config with the labels: the head is in the graph, and its code is not shipped here.
        backbone_config(torch_model.config).save_pretrained(stage)
        torch_model.tokenizer.save_pretrained(stage)
        record = {"format": "onnx", "source": ref.path, "max_length": torch_model.max_length,
                  "labels": torch_model.names, "problem_type": torch_model.problem, "text_pairs": torch_model.pairs,
                  "default_file": ONNX_FILE, "lineage": (ref.run or {}).get("lineage"), "config": to_dict(cfg)}
        (stage / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        fp32 = OnnxClassifier(stage, cfg.max_length)
        check = exporting.parity(torch_model, fp32, texts, pairs)
        log.info("parity (onnxruntime fp32 vs torch) on %d texts: max |logit diff| %.2e, same result on %d",
                 check["texts"], check["max_abs_diff"], check["same_decision"])
        if check["max_abs_diff"] > exporting.PARITY_TOLERANCE or check["same_decision"] != check["texts"]:
            raise NlptlError(f"the ONNX export does not match torch: max |logit diff| {check['max_abs_diff']:.2e} "
                             f"(tolerance {exporting.PARITY_TOLERANCE:g}), same result on {check['same_decision']} of "
                             f"{check['texts']} texts; nothing was written to --out (NLPTL_DEBUG=1 for details)")
        record["parity"] = check
        if cfg.quantize:
            record |= quantize(stage, torch_model, fp32, texts, pairs, gold, cfg.max_length)
        (stage / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        w.finish()
    files = sorted(p.name for p in run.out.iterdir())
    return {"output_dir": str(run.out), "files": files, **{k: record[k] for k in ("parity", "int8") if k in record}}


def quantize(stage: Path, torch_model, fp32, texts, pairs, gold, max_length) -> dict:
    """model_quantized.onnx next to the fp32 one (run by predict and serve with --int8: never the default,
    as its labels may differ from torch's); its agreement with fp32 and, with labelled --data, the
    accuracy change."""
    from nlptl import exporting
    from nlptl.inference import OnnxClassifier

    exporting.quantize_int8(stage / ONNX_FILE, stage / exporting.QUANTIZED_FILE)
    int8 = OnnxClassifier(stage, max_length, onnx_file=exporting.QUANTIZED_FILE)
    check = exporting.parity(fp32, int8, texts, pairs)
    report = {"file": exporting.QUANTIZED_FILE, "same_decision_as_fp32": check["same_decision"],
              "texts": check["texts"], "max_abs_diff_vs_fp32": check["max_abs_diff"]}
    if gold is not None and torch_model.shape.one_label:  # accuracy: one gold label per text
        report["accuracy_torch_fp32"] = exporting.accuracy(torch_model, texts, pairs, gold)
        report["accuracy_onnx_int8"] = exporting.accuracy(int8, texts, pairs, gold)
        report["accuracy_change"] = report["accuracy_onnx_int8"] - report["accuracy_torch_fp32"]
        log.info("int8: accuracy %.4f (torch fp32 %.4f, change %+.4f) on %d labelled texts",
                 report["accuracy_onnx_int8"], report["accuracy_torch_fp32"], report["accuracy_change"], len(gold))
    log.info("int8: same result as fp32 on %d of %d texts", check["same_decision"], check["texts"])
    return {"int8": report}


def parity_texts(cfg: ExportConfig, ref) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """Texts (and pairs, and gold labels) of --data, or Nones for the built-in sample."""
    if not cfg.data:
        if cfg.quantize:
            log.info("--quantize int8 without --data: the accuracy change is not measured (only agreement with fp32)")
        return None, None, None
    from nlptl.data.task_data import trained_task
    from nlptl.data.tasks import TaskSpec, labelled_source, read_labelled

    src = labelled_source(cfg.data, "--data", cfg.text_column, cfg.label_column)
    raw = read_labelled(src, TaskSpec(trained_task(ref), src, None, cfg.text_column, cfg.label_column))
    texts, gold = list(raw["text"])[:MAX_PARITY_TEXTS * 4], list(raw["label"])[:MAX_PARITY_TEXTS * 4]
    pairs = None
    if (ref.config or {}).get("nlptl_text_pair"):
        split = [t.split("\t", 1) + [""] for t in texts]
        texts, pairs = [s[0] for s in split], [s[1] for s in split]
    id2label = (ref.config or {}).get("id2label", {})
    names = [id2label.get(str(i)) for i in range(len(id2label))]
    # Labels given as ids (0/1) are mapped to the classifier's names, as evaluate reads them.
    gold = [names[int(g)] if g.isdigit() and int(g) < len(names) and g not in names else g for g in gold]
    return texts, pairs, gold
