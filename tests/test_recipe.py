"""`nlptl run RECIPE.yaml` (recipe.py, stages/run.py): the format and its errors, precedence, the plan
(run / reuse / resume, and why), and re-runs that reuse, rerun what changed, and resume what was cut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import call_main, run_light, tiny_data

from nlptl.errors import UsageError

FAST = {"batch_size": 4, "precision": "fp32", "log_every": 2}


def chain_recipe(**changes) -> dict:
    """A tiny pretrain -> adapt -> finetune -> evaluate recipe on files under data/ (paths relative to the cwd)."""
    recipe = {
        "out": "runs",
        "defaults": {**FAST, "seed": 3, "block_size": 32},
        "stages": [
            {"name": "general", "stage": "pretrain", "arch": "gpt", "corpus": "data/general.txt", "vocab_size": 300,
             "max_steps": 2},
            {"name": "domain", "stage": "adapt", "corpus": "data/reviews.txt", "max_steps": 4, "save_every": 2},
            {"name": "classifier", "stage": "finetune", "task": "classification", "train": "data/train.csv",
             "eval": "data/eval.csv", "max_length": 24, "max_steps": 2},
            {"name": "test", "stage": "evaluate", "data": "data/test.csv"},
        ],
    }
    recipe.update(changes)
    return recipe


def write_recipe(root: Path, recipe: dict) -> Path:
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_recipe(root: Path, capsys, *args: str) -> tuple[int, dict | None]:
    """`nlptl run recipe.yaml ARGS --json` in this process, from `root`."""
    capsys.readouterr()
    code = call_main(["run", "recipe.yaml", *args, "--json", "--quiet"], root)
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def actions(result: dict) -> dict[str, str]:
    return {s["name"]: s["action"] for s in result["stages"]}


def plan(root: Path, *args: str) -> dict:
    """The dry-run plan, from a fresh process that must not import torch."""
    res = run_light(["run", "recipe.yaml", "--dry-run", "--json", *args], root)
    assert res.code == 0, res.stderr
    assert not res.torch, "--dry-run must not import torch"
    return res.json()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A recipe run once to the end (the tests below work on copies)."""
    import os

    from nlptl.config import RunConfig
    from nlptl.stages import run

    root = tmp_path_factory.mktemp("recipe")
    tiny_data(root / "data")
    write_recipe(root, chain_recipe())
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = run.run(RunConfig(recipe="recipe.yaml"))
    finally:
        os.chdir(cwd)
    return root, result


@pytest.fixture
def copy(chain, tmp_path, monkeypatch):
    """A copy of the finished recipe directory (all paths in it are relative), as the cwd."""
    root = tmp_path / "copy"
    shutil.copytree(chain[0], root)
    monkeypatch.chdir(root)
    return root


# --------------------------------------------------------------------------- running and re-running


def test_first_run_chains_the_stages(chain):
    root, result = chain
    assert actions(result) == {"general": "run", "domain": "run", "classifier": "run", "test": "run"}
    by = {s["name"]: s for s in result["stages"]}
    assert by["domain"]["from"] == "runs/general" and by["classifier"]["from"] == "runs/domain"
    assert by["test"]["from"] == "runs/classifier" and by["test"]["out"] is None
    for name, stage in (("general", "pretrain"), ("domain", "adapt"), ("classifier", "finetune")):
        record = json.loads((root / "runs" / name / "nlptl-run.json").read_text())
        assert record["stage"] == stage
    assert by["domain"]["result"]["steps"] == 4
    assert by["test"]["result"]["n_eval"] == 40 and 0 <= by["test"]["result"]["accuracy"] <= 1
    # The recipe's defaults reached every stage that has the key; the stage's own keys win over them.
    record = json.loads((root / "runs" / "classifier" / "nlptl-run.json").read_text())
    assert record["config"]["seed"] == 3 and record["config"]["max_length"] == 24
    assert "block_size" not in record["config"]  # a finetune config has no such key: not forced on it


def test_rerun_reuses_every_finished_stage(copy, capsys):
    weights = copy / "runs" / "classifier" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    code, result = run_recipe(copy, capsys)
    assert code == 0
    assert actions(result) == {"general": "reuse", "domain": "reuse", "classifier": "reuse", "test": "run"}
    assert "same config and inputs" in result["stages"][0]["why"]
    assert weights.stat().st_mtime_ns == before
    assert result["stages"][2]["result"]["accuracy"] is not None  # a reused stage reports its recorded metrics


def test_changed_input_reruns_the_stage_and_everything_after(copy):
    with open(copy / "data" / "reviews.txt", "a", encoding="utf-8") as f:
        f.write("A brand new review line that changes the corpus hash.\n")
    got = plan(copy)
    assert actions(got) == {"general": "reuse", "domain": "run", "classifier": "run", "test": "run"}
    why = {s["name"]: s["why"] for s in got["stages"]}
    assert "the corpus changed" in why["domain"]
    assert "'domain' reruns" in why["classifier"]


def test_changed_config_reruns_only_downstream_and_harmless_keys_do_not(copy):
    got = plan(copy, "--set", "classifier.lr=5e-4")
    assert actions(got) == {"general": "reuse", "domain": "reuse", "classifier": "run", "test": "run"}
    assert "lr (not set) -> 0.0005" in got["stages"][2]["why"]
    got = plan(copy, "--set", "log_every=7", "--set", "save_every=9")  # change nothing a stage makes
    assert actions(got)["general"] == actions(got)["classifier"] == "reuse"
    got = plan(copy, "--set", "general.max_steps=3")
    assert actions(got) == {"general": "run", "domain": "run", "classifier": "run", "test": "run"}


def test_a_parent_rerun_outside_the_recipe_invalidates_its_children(copy):
    record_file = copy / "runs" / "general" / "nlptl-run.json"
    record = json.loads(record_file.read_text())
    record["lineage"]["time"] = "another time"  # what `nlptl pretrain --out runs/general --overwrite` leaves
    record_file.write_text(json.dumps(record))
    got = plan(copy)
    assert actions(got)["general"] == "reuse"
    assert actions(got)["domain"] == "run" and "the model it starts from changed" in got["stages"][1]["why"]


def test_interrupted_stage_is_resumed(copy, capsys, monkeypatch):
    from nlptl import checkpoint

    shutil.rmtree(copy / "runs" / "domain")
    shutil.rmtree(copy / "runs" / "classifier")
    real = checkpoint.save_training_state

    def save_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the first checkpoint of 'domain'

    monkeypatch.setattr(checkpoint, "save_training_state", save_then_interrupt)
    code, _ = run_recipe(copy, capsys)
    assert code == 130
    assert (copy / "runs" / "domain" / "checkpoints" / "step-000002").is_dir()
    assert not (copy / "runs" / "domain" / "nlptl-run.json").exists()
    monkeypatch.setattr(checkpoint, "save_training_state", real)

    got = plan(copy)
    assert actions(got) == {"general": "reuse", "domain": "resume", "classifier": "run", "test": "run"}
    assert "step-000002" in got["stages"][1]["why"]
    # The same stage with another config is not resumed from checkpoints made with the old one.
    changed = plan(copy, "--set", "domain.lr=3e-4")
    assert actions(changed)["domain"] == "run" and "starting over" in changed["stages"][1]["why"]

    code, result = run_recipe(copy, capsys)
    assert code == 0, result
    assert actions(result)["domain"] == "resume"
    assert result["stages"][1]["result"]["steps"] == 4
    assert (copy / "runs" / "domain" / "nlptl-run.json").is_file()
    assert not (copy / "runs" / "domain" / "checkpoints").exists()  # a finished run drops its checkpoints
    assert actions(plan(copy))["domain"] == "reuse"


# --------------------------------------------------------------------------- the format


def load(tmp_path, recipe: dict, sets=None):
    from nlptl import recipe as recipes

    return recipes.load(str(write_recipe(tmp_path, recipe)), sets)


def test_precedence_inside_a_recipe(tmp_path):
    """Stage defaults < recipe defaults < the stage's keys < --set key=v < --set NAME.key=v."""
    r = chain_recipe()
    r["defaults"].update(lr=0.01, epochs=2, warmup_ratio=0.2)
    r["stages"][1].update(lr=0.02, epochs=4)
    steps = {s.name: s.config for s in load(tmp_path, r, ["lr=0.03", "domain.lr=0.04", "out=elsewhere"]).steps}
    assert steps["domain"].lr == 0.04 and steps["general"].lr == 0.03  # NAME.key over key over stage keys
    assert steps["domain"].epochs == 4 and steps["general"].epochs == 2  # stage keys over recipe defaults
    assert steps["domain"].warmup_ratio == 0.2  # recipe defaults over the stage's own defaults
    assert steps["classifier"].weight_decay == 0.01  # untouched: the stage default
    assert steps["domain"].out == str(Path("elsewhere") / "domain")  # --set out= moves the root
    assert steps["test"].seed is None  # evaluate's seed picks MLM masks: recipe seeds do not reach it


def test_stage_out_and_from_can_be_set_explicitly(tmp_path):
    r = chain_recipe()
    r["stages"][1]["out"] = "lm"
    r["stages"][2]["from"] = "runs/general"  # skip the adapted LM: finetune the general one
    steps = {s.name: s for s in load(tmp_path, r).steps}
    assert steps["domain"].out == Path("lm") and steps["classifier"].source == "runs/general"
    assert steps["classifier"].upstream == "general"
    assert steps["test"].source == "runs/classifier"


def test_several_adapt_stages_chain(tmp_path):
    r = chain_recipe()
    r["stages"].insert(2, {"name": "tapt", "stage": "adapt", "corpus": "task:classification",
                           "train": "data/train.csv"})
    steps = {s.name: s for s in load(tmp_path, r).steps}
    assert steps["tapt"].source == "runs/domain" and steps["classifier"].source == "runs/tapt"


@pytest.mark.parametrize("change,message", [
    (lambda r: r["stages"][1].update(lrr=1), "unknown config key 'lrr' in stage 'domain' (adapt)"),
    (lambda r: r["stages"][1].update(lrr=1), "did you mean 'lr'?"),
    (lambda r: r["stages"][1].update(stage="adpat"), "did you mean 'adapt'?"),
    (lambda r: r["stages"][1].update(block_size=-1), "stage 'domain' (adapt): --block-size must be positive"),
    (lambda r: r["stages"][1].update(name="general"), "two stages are named 'general'"),
    (lambda r: r["stages"][1].update(resume=True), "decided by nlptl run"),
    (lambda r: r["defaults"].update(bacth_size=2), "unknown config key 'bacth_size' in defaults"),
    (lambda r: r["defaults"].update(out="x"), "cannot be shared by every stage"),
    (lambda r: r.update(stagse=[]), "unknown top-level key 'stagse' (did you mean 'stages'?)"),
    (lambda r: r.update(stages=[]), "stages: must be a list"),
    (lambda r: r["stages"].pop(0), "stage 'domain' (adapt) has no earlier stage to start from; set from:"),
    (lambda r: r["stages"][2].update(out="runs/domain"), "both write to runs/domain"),
    (lambda r: r["stages"][1].update(**{"from": "runs/classifier"}),
     "stage 'domain' (adapt): from: runs/classifier is what stage 'classifier' writes, and that stage runs later"),
])
def test_recipe_mistakes_are_usage_errors_naming_the_stage(tmp_path, change, message):
    r = chain_recipe()
    change(r)
    with pytest.raises(UsageError) as e:
        load(tmp_path, r)
    assert message in str(e.value)
    assert "named" not in message or not str(e.value).endswith(":")  # no dangling colon


def test_set_names_an_unknown_stage(tmp_path):
    with pytest.raises(UsageError, match=r"no stage named 'domian' \(did you mean 'domain'\?\)"):
        load(tmp_path, chain_recipe(), ["domian.lr=1"])


def test_cli_errors_are_one_line_exit_2_before_torch(tmp_path):
    tiny_data(tmp_path / "data")
    r = chain_recipe()
    r["stages"][1]["corpus"] = "data/missing.txt"
    write_recipe(tmp_path, r)
    for args, needle in ((["run", "recipe.yaml", "--dry-run"], "stage 'domain' (adapt): --corpus data/missing.txt"),
                         (["run", "recipe.yaml"], "stage 'domain' (adapt)"),
                         (["run", "nosuch.yaml"], "recipe nosuch.yaml: no such file")):
        res = run_light(args, tmp_path)
        assert res.code == 2, res.stderr
        assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert needle in res.stderr and not res.torch


def test_dry_run_table_on_stdout(tmp_path):
    tiny_data(tmp_path / "data")
    write_recipe(tmp_path, chain_recipe())
    res = run_light(["run", "recipe.yaml", "--dry-run"], tmp_path)
    assert res.code == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert rows[0] == ["stage", "kind", "action", "from", "out", "why"]
    assert [r[:3] for r in rows[1:]] == [["general", "pretrain", "run"], ["domain", "adapt", "run"],
                                         ["classifier", "finetune", "run"], ["test", "evaluate", "run"]]
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
