"""The example scripts (examples/0N-*.sh), each run as a user would run it, in smoke mode. A file of their
own (beside test_examples.py) so that the two test processes of `make test` (--dist loadfile) share
the examples' minutes."""

from __future__ import annotations

import json

from test_examples import run_script


def test_custom_csv_script(tmp_path):
    proc = run_script("04-custom-csv.sh", tmp_path, STEPS="2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    evaluation, predictions = lines[0], lines[1:]
    assert evaluation["n_eval"] == 300
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"thumbs-down", "thumbs-up"}
    record = json.loads((tmp_path / "work" / "classifier" / "nlptl-run.json").read_text())
    assert record["config"]["text_column"] == "review" and record["lineage"]["labels"] == ["thumbs-down", "thumbs-up"]


def test_scale_out_script_with_two_processes(tmp_path):
    proc = run_script("05-scale-out.sh", tmp_path, STEPS="2", NPROC="2", BATCH="4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the finetune result, printed by the main process only
    result = json.loads(lines[0])
    assert result["steps"] == 2 and result["n_eval"] == 300
    record = json.loads((tmp_path / "work" / "domain" / "nlptl-run.json").read_text())
    assert record["metrics"]["train_tokens"] == 2 * 2 * 4 * 32  # steps x processes x batch x block


def test_few_labels_script(tmp_path):
    proc = run_script("06-few-labels.sh", tmp_path, STEPS="2", PER_CLASS="8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    chain, plain = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert chain["n_eval"] == plain["n_eval"] == 300
    record = json.loads((tmp_path / "work" / "classifier" / "nlptl-run.json").read_text())
    assert record["lineage"]["parent"]["objective"] == "contrastive"
    # The example's body is a tiny GPT pretrained from scratch: after its contrastive stage, finetune takes
    # the scratch rate, not SetFit's slow body and fast head (issue 24: those left it at chance).
    assert record["metrics"]["lr"] == 1e-3 and "head_lr" not in record["metrics"]
    pairs = json.loads((tmp_path / "work" / "pairs" / "nlptl-run.json").read_text())
    assert pairs["metrics"]["n_train"] == 16  # 8 per class
