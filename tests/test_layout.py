"""The direction of imports, read from the source: command line -> stages -> engine, data and models ->
config, console and errors, never back up. Also the size of functions (ruff's C901/PLR0912/PLR0915 in
pyproject.toml bound complexity and statements; lines are counted here)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nlptl"
COMMAND_LINE = {"nlptl.cli", "nlptl.__main__"}
BASE = {"nlptl", "nlptl.config", "nlptl.console", "nlptl.errors"}
# The commands of `nlptl`: a stage module never imports another. `run` and `demo` run a chain of stages,
# which is what they are for; the other modules of stages/ are the stages' shared parts.
STAGES = {"pretrain", "adapt", "preprocess", "finetune", "evaluate", "predict", "report"}
CHAINS = {"run", "demo"}
MAX_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "metrics" not in p.parts}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (`from a import b` counts a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer(name: str) -> int:
    if name in COMMAND_LINE:
        return 3
    if name.startswith("nlptl.stages"):
        return 2
    return 0 if name in BASE else 1


def is_stage(name: str) -> bool:
    return name.startswith("nlptl.stages.") and name.split(".")[2] in STAGES


def test_the_package_is_what_these_rules_know():
    names = modules()
    assert {"nlptl.cli", "nlptl.train", "nlptl.models", "nlptl.data.registry", "nlptl.stages.curve"} <= set(names)
    assert {f"nlptl.stages.{s}" for s in STAGES | CHAINS} <= set(names)


@pytest.mark.parametrize("name", sorted(set(modules()) - COMMAND_LINE))
def test_library_modules_never_import_the_command_line(name):
    bad = {m for m in imports_of(modules()[name]) if m in COMMAND_LINE or m.split(".")[0] in ("typer", "click")}
    assert not bad, f"{name} imports {sorted(bad)}: only nlptl/cli.py may"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_import_runs_back_up(name):
    """cli (3) -> stages (2) -> engine, data, models (1) -> config, console, errors (0)."""
    known = set(modules())
    above = {m for m in imports_of(modules()[name]) if m in known and layer(m) > layer(name)}
    assert not above, f"{name} (layer {layer(name)}) imports {sorted(above)} from above it"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("nlptl.data")))
def test_data_never_imports_stages(name):
    assert not {m for m in imports_of(modules()[name]) if m.startswith("nlptl.stages")}


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("nlptl.stages.")))
def test_no_stage_imports_another_stage(name):
    if name.split(".")[2] in CHAINS:
        return
    stages = {m for m in imports_of(modules()[name]) if is_stage(m) and m != name}
    assert not stages, f"{name} imports the stage(s) {sorted(stages)}; move what they share into stages/common.py, lm.py or classifier.py"


def test_functions_fit_on_a_screen():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_a_stage_used_from_python_leaves_the_command_line_alone():
    """Importing a stage loads no Typer and leaves the caller's environment as it was."""
    code = ("import os, sys\nimport nlptl.stages.adapt, nlptl.stages.finetune, nlptl.stages.run\n"
            "print('typer' in sys.modules, 'TYPER_USE_RICH' in os.environ, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TYPER_USE_RICH"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False", "False"]


# The task shapes (single, multilabel, regression) are one table, nlptl/shapes.py: a module asks the shape
# (its scores, loss name, outputs, card words) and never switches on its name. A fourth shape is an entry there.
SHAPE_WORDS = "single|multilabel|regression|single_label_classification|multi_label_classification"
SHAPE_SWITCH = re.compile(
    rf"""problem\w*\s*(==|!=)\s*["']|(==|!=)\s*["']({SHAPE_WORDS})["']|["']({SHAPE_WORDS})["']\s*(==|!=)"""
    r"""|problem\w*\s+(not\s+)?in\s+[(\[{]\s*["']""")
# probe.py (adapt --probe takes one label per text) was the lead's file while the table was made: to move.
SHAPE_SWITCH_LEFT = {"nlptl.probe"}


def test_the_task_shapes_are_one_table():
    switches = [f"{name}:{n}: {line.strip()}" for name, path in modules().items()
                if name != "nlptl.shapes" and name not in SHAPE_SWITCH_LEFT
                for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if SHAPE_SWITCH.search(line)]
    assert not switches, f"ask the TaskShape (nlptl/shapes.py) instead of comparing its name: {switches}"


def test_every_shape_has_its_loss_in_the_copied_head():
    """heads.py is copied into run directories and imports nothing of nlptl: its LOSSES are the table's."""
    from nlptl.heads import LOSSES
    from nlptl.shapes import SHAPES

    assert set(LOSSES) == {s.problem_type for s in SHAPES.values()}


MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "add", "discard", "remove",
            "clear"}


def mutated_globals(tree: ast.Module) -> set[str]:
    """The module-level dicts, lists and sets of `tree` that its code changes (item assignment, deletion,
    a mutating method, or a `global` statement): state kept between calls."""
    containers = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        made = isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id in ("dict", "list", "set", "defaultdict", "OrderedDict", "Counter"))
        containers |= {t.id for t in targets if made and isinstance(t, ast.Name)}
    changed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            changed.update(node.names)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            changed.add(getattr(node.value, "id", None))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            changed.add(getattr(node.func.value, "id", None))
    # A `global` name is state whatever it holds; a container counts when it is changed.
    globals_ = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
    return (containers & changed) | globals_


def test_mutated_globals_finds_state():
    code = "A = {}\nB = []\nC = {'x': 1}\ndef f(k):\n    A[k] = 1\n    B.append(k)\n    return C[k]\n"
    assert mutated_globals(ast.parse(code)) == {"A", "B"}


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("nlptl.stages.")))
def test_stages_keep_no_state_between_calls(name):
    """What a stage's opening tells its closing travels in its Run (stages/common.py), not in module globals
    that a second run in the same process (a recipe, a test) would find filled."""
    state = mutated_globals(ast.parse(modules()[name].read_text(encoding="utf-8")))
    assert not state, f"{name} keeps state in module globals {sorted(state)}; keep it in the stage's Run"
