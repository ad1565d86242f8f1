"""Run a recipe: pretrain -> adapt (any number) -> finetune -> evaluate from one YAML file.

    nlptl run examples/02-ulmfit-gpt.yaml                      # every stage, or only what changed
    nlptl run recipe.yaml --dry-run                            # the plan: run / reuse / resume, and why
    nlptl run recipe.yaml --set classifier.lr=2e-5 --json      # one stage's key; results as JSON

Each stage is the stage command's own run(config), in order; a stage starts from the previous stage's
directory unless it sets from:. The recipe format and the plan are in nlptl/recipe.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging

from nlptl.config import RunConfig
from nlptl.errors import NlptlError

log = logging.getLogger("nlptl")


def run(cfg: RunConfig, command: list[str] | None = None) -> dict:
    """`command`: the arguments `nlptl` was given (None from Python): each training stage's record quotes it,
    and its resume hint (run the recipe again)."""
    from nlptl import recipe

    plan = recipe.decide(recipe.load(cfg.recipe, cfg.sets))
    if cfg.dry_run:
        return {**plan.as_dict(), "dry_run": True}
    for step in plan.steps:
        log.info("%s (%s): %s, %s", step.name, step.stage, step.action, step.why)
    return {**plan.as_dict(), "dry_run": False, "stages": [execute(plan, step, command) for step in plan.steps]}


def execute(plan, step, command: list[str] | None = None) -> dict:
    """One stage of the plan: reuse its directory, or run (resume) it through the stage's run()."""
    from nlptl import console, recipe
    from nlptl.config import changed
    from nlptl.rundir import read_record

    if step.action == "reuse":
        record = read_record(step.out) or {}
        log.info("%s (%s): reusing %s", step.name, step.stage, step.out)
        return {**step.as_dict(), "result": {**(record.get("metrics") or {}), "output_dir": str(step.out)}}
    cfg = step.config
    if step.stage in recipe.TRAINING:
        # Replace what is there (a changed stage, or checkpoints of another config), or continue it.
        cfg = dataclasses.replace(cfg, overwrite=step.out.exists() and step.action == "run",
                                  resume=step.action == "resume")
        step.inputs = recipe.current_inputs(step)  # the parent as it is now, after it ran
        if console.is_main_process():
            recipe.mark_started(plan, step)
    # As the stage commands do: what differs from the stage's defaults (config.yaml in its directory holds all).
    console.header(f"{step.name} ({step.stage}, changed from the defaults)", changed(cfg))
    try:
        module = importlib.import_module(f"nlptl.stages.{step.stage}")
        result = module.run(cfg, command=command) if step.stage in recipe.TRAINING else module.run(cfg)
    except NlptlError as e:
        # Which stage failed: the stage's own message names only its flag.
        if not str(e).startswith("stage '"):
            e.args = (f"stage '{step.name}' ({step.stage}): {e}", *e.args[1:])
        raise
    result = {k: v for k, v in result.items() if k not in ("config", "lineage")}
    console.results(f"{step.name} ({step.stage}) results", result)
    return {**step.as_dict(), "result": result}
