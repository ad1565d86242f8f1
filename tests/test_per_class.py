"""Per-class results and the confusion matrix (issue 28): evaluation.per_class (scikit-learn's metrics),
in `evaluate --json`, in finetune's best-checkpoint metrics and record, the model card and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import finetune_cfg, labelled_rows, write_csv

from nlptl.evaluation import per_class


def test_single_label_by_hand():
    # truth 0 0 0 1 1 2; predicted 0 0 1 1 2 2
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).float()
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    out = per_class(logits, labels, "single_label_classification", 0.5, ["a", "b", "c"])
    assert out["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    rows = {r["label"]: r for r in out["per_class"]}
    assert rows["a"] == {"label": "a", "precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                         "support": 3}
    assert rows["b"]["precision"] == 0.5 and rows["b"]["recall"] == 0.5 and rows["b"]["support"] == 2
    assert rows["c"]["precision"] == 0.5 and rows["c"]["recall"] == 1.0 and rows["c"]["support"] == 1


def test_a_class_never_seen_or_predicted_scores_zero():
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0]), 3).float()
    out = per_class(logits, torch.tensor([0, 1]), "single_label_classification", 0.5, ["a", "b", "c"])
    assert out["per_class"][2] == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert out["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_multi_label_per_label():
    # two labels; sigmoid(logit) >= 0.5 where the logit >= 0
    logits = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]])
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1]])
    out = per_class(logits, labels, "multi_label_classification", 0.5, ["x", "y"])
    # per label [[TN, FP], [FN, TP]]: x: TP 2, FN 1, TN 1; y: TP 1, FP 1, FN 1, TN 1
    assert out["confusion_matrix"] == {"labels": ["x", "y"], "matrix": [[[1, 0], [1, 2]], [[1, 1], [1, 1]]]}
    assert [r["support"] for r in out["per_class"]] == [3, 2]
    assert out["per_class"][0]["precision"] == 1.0 and out["per_class"][0]["recall"] == pytest.approx(2 / 3)
    assert per_class(logits[:, :1], labels[:, 0].float(), "regression", 0.5, []) == {}


@pytest.fixture(scope="module")
def classifier(checkpoints, task_files, tmp_path_factory):
    from nlptl.stages import finetune

    out = tmp_path_factory.mktemp("per-class") / "ft"
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(out)))
    return out, result


def consistent(result: dict, n: int, names: list[str]) -> None:
    matrix = result["confusion_matrix"]["matrix"]
    assert result["confusion_matrix"]["labels"] == names == [r["label"] for r in result["per_class"]]
    assert sum(map(sum, matrix)) == n and sum(r["support"] for r in result["per_class"]) == n
    for i, row in enumerate(result["per_class"]):
        assert row["support"] == sum(matrix[i])
        if row["support"]:
            assert row["recall"] == pytest.approx(matrix[i][i] / sum(matrix[i]))


def test_finetune_records_the_best_checkpoint_per_class(classifier):
    out, result = classifier
    record = json.loads((out / "nlptl-run.json").read_text())
    names = record["lineage"]["labels"]
    consistent(result, result["n_eval"], names)
    assert record["metrics"]["per_class"] == result["per_class"]
    assert record["metrics"]["confusion_matrix"] == result["confusion_matrix"]
    assert {"accuracy", "f1_macro", "loss", "top_prediction_share"} <= set(result)  # the existing keys stay
    card = (out / "README.md").read_text()
    assert "| label | precision | recall | F1 | support |" in card
    assert all(f"| {n} |" in card for n in names)


def test_evaluate_json_per_class(classifier, task_files):
    from nlptl.config import EvaluateConfig
    from nlptl.stages import evaluate

    out, _ = classifier
    result = evaluate.run(EvaluateConfig(model=str(out), data=str(task_files["test"])))
    names = json.loads((out / "nlptl-run.json").read_text())["lineage"]["labels"]
    consistent(result, result["n_eval"], names)
    # the macro-F1 the existing key reports is the mean of the per-class F1s
    assert result["f1_macro"] == pytest.approx(sum(r["f1"] for r in result["per_class"]) / len(names))
    json.dumps(result)  # --json prints it


def test_report_draws_the_confusion_matrix(classifier):
    from nlptl.config import ReportConfig
    from nlptl.stages import report

    out, _ = classifier
    result = report.run(ReportConfig(run_dir=str(out)))
    drawn = [p for p in result["plots"] if p.endswith("confusion_matrix.png")]
    assert len(drawn) == 1 and drawn[0].endswith("-finetune-confusion_matrix.png")
    assert Path(drawn[0]).stat().st_size > 5000


def test_multilabel_finetune_and_evaluate(checkpoints, tmp_path):
    from nlptl.config import EvaluateConfig
    from nlptl.stages import evaluate, finetune

    rows = labelled_rows(64, seed=3)
    cells = [(t + (" the food" if i % 3 == 0 else ""), lab + (";food" if i % 3 == 0 else ""))
             for i, (t, lab) in enumerate(rows)]
    data = write_csv(tmp_path / "multi.csv", cells, header=("text", "tags"))
    out = tmp_path / "ml"
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(data), out=str(out),
                                       task="multilabel", label_column="tags"))
    names = json.loads((out / "nlptl-run.json").read_text())["lineage"]["labels"]
    for res in (result, evaluate.run(EvaluateConfig(model=str(out), data=str(data), label_column="tags"))):
        assert res["confusion_matrix"]["labels"] == names and len(res["confusion_matrix"]["matrix"]) == len(names)
        for row, m in zip(res["per_class"], res["confusion_matrix"]["matrix"], strict=True):
            assert row["support"] == m[1][0] + m[1][1] and sum(map(sum, m)) == res["n_eval"]
        assert "f1_per_label" in res  # the existing key stays
    from nlptl.config import ReportConfig
    from nlptl.stages import report

    report_png = [p for p in report.run(ReportConfig(run_dir=str(out)))["plots"] if "confusion" in p]
    assert report_png


def test_evaluate_on_the_command_line(classifier, task_files, tmp_path, capsys, caplog):
    """--json: one object with the per-class keys; without it, the scalar results and a per-class table."""
    import logging

    from cli_helpers import call_main

    out, _ = classifier
    argv = ["evaluate", "--model", str(out), "--data", str(task_files["test"])]
    assert call_main([*argv, "--json"], tmp_path) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"per_class", "confusion_matrix", "accuracy", "f1_macro"} <= set(result)
    with caplog.at_level(logging.INFO, logger="nlptl"):
        assert call_main(argv, tmp_path) == 0
    shown = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert "per class" in shown and "precision" in shown and "'precision'" not in shown
