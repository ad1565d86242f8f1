"""`nlptl sweep` (stages/sweep.py): trials are run directories, the study resumes, selection reads eval only."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
from cli_helpers import assert_one_line_error, call_main, run_light

from nlptl.config import SweepConfig
from nlptl.errors import NlptlError, UsageError
from nlptl.rundir import read_record
from nlptl.stages import finetune, sweep

SPACE = "lr=loguniform(1e-4,1e-2);batch_size=choice(4,8)"


def options(checkpoints, task_files) -> dict:
    return {"from_model": str(checkpoints["gpt2"]), "task": "classification", "train_file": str(task_files["train"]),
            "eval_file": str(task_files["eval"]), "max_steps": 2, "max_length": 32, "precision": "fp32",
            "log_every": 1}


def sweep_cfg(checkpoints, task_files, out, **kw) -> SweepConfig:
    return SweepConfig(**{"stage": "finetune", "options": options(checkpoints, task_files), "space": SPACE,
                          "trials": 2, "out": str(out), **kw})


def test_trials_are_runs_the_study_resumes_and_the_best_command_reruns_the_best(
        checkpoints, task_files, tmp_path, monkeypatch, capsys, no_bf16):
    out = tmp_path / "sweep"
    result = sweep.run(sweep_cfg(checkpoints, task_files, out))
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"]
    for t in result["trials"]:  # an ordinary run directory with lineage, scored on --eval
        record = read_record(out / "trials" / f"{t['trial']:03d}")
        assert record["stage"] == "finetune" and record["lineage"]["eval"]["spec"] == str(task_files["eval"])
        assert record["metrics"]["accuracy"] == t["score"]
        assert {k: record["config"][k] for k in ("lr", "batch_size")} == t["params"]
    assert str(task_files["test"]) not in json.dumps(result)

    # A sweep killed with a trial in flight: the study holds it running.
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out.resolve() / 'study.db'}")
    left = study.ask(sweep.distributions(optuna, sweep.parse_space(SPACE, {}, [])))
    calls = []
    real = finetune.run
    monkeypatch.setattr(finetune, "run", lambda cfg, command=None: calls.append(cfg) or real(cfg, command))
    result = sweep.run(sweep_cfg(checkpoints, task_files, out, trials=4))
    assert len(calls) == 2  # the two finished trials are kept; two more run
    states = {t["trial"]: t["state"] for t in result["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "interrupted", 3: "complete", 4: "complete"}
    assert result["trials"][3]["params"] == left.params  # the interrupted trial's values, run again
    assert result["n_finished"] == 4

    # The report shows the trials; the best command, parsed by the command line, is the best trial's config.
    capsys.readouterr()
    assert call_main(["report", str(out)], tmp_path) == 0
    shown = capsys.readouterr().out
    assert "interrupted" in shown and result["best_command"] in shown
    best = result["best"]
    assert best["score"] == max(t["score"] for t in result["trials"] if t["state"] == "complete")
    seen = {}
    monkeypatch.setattr(finetune, "run", lambda cfg, command=None: seen.setdefault("cfg", cfg) and {})
    args = shlex.split(result["best_command"])
    assert args[:2] == ["nlptl", "finetune"] and call_main(args[1:], tmp_path) == 0
    trial_config = read_record(out / "trials" / f"{best['trial']:03d}")["config"]
    assert {**vars(seen["cfg"]), "out": None} == {**trial_config, "out": None}
    assert real(seen["cfg"])["accuracy"] == best["score"]  # and it trains the same model again


def test_a_sweep_selects_on_eval_data_never_test(checkpoints, task_files, tmp_path):
    with pytest.raises(UsageError, match="never test"):
        SweepConfig(stage="evaluate", options={}, space=SPACE, out=str(tmp_path / "s"))
    with pytest.raises(UsageError, match="has none"):
        SweepConfig(stage="adapt", options={}, space=SPACE, out=str(tmp_path / "s"))
    with pytest.raises(UsageError, match="eval_file is fixed"):
        sweep.run(sweep_cfg(checkpoints, task_files, tmp_path / "s", space=f"eval_file=choice({task_files['test']})"))
    with pytest.raises(UsageError, match="one model"):
        sweep.run(sweep_cfg(checkpoints, task_files, tmp_path / "s", options={
            **options(checkpoints, task_files), "n_labels": "10,all"}))
    assert not (tmp_path / "s").exists()
    res = run_light(["sweep", "evaluate", "--data", str(task_files["test"]), "--space", SPACE, "--out",
                     str(tmp_path / "s")], tmp_path)
    assert_one_line_error(res, 2, "never test", "sweep finetune")
    assert not res.torch


@pytest.mark.parametrize("space, message", [
    ("lr=normal(1,2)", "not a distribution"), ("lr=uniform(2,1)", "low < high"), ("rate=choice(1,2)", "not an option"),
    ("lr=loguniform(0,1)", "positive low end"), ("batch_size=choice(4,0)", "--batch-size must be positive"),
])
def test_a_bad_space_fails_before_any_trial(checkpoints, task_files, tmp_path, space, message):
    with pytest.raises(UsageError, match=message):
        sweep.run(sweep_cfg(checkpoints, task_files, tmp_path / "s", space=space))
    assert not (tmp_path / "s").exists()


def test_without_optuna_one_line_says_what_to_install(checkpoints, task_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(NlptlError, match=r"pip install 'nlptl\[sweep\]'"):
        sweep.run(sweep_cfg(checkpoints, task_files, tmp_path / "s"))


@pytest.mark.slow
def test_parallel_trials_run_in_their_own_processes(checkpoints, task_files, tmp_path):
    out = tmp_path / "sweep"
    result = sweep.run(sweep_cfg(checkpoints, task_files, out, parallel=2))
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"], result["trials"]
    for t in result["trials"]:
        record = read_record(out / "trials" / f"{t['trial']:03d}")
        assert record["command"] == t["command"] + " --json -q" and record["metrics"]["accuracy"] == t["score"]


def test_the_best_command_runs_from_anywhere_and_a_space_names_each_option_once(checkpoints, task_files, tmp_path,
                                                                                 monkeypatch):
    """From the newcomer run: the best command kept --from and --out as typed (relative to where the sweep
    started), and a key given twice in --space was silently overwritten."""
    from nlptl.config import FinetuneConfig

    monkeypatch.chdir(task_files["train"].parent)
    cfg = FinetuneConfig(from_model=str(checkpoints["bert"]), train_file=task_files["train"].name,
                         eval_file=task_files["eval"].name)
    args = sweep.command_of(cfg, "runs/sweep/best")
    assert args[args.index("--train") + 1] == str(task_files["train"].resolve())
    assert args[args.index("--out") + 1] == str((task_files["train"].parent / "runs/sweep/best").resolve())
    with pytest.raises(UsageError, match="names lr twice"):
        sweep.parse_space("lr=loguniform(1e-5,1e-3);lr=loguniform(1e-4,1e-2)", {}, [])
