"""Recipes: the stages of a transfer-learning run in one YAML file, and the plan of what to do with each.

    nlptl run recipe.yaml                        # runs what is missing or changed, reuses the rest
    nlptl run recipe.yaml --dry-run              # the plan only: nothing is imported or trained
    nlptl run recipe.yaml --set domain.lr=1e-3 --set max_steps=100 --set out=runs/try2

A recipe is plain data (nothing in it is instantiated or executed):

    out: runs/ulmfit              # root: each stage writes OUT/<name> unless it sets out:
    defaults:                     # keys for every stage whose config has them
      seed: 42
    stages:
      - {name: general, stage: pretrain, arch: gpt, corpus: wikitext-103}
      - {name: domain, stage: adapt, corpus: reviews}        # from: the previous stage's directory
      - {name: classifier, stage: finetune, task: sentiment}
      - {name: test, stage: evaluate, data: task:sentiment}  # model: the previous stage's directory

Each stage's keys are the keys of `nlptl STAGE --config FILE`, resolved by the same code
(config.resolve): stage defaults < recipe defaults < the stage's keys < `--set key=v` < `--set NAME.key=v`.

The plan compares each stage directory with what the recipe asks for now: a finished run
(nlptl-run.json) made with the same config and the same inputs (corpus and data hashes, the parent
model's lineage) is reused; a changed one is run again, and so is everything downstream of it; an
interrupted one (checkpoints, no nlptl-run.json) is resumed. Light module: no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlptl.config import ALIASES, STAGE_CONFIGS, load_yaml, option_keys, parse_sets, resolve, runs_root, to_dict
from nlptl.errors import UsageError, did_you_mean
from nlptl.rundir import checkpoints_dir, read_record

KINDS = ("pretrain", "adapt", "finetune", "evaluate")
TRAINING = ("pretrain", "adapt", "finetune")
TOP_KEYS = ("out", "defaults", "stages")
# nlptl run decides these itself (replace a changed stage, resume an interrupted one): recipe="managed" on
# the config field.
MANAGED = option_keys("recipe", "managed")
# Keys that do not change what a stage makes: a change in them alone does not rerun the stage
# (recipe="ignored", and the managed ones).
IGNORED = option_keys("recipe", "managed", "ignored")
STATE_FILE = ".nlptl-recipe.json"  # under the root: the config each stage was started with (for resume)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class Step:
    name: str
    stage: str
    config: Any  # the resolved stage config
    out: Path | None  # None for evaluate (it writes no directory)
    source: str | None  # the model it starts from (--from / --model)
    upstream: str | None = None  # the recipe stage whose directory is `source`
    action: str = "run"  # run | reuse | resume
    why: str = ""
    inputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "stage": self.stage, "action": self.action, "from": self.source,
                "out": str(self.out) if self.out else None, "why": self.why}


@dataclass
class Plan:
    recipe: str
    out: Path
    steps: list[Step]

    def as_dict(self) -> dict:
        return {"recipe": self.recipe, "out": str(self.out), "stages": [s.as_dict() for s in self.steps]}


def _key(key: Any) -> str:
    k = str(key).replace("-", "_")
    return ALIASES.get(k, k)


def _fields(kind: str) -> set[str]:
    return set(STAGE_CONFIGS[kind].__dataclass_fields__)


def _check_managed(data: dict, where: str) -> None:
    for k in data:
        if _key(k) in MANAGED:
            raise UsageError(f"{where}: '{k}' is decided by nlptl run (it resumes interrupted stages "
                             "and reruns changed ones); drop it, or delete the stage's directory to start it over")


def _split_sets(sets: list[str] | None, names: list[str], where: str) -> tuple[dict, dict, dict[str, dict]]:
    """--set items -> (top-level keys, keys for every stage, {stage name: keys})."""
    top: dict[str, Any] = {}
    every: dict[str, Any] = {}
    per: dict[str, dict] = {n: {} for n in names}
    for key, value in parse_sets(sets).items():
        if "." in key:
            name, sub = key.split(".", 1)
            if name not in per:
                raise UsageError(f"--set {key}: {where} has no stage named '{name}'{did_you_mean(name, names)}; "
                                 f"its stages are {', '.join(names)}")
            per[name][sub] = value
        elif key == "out":
            top["out"] = value
        else:
            every[key] = value
    return top, every, per


def _shared(data: dict, where: str, kinds: list[str]) -> None:
    """Keys meant for several stages must belong to at least one of them."""
    known = set().union(*(_fields(k) for k in kinds)) if kinds else set()
    for k in data:
        key = _key(k)
        if key in ("out", "from_model", "model"):
            raise UsageError(f"{where}: '{k}' cannot be shared by every stage; set out: at the top level (the root) "
                             f"and {k}: on a stage")
        if key not in known:
            raise UsageError(f"unknown config key '{key}' in {where}{did_you_mean(key, sorted(known | set(ALIASES)))}; "
                             f"no stage of the recipe ({', '.join(sorted(set(kinds)))}) has it")


def load(path: str, sets: list[str] | None = None) -> Plan:
    """Read and resolve a recipe; every stage's config is checked here, before anything runs."""
    where = f"recipe {path}"
    stages, defaults, out = _read(path, where)
    names, kinds = _names(stages, where)
    top, every, per = _split_sets(sets, names, where)
    _check_managed(defaults, f"{where}, defaults:")
    _check_managed(every, "--set")
    _shared(defaults, f"defaults: of {where}", kinds)
    _shared(every, "--set", kinds)
    root = Path(str(top.get("out") or out or runs_root() / Path(path).stem))
    steps: list[Step] = []
    model_out: str | None = None  # the directory the next stage starts from
    for s, name, kind in zip(stages, names, kinds, strict=True):
        own = {k: v for k, v in s.items() if k not in ("name", "stage")}
        label = f"stage '{name}' ({kind})"
        _check_managed(own, label)
        _check_managed(per[name], f"--set {name}.*")
        shared = _fields(kind) - {"seed"} if kind == "evaluate" else _fields(kind)  # evaluate's seed picks MLM masks
        layers = [
            (_chained(kind, root / name, model_out), label),
            ({k: v for k, v in defaults.items() if _key(k) in shared}, f"defaults: of {where}"),
            (own, f"{label} of {path}"),
            ({k: v for k, v in every.items() if _key(k) in shared}, "--set"),
            (per[name], f"--set {name}.*"),
        ]
        try:
            cfg = resolve(STAGE_CONFIGS[kind], layers=layers)
        except UsageError as e:
            raise UsageError(str(e) if f"stage '{name}'" in str(e) else f"{label}: {e}") from None
        steps.append(_step(name, kind, cfg, label, steps))
        if steps[-1].out is not None:
            model_out = str(steps[-1].out)
    _check_order(steps)
    return Plan(path, root, steps)


def _check_order(steps: list[Step]) -> None:
    for i, step in enumerate(steps):
        # A source that a later stage writes does not exist yet when this one runs (at run time it would
        # be taken for a hub id): the plan refuses it.
        later = next((p for p in steps[i + 1:] if p.out and step.source and _same(p.out, step.source)), None)
        if later is not None:
            key = "model" if step.stage == "evaluate" else "from"
            raise UsageError(f"stage '{step.name}' ({step.stage}): {key}: {step.source} is what stage '{later.name}' "
                             f"writes, and that stage runs later; move stage '{later.name}' before it")


def _read(path: str, where: str) -> tuple[list[dict], dict, Any]:
    """The recipe file's stages, defaults and out, checked for shape."""
    data = load_yaml(path, "recipe")
    for k in data:
        if k not in TOP_KEYS:
            raise UsageError(f"{where}: unknown top-level key '{k}'{did_you_mean(str(k), TOP_KEYS)}; a recipe has "
                             "out:, defaults: and stages:")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise UsageError(f"{where}: stages: must be a list of mappings, each with stage: "
                         f"({' | '.join(KINDS)}) and that stage's keys")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UsageError(f"{where}: defaults: must be a mapping of key: value")
    return stages, defaults, data.get("out")


def _names(stages: list[dict], where: str) -> tuple[list[str], list[str]]:
    """Each stage's name (unique; its kind by default) and kind."""
    names, kinds = [], []
    for i, s in enumerate(stages, 1):
        kind = s.get("stage")
        if kind not in KINDS:
            raise UsageError(f"{where}: stage {i} has stage: {kind!r}{did_you_mean(str(kind), KINDS)}; "
                             f"choose one of {', '.join(KINDS)}")
        name = str(s.get("name") or kind)
        if not NAME.match(name):
            raise UsageError(f"{where}: stage name '{name}' must be letters, digits, '-' or '_'")
        if name in names:
            raise UsageError(f"{where}: two stages are named '{name}'; give each stage its own name: (name: ...)")
        names.append(name)
        kinds.append(kind)
    return names, kinds


def _chained(kind: str, out: Path, model_out: str | None) -> dict[str, Any]:
    """What a stage takes from its place in the chain: its out (under the root) and the model it starts from."""
    if kind == "evaluate":
        return {"model": model_out} if model_out else {}
    return {"out": str(out), **({"from_model": model_out} if model_out else {})}


def _step(name: str, kind: str, cfg: Any, label: str, steps: list[Step]) -> Step:
    """The resolved stage, checked against the stages before it."""
    source = cfg.model if kind == "evaluate" else cfg.from_model
    if source is None and kind != "pretrain":
        flag = "model" if kind == "evaluate" else "from"
        raise UsageError(f"{label} has no earlier stage to start from; set {flag}: MODEL on it (a run directory, "
                         "a checkpoint or a hub id)")
    out = Path(cfg.out) if kind != "evaluate" else None
    upstream = next((p.name for p in reversed(steps) if p.out and source and _same(p.out, source)), None)
    for p in steps:
        if out is not None and p.out is not None and _same(p.out, str(out)):
            raise UsageError(f"{label} and stage '{p.name}' both write to {out}; give one of them another out:")
    return Step(name, kind, cfg, out, source, upstream)


def _same(a: Path, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


# --------------------------------------------------------------------------- the plan


def comparable(cfg: Any) -> dict:
    """The config as recorded in nlptl-run.json (a JSON round trip), less the keys that change nothing."""
    d = json.loads(json.dumps(to_dict(cfg), default=str))
    return {k: v for k, v in d.items() if k not in IGNORED}


def config_changes(recorded: dict, current: dict) -> list[str]:
    missing = object()
    keys = sorted((set(recorded) | set(current)) - set(IGNORED))

    def shown(value: Any) -> str:
        return "(not set)" if value is None else repr(value)  # None: the stage's default, or none at all

    return [f"{k} {shown(recorded.get(k))} -> {shown(current.get(k))}" for k in keys
            if recorded.get(k, missing) != current.get(k, missing)]


def _source_key(record: dict | None) -> Any:
    """What identifies a data source: its content hash, or its hub name (hub data is hashed only on loading)."""
    if not record:
        return None
    if record.get("hub"):
        return ["hub", record.get("hub"), record.get("hub_config"), record.get("hub_split") or record.get("hub_splits")]
    return record.get("sha256") or record.get("spec")


def _corpus_key(records: list[dict | None]) -> Any:
    """One corpus's key, or a mixture's: each corpus's key with its share."""
    if len(records) == 1:
        return _source_key(records[0])
    return [[_source_key(r), r.get("weight")] for r in records]


def current_inputs(step: Step) -> dict:
    """The inputs of a stage as they are now: data hashes and the parent model's lineage."""
    cfg, inputs = step.config, {}
    if step.stage in ("pretrain", "adapt") and cfg.corpus:
        from nlptl.data.corpora import resolve_corpora

        sources = resolve_corpora(cfg.corpus, cfg.text_column, cfg.train_file)
        inputs["corpus"] = _corpus_key([s.record() for s in sources])
    if step.stage == "finetune":
        from nlptl.data.tasks import resolve_task

        spec = resolve_task(cfg.task, cfg.train_file, cfg.eval_file, cfg.text_column, cfg.label_column,
                            cfg.label_separator)
        inputs["train"] = _source_key(spec.train.record() if spec.train else None)
        inputs["eval"] = _source_key(spec.eval.record() if spec.eval else None)
    if step.source:
        parent = read_record(step.source)
        inputs["parent"] = parent.get("lineage") if parent else None
    return inputs


def recorded_inputs(step: Step, lineage: dict) -> dict:
    """The same inputs as the run's lineage recorded them."""
    inputs: dict[str, Any] = {}
    if step.stage in ("pretrain", "adapt") and step.config.corpus:
        inputs["corpus"] = _corpus_key(lineage.get("mixture") or [lineage.get("corpus")])
    if step.stage == "finetune":
        inputs["train"] = _source_key(lineage.get("train"))
        eval_from = lineage.get("eval")
        inputs["eval"] = None if not eval_from or "slice_of_train" in eval_from else _source_key(eval_from)
    if step.source:
        inputs["parent"] = lineage.get("parent")
    return inputs


INPUT_NAMES = {"corpus": "the corpus", "train": "the training data", "eval": "the evaluation data",
               "parent": "the model it starts from"}


def input_changes(recorded: dict, current: dict) -> list[str]:
    return [f"{INPUT_NAMES.get(k, k)} changed" for k in sorted(set(recorded) | set(current))
            if recorded.get(k) != current.get(k)]


def read_state(root: Path) -> dict:
    try:
        return json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def mark_started(plan: Plan, step: Step) -> None:
    """Remember the config and inputs a stage starts with, so that an interrupted run is resumed only
    when the recipe still asks for the same thing (checkpoints do not record the config)."""
    state = read_state(plan.out)
    state[step.name] = {"out": str(step.out), "config": comparable(step.config), "inputs": step.inputs}
    plan.out.mkdir(parents=True, exist_ok=True)
    tmp = plan.out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
    tmp.replace(plan.out / STATE_FILE)


def _latest_checkpoint(out: Path) -> str | None:
    root = checkpoints_dir(out)
    steps = sorted(p.name for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []
    return steps[-1] if steps else None


def decide(plan: Plan) -> Plan:
    """Fill in each step's action (run / reuse / resume) and why."""
    state = read_state(plan.out)
    by_name = {s.name: s for s in plan.steps}
    for step in plan.steps:
        label = f"stage '{step.name}' ({step.stage})"
        try:
            # Also checks the data files now, so that a dry run finds a missing file.
            step.inputs = current_inputs(step)
        except UsageError as e:
            raise UsageError(f"{label}: {e}") from None
        up = by_name.get(step.upstream) if step.upstream else None
        if step.stage == "evaluate":
            step.action, step.why = "run", "evaluation is not stored; it runs every time"
            continue
        out = step.out
        record = read_record(out)
        checkpoint = _latest_checkpoint(out) if record is None else None
        if record is None and checkpoint is None and out.exists():
            if out.is_file() or any(out.iterdir()):
                raise UsageError(f"{label}: {out} exists and is not an nlptl run; choose another out: for the stage")
        if record is not None and record.get("stage") != step.stage:
            raise UsageError(f"{label}: {out} holds a {record.get('stage')} run; choose another out: for the stage, "
                             "or remove that directory")
        if up is not None and up.action != "reuse":
            step.action = "run"
            step.why = (f"'{up.name}' {'reruns' if up.action == 'run' else 'resumes'}, so this stage reruns"
                        if record is not None or checkpoint else "not run yet")
            if checkpoint and record is None:
                step.why += " (its checkpoints are dropped)"
            continue
        if record is not None:
            changes = config_changes(record.get("config") or {}, comparable(step.config))
            changes += input_changes(recorded_inputs(step, record.get("lineage") or {}), step.inputs)
            if changes:
                step.action, step.why = "run", "changed since it ran: " + "; ".join(changes)
            else:
                step.action, step.why = "reuse", f"finished {record.get('created', '')} with the same config and inputs"
            continue
        if checkpoint:
            step.action, step.why = _interrupted(step, state.get(step.name), checkpoint)
            continue
        step.action, step.why = "run", "not run yet"
    return plan


def _interrupted(step: Step, started: dict | None, checkpoint: str) -> tuple[str, str]:
    """(action, why) for a stage with checkpoints and no finished run: resume it unless the recipe asks for
    something else than what it started with (`started`, from the recipe's state file)."""
    if not started or started.get("out") != str(step.out):
        return "resume", f"unfinished run found: resuming from {checkpoint}"
    changes = config_changes(started.get("config") or {}, comparable(step.config))
    changes += input_changes(started.get("inputs") or {}, step.inputs)
    if changes:
        return "run", f"interrupted, but changed since it started ({'; '.join(changes)}): starting over"
    return "resume", f"interrupted: resuming from {checkpoint}"
