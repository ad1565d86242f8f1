"""The command line as a user meets it: help, version, listings, usage errors.

The --json results of every stage and the default chaining (no --from, no --out) are in test_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cli_helpers import call_main, run_cli, run_light, tiny_data, write_registry

COMMANDS = ("pretrain", "adapt", "finetune", "evaluate", "predict", "serve", "export", "merge", "run", "corpora",
            "tasks", "demo", "sweep")


def test_root_help_and_version(tmp_path):
    res = run_light(["--help"], tmp_path)
    assert res.code == 0, res.stderr
    for command in COMMANDS:
        assert command in res.stdout
    assert not res.torch, "--help must not import torch"

    res = run_light(["--version"], tmp_path)
    from nlptl import __version__

    assert res.code == 0 and res.stdout.strip() == f"nlptl {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(tmp_path, command):
    res = run_light([command, "--help"], tmp_path)
    assert res.code == 0, res.stderr
    assert res.stdout.startswith(f"Usage: nlptl {command}"), res.stdout[:200]
    assert res.stderr == ""
    assert not res.torch, f"{command} --help must not import torch"


def test_help_shows_each_stage_its_own_defaults_and_the_choices(tmp_path):
    """Defaults differ by stage (pretrain's --lr is not finetune's): --help says which, and lists the
    values a choice option accepts."""
    import re

    def option(command: str, flag: str) -> str:
        text = run_light([command, "--help"], tmp_path).stdout
        block = re.search(rf"^  (?:-\w, )?{re.escape(flag)}\b.*?(?=^  -)", text, re.S | re.M).group(0)
        return " ".join(block.split())

    assert "[default: 0.0005]" in option("pretrain", "--lr")
    # by the objective
    assert "Default: 1e-4 for MLM and CLM; 2e-5 for --objective contrastive" in option("adapt", "--lr")
    assert "Default: 1e-4; after a contrastive adapt stage, 1e-5" in option("finetune", "--lr")  # by the checkpoint
    assert "[default: 32]" in option("finetune", "--batch-size") and "[default: 16]" in option("adapt", "--batch-size")
    assert option("pretrain", "--size").startswith("--size [tiny|mini|small|base]")
    assert "[default: tiny]" in option("pretrain", "--size")
    assert option("adapt", "--objective").startswith("--objective [auto|mlm|clm|contrastive]")
    assert option("pretrain", "--objective").startswith("--objective [auto|mlm|clm] ")  # no pairs to pretrain on
    assert "[default: no-compile]" in option("adapt", "--compile")


def test_python_m_and_console_script(tmp_path):
    res = run_cli(["--help"], tmp_path)  # python -m nlptl
    assert res.code == 0 and "pretrain" in res.stdout, res.stderr
    script = shutil.which("nlptl")
    if script is None:
        pytest.skip("the nlptl console script is not on PATH (pip install -e .)")
    p = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("nlptl "), p.stderr


def test_no_command_shows_help(tmp_path):
    res = run_light([], tmp_path)
    assert res.code == 2
    assert "Usage: nlptl" in res.stderr and "Traceback" not in res.stderr


def test_corpora_and_tasks_listed(tmp_path):
    res = run_light(["corpora"], tmp_path)
    assert res.code == 0, res.stderr
    for name in ("reviews", "wikitext-103", "wikitext-2", "sample-general", "sample-reviews"):
        assert name in res.stdout + res.stderr

    res = run_light(["corpora", "--json"], tmp_path)
    assert res.code == 0 and res.stderr == ""
    corpora = res.json()
    assert {"reviews", "wikitext-103", "wikitext-2"} <= set(corpora)
    assert all(isinstance(v, str) and v for v in corpora.values())

    res = run_light(["tasks"], tmp_path)
    assert res.code == 0, res.stderr
    for name in ("sentiment", "classification"):
        assert name in res.stdout + res.stderr

    res = run_light(["tasks", "--json"], tmp_path)
    assert res.code == 0 and res.stderr == ""
    tasks = res.json()
    assert {"sentiment", "classification"} <= set(tasks)
    assert tasks["sentiment"]["labels"] == ["negative", "positive"]
    assert tasks["classification"]["labels"] is None
    assert not res.torch


def test_registry_overrides_show_in_listings(tmp_path):
    data = tiny_data(tmp_path / "data")
    write_registry(
        tmp_path, {"reviews": data["reviews"]}, {"sentiment": {"train": data["train"], "eval": data["eval"]}}
    )
    corpora = run_light(["corpora", "--json"], tmp_path).json()
    assert str(data["reviews"]) in corpora["reviews"]
    tasks = run_light(["tasks", "--json"], tmp_path).json()
    assert str(data["train"]) in tasks["sentiment"]["description"]
    assert tasks["sentiment"]["labels"] == ["negative", "positive"]


def test_unknown_command_is_a_usage_error(tmp_path):
    res = run_light(["pretrian"], tmp_path)
    assert res.code == 2
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_interrupt_is_exit_130(tmp_path, monkeypatch, capsys):
    from nlptl.stages import predict

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "run", interrupted)
    assert call_main(["predict", "--model", tmp_path, "some text"], tmp_path) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_the_start_shows_what_differs_from_the_defaults(trained_classifier, task_files, tmp_path, capsys):
    from cli_helpers import call_main

    out, _ = trained_classifier
    argv = ["evaluate", "--model", str(out), "--data", str(task_files["test"]), "--batch-size", "8"]
    assert call_main(argv, tmp_path) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "evaluate (changed from the defaults)" in first and "batch_size=8" in first
    assert "mlm_probability" not in first and "text_column" not in first  # defaults stay in config.yaml
    assert call_main([*argv, "--verbose"], tmp_path) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "batch_size=8" in first and "mlm_probability=0.15" in first and "text_column=text" in first
