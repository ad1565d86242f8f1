"""Watching and sharing runs: metrics.csv, the --report-to trackers (TensorBoard and MLflow read back
from their local stores), `nlptl report`, the model card, and --push-to-hub against a stand-in HfApi."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
from cli_helpers import (
    OFFLINE_ENDPOINT,
    assert_nothing_written,
    assert_one_line_error,
    call_main,
    cli_env,
    run_light,
)
from conftest import adapt_cfg

from nlptl.errors import UsageError
from nlptl.tracking import COLUMNS


class FakeHfApi:
    """Records the calls nlptl makes, and what the uploaded folder held at upload time."""

    calls: list = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", repo_id, {**kw, "folder_path": folder_path, "files": files}))


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def tracked(checkpoints, corpus_file, tmp_path_factory):
    """An adapt run with TensorBoard and MLflow, uploaded to a stand-in hub."""
    import huggingface_hub

    from nlptl import hub
    from nlptl.stages import adapt

    out = tmp_path_factory.mktemp("tracked") / "adapt-run"
    FakeHfApi.calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("HF_TOKEN", "hf_test_token")
        mp.setattr(hub, "reachable", lambda timeout=1.5: True)
        mp.setattr(huggingface_hub, "HfApi", FakeHfApi)
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out),
                                     max_steps=6, report_to="tensorboard,mlflow", push_to_hub="someone/tiny-lm",
                                     hub_private=True))
    return out, result, list(FakeHfApi.calls)


def test_metrics_csv_has_the_stable_columns_and_every_logged_step(tracked):
    out, result, _ = tracked
    columns, rows = read_csv(out / "metrics.csv")
    assert tuple(columns) == COLUMNS
    train = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train] == [2, 4, 6]  # log_every 2, max_steps 6
    assert all(float(r["lr"]) >= 0 and float(r["tokens_per_s"]) > 0 for r in train)
    held_out = [r for r in rows if r["eval_perplexity"]]
    assert [int(r["step"]) for r in held_out] == [0, 6]  # before and after training
    assert float(held_out[0]["eval_perplexity"]) == pytest.approx(result["perplexity_before"])
    assert float(held_out[1]["eval_perplexity"]) == pytest.approx(result["perplexity"])


def test_tensorboard_event_file_holds_the_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = tracked
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under OUT/logs"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    _, rows = read_csv(out / "metrics.csv")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows if r["loss"]]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows if r["loss"]], rel=1e-5)
    assert [e.step for e in acc.Scalars("eval/perplexity")] == [0, 6]
    assert "train/lr" in acc.Tags()["scalars"] and "train/tokens_per_s" in acc.Tags()["scalars"]


def test_mlflow_file_store_holds_the_run(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    out, _, _ = tracked
    client = MlflowClient(tracking_uri=(out / "logs" / "mlruns").resolve().as_uri())
    run_id = (out / "logs" / "mlflow-run-id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["stage"] == "adapt" and run.data.params["max_steps"] == "6"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4, 6]


def test_model_card_metadata_and_reproduce_command(tracked):
    import typer
    from huggingface_hub import ModelCard

    from nlptl.card import NOT_REPRODUCED
    from nlptl.cli import _flags, app
    from nlptl.config import AdaptConfig, resolve, to_dict

    out, result, _ = tracked
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert {"nlptl", "adapt", "clm"} <= set(data["tags"]) and data["pipeline_tag"] == "text-generation"
    assert "base_model" not in data  # a local checkpoint is no hub id: named under `nlptl` instead
    meta = data["nlptl"]
    corpus = result["lineage"]["corpus"]
    assert meta["base_model"] == result["lineage"]["base_model"]
    assert meta["data"] == [{"stage": "adapt", "role": "corpus", "name": corpus["spec"], "sha256": corpus["sha256"]}]
    assert data["model-index"][0]["results"][0]["metrics"][0] == {"type": "perplexity", "value": result["perplexity"]}
    for text in ("## Intended use and limits", "## Hyperparameters", corpus["sha256"], "max_steps"):
        assert text in card.text
    # The command in the card resolves to the very config the run recorded.
    args = shlex.split(meta["reproduce"])
    assert args[:2] == ["nlptl", "adapt"] and meta["reproduce"] in card.text
    ctx = typer.main.get_command(app).commands["adapt"].make_context("adapt", args[2:])
    params = dict(ctx.params)
    again = to_dict(resolve(AdaptConfig, flags=_flags(params), sets=params["sets"]))
    recorded = json.loads((out / "nlptl-run.json").read_text())["config"]
    assert {k: v for k, v in again.items() if k not in NOT_REPRODUCED} == \
        {k: v for k, v in recorded.items() if k not in NOT_REPRODUCED}


def test_push_uploads_the_finished_directory_with_card_and_weights(tracked):
    out, result, calls = tracked
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == "someone/tiny-lm" and calls[0][2]["private"] is True
    upload = calls[1][2]
    assert Path(upload["folder_path"]) == out
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "nlptl-run.json",
            "metrics.csv"} <= set(upload["files"])
    assert not [f for f in upload["files"] if f.startswith("checkpoints/")]
    assert result["hub_url"] == "https://huggingface.co/someone/tiny-lm"


def test_push_offline_fails_fast_before_training(checkpoints, corpus_file, tmp_path):
    out = tmp_path / "out"
    res = run_light(["adapt", "--from", checkpoints["gpt2"], "--corpus", corpus_file, "--out", out,
                     "--push-to-hub", "someone/tiny-lm"], tmp_path,
                    env=cli_env(tmp_path, HF_ENDPOINT=OFFLINE_ENDPOINT, HF_TOKEN="hf_test_token"))
    assert_one_line_error(res, 1, "--push-to-hub someone/tiny-lm", "unreachable", "hf upload")
    assert not res.torch  # failed on the probe, before anything heavy was loaded
    assert_nothing_written(out)


def test_report_to_a_missing_package_is_a_usage_error_with_the_pip_command(monkeypatch):
    from nlptl import tracking

    monkeypatch.setattr(tracking, "_installed", lambda name: name != "wandb")
    with pytest.raises(UsageError, match=r"--report-to wandb needs the package: pip install wandb"):
        tracking.trackers("tensorboard,wandb")
    assert tracking.trackers("all") == ["tensorboard", "mlflow"]
    assert tracking.trackers("none") == []
    monkeypatch.setattr(tracking, "_installed", lambda name: False)
    with pytest.raises(UsageError, match=r"pip install tensorboard"):
        tracking.trackers("tensorboard")


def test_report_to_and_repo_id_are_checked_with_the_config():
    with pytest.raises(UsageError, match=r"unknown --report-to 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        adapt_cfg(corpus="c", report_to="tensorbord")
    assert adapt_cfg(corpus="c", report_to="MLflow, tensorboard,none").report_to == "mlflow,tensorboard"
    with pytest.raises(UsageError, match="--push-to-hub expects a repo id"):
        adapt_cfg(corpus="c", push_to_hub="no slash")


def test_report_shows_the_chain_and_writes_readable_plots(finetuned, adapted, tmp_path, capsys):
    out, result = finetuned["gpt2"]
    code = call_main(["report", out, "--json"], tmp_path)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["adapt", "finetune"]
    assert stages[0]["dir"] == str(adapted["gpt2"][0].resolve())
    assert stages[0]["metrics"]["perplexity"] == adapted["gpt2"][1]["perplexity"]
    assert stages[1]["metrics"]["accuracy"] == result["accuracy"]
    roles = {(d["stage"], d["role"]): d["sha256"] for s in stages for d in s["data"]}
    assert roles[("finetune", "training data")] == result["lineage"]["train"]["sha256"]
    assert roles[("adapt", "corpus")] == adapted["gpt2"][1]["lineage"]["corpus"]["sha256"]
    names = sorted(Path(p).name for p in report["plots"])
    assert names == ["1-adapt-training.png", "2-finetune-confusion_matrix.png", "2-finetune-training.png",
                     "perplexity.png"]
    for p in report["plots"]:
        assert Path(p).parent == out / "report" and Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without --json: the same, as tables on stdout.
    assert call_main(["report", out], tmp_path) == 0
    text = capsys.readouterr().out
    assert "finetune" in text and result["lineage"]["train"]["sha256"][:12] in text and "perplexity.png" in text


def test_report_of_a_directory_that_is_no_run(tmp_path, capsys):
    assert call_main(["report", tmp_path], tmp_path) == 2
    assert "not a completed nlptl run" in capsys.readouterr().err


def test_report_of_a_learning_curve_run_plots_the_curve(tmp_path, capsys):
    run = tmp_path / "curve"
    run.mkdir()
    summary = [{"model": m, "n_labels": n, "n_train": n, "seeds": 2, "accuracy_mean": a, "accuracy_std": 0.02,
                "f1_macro_mean": a, "f1_macro_std": 0.02}
               for m, pts in (("adapted", ((20, 0.7), (80, 0.85))), ("general", ((20, 0.6), (80, 0.8))))
               for n, a in pts]
    (run / "learning_curve.json").write_text(json.dumps({"summary": summary, "runs": []}))
    lineage = {"stage": "finetune", "base_model": "some/hub-model", "mode": "learning-curve", "task": "sentiment"}
    (run / "nlptl-run.json").write_text(json.dumps({"stage": "finetune", "config": {}, "lineage": lineage,
                                                    "metrics": {"learning_curve": summary}}))
    assert call_main(["report", run, "--json"], tmp_path) == 0
    report = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in report["plots"]] == ["learning_curve.png"]
    assert report["stages"][0]["base_model"] == "some/hub-model" and report["general_model"] == "some/hub-model"
