"""The README's two commands, `make demo` and `make test`: they set up .venv only when it is missing or
stale, the demo's set-up leaves out the dev extras, and CI runs `make test`. Checked with `make -n`
(print, don't run) on a copy of the Makefile, and a stand-in .venv/bin/python: no real install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

# Under `make test`, the outer make passes its flags and command-line variables (TORCH_INDEX=...) down
# through MAKEFLAGS; the makes started here must not inherit them.
ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def plan(checkout: Path, target: str, *args: str) -> str:
    p = subprocess.run(["make", "-n", target, *args], cwd=checkout, capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert p.returncode == 0, p.stderr
    return p.stdout


def set_up(checkout: Path, target: str) -> None:
    """What the set-up would leave behind: its stamps (taken from its `touch` line)."""
    (touch,) = [line for line in plan(checkout, target).splitlines() if line.startswith("touch ")]
    for stamp in touch.split()[1:]:
        (checkout / stamp).parent.mkdir(exist_ok=True)
        (checkout / stamp).touch()


def test_demo_sets_up_without_the_dev_extras_then_only_runs(checkout):
    first = plan(checkout, "demo")
    assert "-m venv .venv" in first
    # ".", not ".[dev]": the demo gets no mlflow, no tensorboard
    assert re.search(r'pip install -q "torch==2\.13\.0" -e "\."\n', first)
    assert first.rstrip().endswith(".venv/bin/nlptl demo")
    set_up(checkout, "demo")
    assert plan(checkout, "demo").strip() == ".venv/bin/nlptl demo"


def test_test_sets_up_the_dev_extras_once_and_covers_the_demo(checkout):
    set_up(checkout, "demo")
    assert '-e ".[dev]"' in plan(checkout, "test")  # the demo's set-up lacks pytest
    set_up(checkout, "test")
    for target in ("test", "demo"):
        assert "pip install" not in plan(checkout, target)
    assert "-m pytest -q" in plan(checkout, "test")


def test_a_changed_pyproject_or_torch_choice_sets_up_again(checkout):
    set_up(checkout, "test")
    cuda = plan(checkout, "test", "TORCH_INDEX=https://example.org/whl/cu130")
    assert "--index-url https://example.org/whl/cu130" in cuda and "pip install" in cuda
    with open(checkout / "pyproject.toml", "a") as f:
        f.write("\n# edited\n")
    assert "pip install" in plan(checkout, "test")


def test_make_test_fails_when_pytest_collects_nothing(checkout):
    set_up(checkout, "test")
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 5\n")  # pytest's exit code for "no tests collected"
    python.chmod(0o755)
    p = subprocess.run(["make", "test"], cwd=checkout, capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode != 0
    assert "collected no tests" in p.stderr


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "make test" in (ROOT / "README.md").read_text()
