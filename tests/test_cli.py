"""The command line as a user meets it: help, version, listings, usage errors.

The --json results of every stage and the default chaining (no --from, no --out) are in test_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cli_helpers import call_main, run_cli, run_light, tiny_data, write_registry

COMMANDS = ("pretrain", "adapt", "finetune", "evaluate", "predict", "run", "corpora", "tasks", "demo")


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
