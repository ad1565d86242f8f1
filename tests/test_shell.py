"""Everyday shell use: completion scripts, and where nlptl and the Hugging Face libraries put files
($NLPTL_HOME for runs and nlptl's caches, $HF_HOME for the datasets cache)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_helpers import cli_env, run_cli, tiny_data


def nlptl(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nlptl", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_show_completion_prints_a_bash_script(tmp_path):
    p = nlptl(["--show-completion", "bash"], cli_env(tmp_path, SHELL="/bin/bash"), tmp_path)
    assert p.returncode == 0, p.stderr
    assert "_nlptl_completion" in p.stdout and "complete " in p.stdout
    assert "--install-completion" in nlptl(["--help"], cli_env(tmp_path), tmp_path).stdout


def test_completion_completes_commands_and_flags(tmp_path):
    env = cli_env(tmp_path, _NLPTL_COMPLETE="complete_bash", COMP_WORDS="nlptl ad", COMP_CWORD="1")
    assert nlptl([], env, tmp_path).stdout.split() == ["adapt"]
    env.update(COMP_WORDS="nlptl finetune --lora-", COMP_CWORD="2")
    offered = set(nlptl([], env, tmp_path).stdout.split())
    assert {"--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets"} <= offered


@pytest.mark.slow  # a real pretrain process: ~10-25 s on 2 busy cores
def test_runs_and_caches_go_under_nlptl_home_and_hf_home(tmp_path, nlptl_home):
    home, hf_home = nlptl_home, tmp_path / "hf-home"
    data = tiny_data(tmp_path / "data")
    env = cli_env(home, HF_HOME=str(hf_home))
    for var in ("HF_DATASETS_CACHE", "HF_MODULES_CACHE"):  # the test session's own overrides
        env.pop(var, None)
    res = run_cli(["pretrain", "--arch", "gpt", "--corpus", str(data["general"]), "--max-steps", "1",
                   "--block-size", "32", "--vocab-size", "300", "--json", "--quiet"], home, env=env)
    assert res.code == 0, res.stderr[-2000:]
    out = res.json()["output_dir"]
    assert os.path.realpath(out).startswith(os.path.realpath(home))  # the default run directory
    assert list((home / ".cache" / "tokenizers").glob("*/tokenizer.json"))  # nlptl's tokenizer cache
    # The tokenized, packed blocks: cached by `datasets` under $HF_HOME/datasets.
    assert list((hf_home / "datasets").rglob("*.arrow")), sorted(str(p) for p in hf_home.rglob("*"))[:20]
