"""`nlptl export --format onnx` (stages/export.py): every family, pooling and task shape exports, the
parity check holds, int8 reports its accuracy change, and predict takes the export (--backend onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from conftest import finetune_cfg, write_csv  # noqa: E402

from nlptl.config import ExportConfig, PredictConfig  # noqa: E402
from nlptl.errors import UsageError  # noqa: E402
from nlptl.stages import export, predict  # noqa: E402

TEXTS = ["Everyone agreed the bakery was great by any measure.", "awful",
         "Last week the camera was awful, and the lens was awful too. " * 8, "To be fair, the jacket was great."]


def _same_predictions(run_dir: Path, out: Path, texts=TEXTS, **kw) -> None:
    ours = predict.run(PredictConfig(model=str(run_dir), texts=texts, **kw))
    theirs = predict.run(PredictConfig(model=str(out), texts=texts, **kw))
    assert len(ours) == len(theirs) == len(texts)
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in ("label", "labels", "text", "truncated", "threshold"):
            assert a.get(key) == b.get(key)
        if "scores" in a:
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
        if "value" in a:
            assert a["value"] == pytest.approx(b["value"], abs=1e-4)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "roberta", "distilbert"])
def test_every_family_exports_and_predicts_the_same(family, finetuned, tmp_path):
    run_dir, _ = finetuned[family]
    out = tmp_path / "onnx"
    result = export.run(ExportConfig(model=str(run_dir), out=str(out)))
    assert result["parity"]["max_abs_diff"] <= 1e-4
    assert result["parity"]["same_decision"] == result["parity"]["texts"]
    assert {"model.onnx", "config.json", "tokenizer.json", "nlptl-export.json"} <= set(result["files"])
    _same_predictions(run_dir, out)


@pytest.mark.parametrize("family,pooling", [("bert", "mean"), ("bert", "concat"), ("bert", "last"), ("gpt2", "cls"),
                                            ("gpt2", "concat")])
def test_pooled_heads_export(family, pooling, adapted, task_files, tmp_path):
    """nlptl's own head (heads.py, remote code) on encoders and decoders."""
    from nlptl.stages import finetune

    run_dir = tmp_path / "run"
    finetune.run(finetune_cfg(from_model=str(adapted[family][0]), train_file=str(task_files["train"]),
                              eval_file=str(task_files["eval"]), out=str(run_dir), pooling=pooling))
    out = tmp_path / "onnx"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    _same_predictions(run_dir, out)
    # The head is in the graph: the export's config is the backbone's (with the labels), which onnxruntime
    # users load with stock transformers; the run's own is nlptl's head config.
    exported = json.loads((out / "config.json").read_text())
    assert exported["model_type"] == family and "auto_map" not in exported
    assert json.loads((run_dir / "config.json").read_text())["model_type"] == "nlptl"


def _hand_built(tmp_path: Path, checkpoints, problem: str, num_labels: int, pairs: bool = False) -> Path:
    """A classifier of a task shape finetune may not offer yet: random-init, saved as a checkpoint."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    src = checkpoints["bert"]
    config = AutoConfig.from_pretrained(src)
    config.problem_type, config.num_labels = problem, num_labels
    config.id2label = {i: f"tag{i}" for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.nlptl_threshold = 0.5
    if pairs:
        config.nlptl_text_pair = True
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    out = tmp_path / f"hand-{problem}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("problem,num_labels", [("multi_label_classification", 3), ("regression", 1)])
def test_task_shapes_export(problem, num_labels, checkpoints, tmp_path):
    run_dir = _hand_built(tmp_path, checkpoints, problem, num_labels)
    out = tmp_path / "onnx"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    _same_predictions(run_dir, out)


def test_pair_model_exports(checkpoints, tmp_path):
    run_dir = _hand_built(tmp_path, checkpoints, "single_label_classification", 2, pairs=True)
    out = tmp_path / "onnx"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    _same_predictions(run_dir, out, texts=["A man sleeps\tA person rests", "The sky is green\tIt rains today"])


def test_int8_reports_accuracy_change_and_runs_only_when_asked(finetuned, task_files, tmp_path):
    """--quantize int8 adds model_quantized.onnx: predict and serve keep the fp32 model.onnx (what torch
    says, within 1e-4) unless --int8 picks the int8 one."""
    from nlptl.inference import load_classifier

    run_dir, _ = finetuned["bert"]
    out = tmp_path / "int8"
    result = export.run(ExportConfig(model=str(run_dir), out=str(out), quantize="int8", data=str(task_files["eval"])))
    int8 = result["int8"]
    assert int8["accuracy_change"] == pytest.approx(int8["accuracy_onnx_int8"] - int8["accuracy_torch_fp32"])
    assert 0 <= int8["accuracy_onnx_int8"] <= 1 and int8["texts"] > 0
    assert "model_quantized.onnx" in result["files"]
    record = json.loads((out / "nlptl-export.json").read_text())
    assert record["default_file"] == "model.onnx" and record["int8"] == int8
    assert load_classifier(str(out)).file == "model.onnx"
    _same_predictions(run_dir, out)
    assert load_classifier(str(out), int8=True).file == "model_quantized.onnx"
    rows = predict.run(PredictConfig(model=str(out), texts=TEXTS, int8=True))
    assert [r["text"] for r in rows] == TEXTS


def test_int8_flag_needs_an_int8_export(finetuned, tmp_path):
    run_dir, _ = finetuned["bert"]
    with pytest.raises(UsageError, match="--int8 needs an ONNX export"):
        predict.run(PredictConfig(model=str(run_dir), texts=["x"], int8=True))
    out = tmp_path / "fp32"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    with pytest.raises(UsageError, match="no model_quantized.onnx.*--quantize int8"):
        predict.run(PredictConfig(model=str(out), texts=["x"], int8=True))


def test_onnxruntime_loads_it_alone(finetuned, tmp_path):
    """The export needs nothing of nlptl: onnxruntime, the tokenizer files and config.json."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    run_dir, _ = finetuned["distilbert"]
    out = tmp_path / "onnx"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    tok, config = AutoTokenizer.from_pretrained(out), AutoConfig.from_pretrained(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(TEXTS[:2], padding=True, return_tensors="np")
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    logits = session.run(["logits"], feed)[0]
    assert logits.shape == (2, config.num_labels)
    ours = predict.run(PredictConfig(model=str(run_dir), texts=TEXTS[:2]))
    assert [config.id2label[int(i)] for i in logits.argmax(-1)] == [r["label"] for r in ours]


def test_bad_uses_are_one_line(finetuned, adapted, tmp_path):
    run_dir, _ = finetuned["bert"]
    with pytest.raises(UsageError, match="not a classifier"):
        export.run(ExportConfig(model=str(adapted["bert"][0]), out=str(tmp_path / "x")))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an nlptl export"):
        export.run(ExportConfig(model=str(run_dir), out=str(tmp_path / "full")))
    out = tmp_path / "onnx"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    with pytest.raises(UsageError, match="--overwrite"):
        export.run(ExportConfig(model=str(run_dir), out=str(out)))
    export.run(ExportConfig(model=str(run_dir), out=str(out), overwrite=True))
    with pytest.raises(UsageError, match="--backend onnx"):
        predict.run(PredictConfig(model=str(out), texts=["x"], backend="torch"))
    with pytest.raises(UsageError, match="nlptl export"):
        predict.run(PredictConfig(model=str(run_dir), texts=["x"], backend="onnx"))
    with pytest.raises(UsageError, match="--quantize"):
        ExportConfig(model="m", out="o", quantize="int4")
    windowed = tmp_path / "windowed"
    windowed.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (windowed / f.name).write_bytes(f.read_bytes())
    config = json.loads((windowed / "config.json").read_text())
    (windowed / "config.json").write_text(json.dumps(config | {"nlptl_window": 16}))
    with pytest.raises(UsageError, match="long-document model"):
        export.run(ExportConfig(model=str(windowed), out=str(tmp_path / "w")))


def test_a_second_export_into_one_out_is_refused(finetuned, tmp_path):
    """An export in flight holds --out's lock: another export into it fails at once, naming its pid."""
    from conftest import hold_lock

    run_dir, _ = finetuned["bert"]
    out = tmp_path / "onnx"
    holder = hold_lock(out)
    try:
        with pytest.raises(UsageError, match=rf"--out {out} is in use by another nlptl run \(pid {holder.pid}\)"):
            export.run(ExportConfig(model=str(run_dir), out=str(out)))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    assert not (tmp_path / ".onnx.lock").exists()  # released, and removed


def test_labelled_file_with_id_labels(finetuned, tmp_path):
    """--data with 0/1 labels: read as label ids, as evaluate does."""
    run_dir, _ = finetuned["bert"]
    data = write_csv(tmp_path / "ids.csv", [("It was great.", "1"), ("It was awful.", "0")])
    result = export.run(ExportConfig(model=str(run_dir), out=str(tmp_path / "o"), quantize="int8", data=str(data)))
    assert result["int8"]["texts"] == 2


def test_command_line_export_then_predict(finetuned, tmp_path, capsys):
    from cli_helpers import call_main

    run_dir, _ = finetuned["bert"]
    out = tmp_path / "onnx"
    args = ["export", run_dir, "--format", "onnx", "--quantize", "int8", "--out", out, "--json"]
    assert call_main(args, tmp_path) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output_dir"] == str(out) and result["int8"]["file"] == "model_quantized.onnx"
    assert call_main(["predict", "--model", out, "--backend", "onnx", "--json", "great", "awful"], tmp_path) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["great", "awful"]
    assert call_main(["export", run_dir, "--out", out], tmp_path) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_extra_is_one_line_with_the_pip_command(missing, finetuned, monkeypatch, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    run_dir, _ = finetuned["bert"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'nlptl\[onnx\]'"):
        export.run(ExportConfig(model=str(run_dir), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_quantize_advice_does_not_leak(finetuned, tmp_path, capfd):
    """onnxruntime's quantize_dynamic advises pre-processing with logging.warning() on the root logger,
    which in a process without logging set up (nlptl's CLI) also installs a stderr handler for good:
    neither the line nor the handler reaches the user, and the root logger is left as it was."""
    import logging

    from nlptl import exporting

    run_dir, _ = finetuned["bert"]
    out = tmp_path / "fp32"
    export.run(ExportConfig(model=str(run_dir), out=str(out)))
    root = logging.getLogger()
    handlers, filters = root.handlers[:], root.filters[:]
    root.handlers = []  # as in `nlptl export`: nothing set up on the root logger
    capfd.readouterr()
    try:
        exporting.quantize_int8(out / "model.onnx", tmp_path / "q.onnx")
        assert root.handlers == [] and root.filters == filters
    finally:
        root.handlers = handlers
    assert "pre-processing" not in capfd.readouterr().err
