"""A search over a stage's options with Optuna (`pip install 'nlptl[sweep]'`); every trial a run directory.

    nlptl sweep finetune --from runs/adapt-... --task classification --train train.csv --eval dev.csv \\
        --space "lr=loguniform(1e-5,1e-3);batch_size=choice(16,32)" --trials 8 --parallel 2 --out runs/sweep
    nlptl sweep finetune ... --trials 12 --out runs/sweep     # the same command, more trials: the study goes on
    nlptl report runs/sweep                                   # the trials, and the best trial's command

A trial is `nlptl finetune` with the sweep's options, the trial's values and --out OUT/trials/NNN (NNN: the
trial's number): an ordinary run directory with its lineage. With --parallel 1 the trials run one after the
other in this process (the stage's own run(config)); with --parallel N, N at a time, each in its own
`python -m nlptl finetune ...` process (the command the trial records).

The objective is finetune's selection score on its eval split (--eval, or the seeded slice of --train):
accuracy, micro-F1 (multi-label) or RMSE (regression); no test data is read. The study lives in OUT/study.db
(Optuna's RDB storage on SQLite): the same command again continues it with its finished trials kept. A
trial that was running when the sweep was killed is marked failed (no `error`: interrupted) and its values
run again as a new trial. A trial that fails by itself (its stage raised) is failed and counts as finished.
OUT/sweep.json holds the search, its trials and the best trial's command (what `nlptl report OUT` shows).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nlptl.config import ALIASES, FinetuneConfig, SweepConfig, load_yaml, option_keys, resolve, to_dict
from nlptl.errors import NlptlError, UsageError

log = logging.getLogger("nlptl")

RECORD = "sweep.json"
STUDY = "study.db"
TRIALS = "trials"
# Keys a trial may not vary: where runs go and how they resume, what leaves the machine, and the selection
# data and the learning curve (a trial is one model scored on one eval split).
FIXED = ("eval_file", "eval_fraction", "n_labels", "seeds", "compare")
DIST = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")
POLL_SECONDS = 0.5


def run(cfg: SweepConfig) -> dict:
    optuna = require_optuna()
    space = parse_space(cfg.space, cfg.options, cfg.stage_sets)
    base = trial_config(cfg, {}, None)
    check_space(cfg, space)
    score, direction = selection(base)
    from nlptl.rundir import OutLock, check_writable

    out = Path(cfg.out)
    check_writable(out)
    lock = OutLock(out).take()  # one sweep per OUT: a trial left running in the study is then a dead one
    try:
        search = check_search(cfg, out, space)
        study = open_study(optuna, out, direction, base.seed)
        study.set_user_attr("score", score)
        requeue_interrupted(study)
        loop(cfg, study, space, out, lambda: write_summary(out, study, search, score, direction))
        return write_summary(out, study, search, score, direction)
    finally:
        lock.release()


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise NlptlError("nlptl sweep needs Optuna: pip install 'nlptl[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nlptl logs one line per trial itself
    return optuna


# --------------------------------------------------------------------------- the search space


def parse_space(space: str, options: dict, sets: list[str]) -> dict[str, tuple[str, tuple]]:
    """--space as {config key: (distribution, arguments)}: a string KEY=DIST;... or a YAML file of KEY: DIST."""
    if space.endswith((".yaml", ".yml")) or Path(space).is_file():
        items = [(str(k), v) for k, v in load_yaml(space, "--space").items()]
    else:
        items = [tuple(part.split("=", 1)) if "=" in part else (part, "") for part in space.split(";") if part.strip()]
    given = set(options) | {s.split("=", 1)[0].strip() for s in sets}
    out: dict[str, tuple[str, tuple]] = {}
    for raw, dist in items:
        key = ALIASES.get(raw.strip().lstrip("-").replace("-", "_"), raw.strip().lstrip("-").replace("-", "_"))
        if key not in FinetuneConfig.__dataclass_fields__:
            raise UsageError(f"--space: '{raw.strip()}' is not an option of finetune")
        if key in FIXED or key in option_keys("locates_run") or key in option_keys("reproduced", False):
            raise UsageError(f"--space: {raw.strip()} is fixed for a sweep (its trials are scored on one eval split, "
                             "each in its own OUT/trials/NNN)")
        if key in given:
            raise UsageError(f"--space searches {raw.strip()}, which the stage's options also set; drop one")
        if key in out:
            raise UsageError(f"--space names {raw.strip()} twice; give each option one distribution")
        out[key] = _distribution(raw.strip(), dist)
    if not out:
        raise UsageError("--space names nothing to search: e.g. \"lr=loguniform(1e-5,1e-3);batch_size=choice(16,32)\"")
    return out


def _distribution(key: str, dist: Any) -> tuple[str, tuple]:
    if isinstance(dist, list):  # YAML: a list is a choice
        return "choice", tuple(dist)
    match = DIST.match(str(dist))
    kinds = {"loguniform": 2, "uniform": 2, "int": 2, "choice": None}
    if not match or match[1] not in kinds:
        raise UsageError(f"--space {key}: '{dist}' is not a distribution; use loguniform(a,b), uniform(a,b), "
                         "int(a,b) or choice(v1,v2,...)")
    args = tuple(_value(a) for a in match[2].split(",") if a.strip())
    numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
    if kinds[match[1]] and (len(args) != 2 or not numbers or not args[0] < args[1]):
        raise UsageError(f"--space {key}: {match[1]} takes two numbers, low < high (got '{dist}')")
    if match[1] == "loguniform" and args[0] <= 0:
        raise UsageError(f"--space {key}: loguniform needs a positive low end (got '{dist}')")
    if match[1] == "int" and not all(isinstance(a, int) for a in args):
        raise UsageError(f"--space {key}: int takes two whole numbers (got '{dist}')")
    if not args:
        raise UsageError(f"--space {key}: choice needs at least one value")
    return match[1], args


def _value(text: str) -> int | float | bool | str:
    """A value of a distribution: a number where it reads as one (YAML would keep 1e-3 a string)."""
    text = text.strip().strip("'\"")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def distributions(optuna, space: dict[str, tuple[str, tuple]]) -> dict:
    d = optuna.distributions
    made = {"loguniform": lambda a: d.FloatDistribution(float(a[0]), float(a[1]), log=True),
            "uniform": lambda a: d.FloatDistribution(float(a[0]), float(a[1])),
            "int": lambda a: d.IntDistribution(a[0], a[1]),
            "choice": lambda a: d.CategoricalDistribution(a)}
    return {key: made[kind](args) for key, (kind, args) in space.items()}


def check_space(cfg: SweepConfig, space: dict[str, tuple[str, tuple]]) -> None:
    """Each end of a range and each choice makes a valid config: a wrong value fails now, not at trial 7."""
    for key, (kind, args) in space.items():
        values = args if kind in ("choice", "int") else (float(args[0]), float(args[1]))
        for value in values:
            trial_config(cfg, {key: value}, None)


def describe(space: dict[str, tuple[str, tuple]]) -> dict[str, str]:
    return {key: f"{kind}({', '.join(str(a) for a in args)})" for key, (kind, args) in space.items()}


# --------------------------------------------------------------------------- trials


def trial_config(cfg: SweepConfig, params: dict, out: Path | None) -> FinetuneConfig:
    """The stage's config of one trial: the sweep's options, the trial's values, its own --out."""
    flags = {**cfg.options, **params, "out": str(out) if out is not None else None}
    stage = resolve(FinetuneConfig, config_file=cfg.stage_config, flags=flags, sets=cfg.stage_sets)
    if stage.learning_curve:
        raise UsageError("sweep: a trial is one model; drop --n-labels, --seeds and --compare")
    if stage.resuming or stage.overwrite:
        raise UsageError("sweep decides where each trial goes (OUT/trials/NNN): drop --resume, --resume-from "
                         "and --overwrite")
    if stage.push_to_hub:
        raise UsageError("sweep: --push-to-hub would upload every trial; push the best one after the sweep")
    return stage


def selection(stage: FinetuneConfig) -> tuple[str, str]:
    """The score finetune keeps its best checkpoint by, and the study's direction."""
    from nlptl.data.registry import task_entry
    from nlptl.shapes import by_name

    score, mode = by_name(task_entry(stage.task).problem).select
    return score, "maximize" if mode == "max" else "minimize"


def command_of(cfg: FinetuneConfig, out: Path) -> list[str]:
    """`nlptl finetune ...` that builds this config (the model card's reproduce line), its paths absolute:
    the best trial's command is run again from anywhere."""
    from nlptl.card import reproduce_command

    def absolute(value):
        return str(Path(value).resolve()) if isinstance(value, str) and value and Path(value).exists() else value

    paths = {k: absolute(getattr(cfg, k)) for k in ("from_model", "train_file", "eval_file")}
    cfg = dataclasses.replace(cfg, **paths, compare=[absolute(m) for m in cfg.compare])
    return shlex.split(reproduce_command("finetune", to_dict(cfg), Path(out).resolve(), {}))


@dataclasses.dataclass
class Trial:
    """One trial in flight: an Optuna trial, its run directory and command; `proc` when in its own process."""

    trial: Any  # optuna.Trial
    out: Path
    command: list[str]
    proc: subprocess.Popen | None = None
    result: dict | None = None
    error: str | None = None


def launch(cfg: SweepConfig, study, dists: dict, out: Path) -> Trial:
    trial = study.ask(dists)
    where = out / TRIALS / f"{trial.number:03d}"
    stage = trial_config(cfg, trial.params, where)
    if not stage.from_model:  # every trial starts from the same model, even if a newer run appears meanwhile
        from nlptl.rundir import default_from

        stage = dataclasses.replace(stage, from_model=default_from("finetune"))
    command = command_of(stage, where)
    trial.set_user_attr("out", str(where))
    trial.set_user_attr("command", shlex.join(command))
    log.info("sweep: trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in trial.params.items()))
    running = Trial(trial, where, command)
    if cfg.parallel == 1:
        _in_process(running, stage)
    else:
        running.proc = _process(running, cfg.parallel)
    return running


def _in_process(running: Trial, stage: FinetuneConfig) -> None:
    from nlptl.stages import finetune

    try:
        running.result = finetune.run(stage, command=running.command[1:])
    except NlptlError as e:
        running.error = str(e)
    except Exception as e:  # one trial's failure (out of memory, a diverging run) does not end the sweep
        running.error = f"{type(e).__name__}: {e}"


def _process(running: Trial, parallel: int) -> subprocess.Popen:
    running.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # the cores shared among the trials, not each taking them all
        from nlptl.data.lm import usable_cores

        env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // parallel))
    base = running.out.with_suffix("")
    with open(f"{base}.json", "w") as stdout, open(f"{base}.log", "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "nlptl", *running.command[1:], "--json", "-q"],
                                stdout=stdout, stderr=stderr, env=env)


def finished(running: Trial) -> bool:
    """Whether the trial is over; for a process, its result (stdout) or its last line of error (stderr)."""
    if running.proc is None:
        return True
    if running.proc.poll() is None:
        return False
    base = running.out.with_suffix("")
    lines = Path(f"{base}.json").read_text().strip().splitlines()
    if running.proc.returncode == 0 and lines:
        running.result = json.loads(lines[-1])
    else:
        errors = Path(f"{base}.log").read_text(errors="replace").strip().splitlines()
        running.error = errors[-1] if errors else f"exit code {running.proc.returncode}"
    return True


def tell(study, running: Trial, score: str) -> None:
    from optuna.trial import TrialState

    number, value = running.trial.number, (running.result or {}).get(score)
    if running.error is None and value is None:
        running.error = f"the trial's result has no {score}"
    if running.error is not None:
        running.trial.set_user_attr("error", running.error)
        study.tell(running.trial, state=TrialState.FAIL)
        log.warning("sweep: trial %d failed: %s", number, running.error)
        return
    study.tell(running.trial, value)
    log.info("sweep: trial %d: %s %.4g (%s)", number, score, value, running.out)


def loop(cfg: SweepConfig, study, space: dict, out: Path, record) -> None:
    """Launch trials until the study has --trials finished ones, --parallel at a time; `record()` after each."""
    import optuna

    dists = distributions(optuna, space)
    score = study.user_attrs["score"]
    running: list[Trial] = []
    try:
        while True:
            while len(running) < cfg.parallel and len(done(study)) + len(running) < cfg.trials:
                running.append(launch(cfg, study, dists, out))
            over = [t for t in running if finished(t)]
            for t in over:
                tell(study, t, score)
                running.remove(t)
                record()
            if not running and len(done(study)) >= cfg.trials:
                return
            if not over:
                time.sleep(POLL_SECONDS)
    finally:
        for t in running:  # interrupted: the trials still in flight end with the sweep (a rerun reruns them)
            if t.proc is not None and t.proc.poll() is None:
                t.proc.terminate()
                t.proc.wait()


# --------------------------------------------------------------------------- the study and its record


def open_study(optuna, out: Path, direction: str, seed: int):
    """OUT/study.db, new or continued. The sampler is seeded by the stage's --seed and the trials so far: a
    continued sweep does not draw its first values again."""
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out.resolve() / STUDY}"
    study = optuna.create_study(study_name="sweep", storage=storage, direction=direction, load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    return study


def done(study) -> list:
    """The finished trials: complete, or failed by themselves (an interrupted trial has no `error`)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def requeue_interrupted(study) -> None:
    """Trials left running by a killed sweep (this one holds OUT's lock, so none still runs): failed, and
    their values queued to run again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
        log.warning("sweep: trial %d was interrupted; its values run again as a new trial", t.number)


def check_search(cfg: SweepConfig, out: Path, space: dict) -> dict:
    """What this sweep searches; an OUT holding another search (or something else) is refused."""
    search = {"stage": cfg.stage, "options": cfg.options, "stage_config": cfg.stage_config,
              "stage_sets": cfg.stage_sets, "space": describe(space)}
    record = out / RECORD
    if record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))["search"]
        differs = [k for k in search if json.dumps(before.get(k), sort_keys=True, default=str)
                   != json.dumps(search[k], sort_keys=True, default=str)]
        if differs:
            verb = "differs" if len(differs) == 1 else "differ"
            raise UsageError(f"--out {out} holds a sweep of another search ({', '.join(differs)} {verb}); rerun it "
                             "with the same stage options and --space, or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty and holds no sweep; choose another --out")
    return search


def write_summary(out: Path, study, search: dict, score: str, direction: str) -> dict:
    """OUT/sweep.json: the search, every trial, the best one and the command that reruns it."""
    rows = [{"trial": t.number, "state": _state(t), "params": t.params, "score": t.value,
             "out": t.user_attrs.get("out"), "command": t.user_attrs.get("command"),
             **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {})}
            for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "complete"]
    best = (max if direction == "maximize" else min)(complete, key=lambda r: r["score"]) if complete else None
    summary = {"sweep": str(out), "study": str(out / STUDY), "search": search, "score": score, "direction": direction,
               "n_finished": len(done(study)), "trials": rows, "best": best,
               "best_command": best_command(out, best) if best else None}
    tmp = out / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / RECORD)
    return summary


def _state(t) -> str:
    state = t.state.name.lower()
    return "interrupted" if state == "fail" and "error" not in t.user_attrs else state


def best_command(out: Path, best: dict) -> str:
    """The best trial's command, from its record, writing to OUT/best: run it to train that model again."""
    from nlptl.card import reproduce_command
    from nlptl.rundir import read_record

    record = read_record(Path(best["out"])) or {}
    if not record:
        return best["command"]
    return reproduce_command("finetune", record["config"], out / "best", record.get("lineage") or {})
