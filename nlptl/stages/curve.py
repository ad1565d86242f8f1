"""The learning-curve mode of `nlptl finetune`: accuracy against the number of labels, over seeds, for
one or more models.

    nlptl finetune --from runs/adapt-... --compare runs/pretrain-... --task sentiment \
        --train train.csv --eval dev.csv --n-labels 100,500,1000,all --seeds 3

ULMFiT's famous figure (with vs without the adapt stage) is this comparison. Each point trains a new
classifier on a stratified subset of the training labels, fixed by the seed (the same subsets for
every model), and is scored on --eval. Writes learning_curve.{json,csv,png} into --out; the models
themselves are not kept.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import statistics
from pathlib import Path

from nlptl.config import to_dict
from nlptl.data.task_data import prepare
from nlptl.errors import UsageError
from nlptl.stages.classifier import choose_rates, fit
from nlptl.stages.common import Run, start, write_stage

log = logging.getLogger("nlptl")


def stratified_subset(ds, n: int | None, names: list[str], seed: int, stratify: bool = True):
    """`n` examples with the label proportions of `ds` (single-label tasks; a seeded sample otherwise),
    chosen by `seed` (all of them for None)."""
    import datasets

    if n is None or n >= len(ds):
        return ds
    if not stratify:
        return ds.shuffle(seed=seed).select(range(n))
    if n < len(names):
        raise UsageError(f"--n-labels {n} is smaller than the number of labels ({len(names)})")
    ds = ds.cast_column("labels", datasets.ClassLabel(names=names))
    try:
        return ds.train_test_split(train_size=n, seed=seed, stratify_by_column="labels")["train"]
    except ValueError:  # a class too rare to stratify
        return ds.shuffle(seed=seed).select(range(n))


def model_name(ref) -> str:
    return Path(ref.path).name if ref.local else ref.spec


def learning_curve(run: Run, refs: list, spec) -> dict:
    from nlptl import console, handoff
    from nlptl.rundir import lineage_of
    from nlptl.runtime import seed_everything

    cfg, out = run.cfg, run.out
    counts = cfg.label_counts() or [None]
    accelerator = start(cfg)
    names = [model_name(r) for r in refs]
    if len(set(names)) < len(names):
        names = [r.spec for r in refs]
    runs: list[dict] = []
    for ref, name in zip(refs, names, strict=True):
        data = prepare(cfg, ref, spec, accelerator)
        keys = data.task_shape.curve
        # Each model its own rates (one may be a contrastive run). --lr auto: one range test per model, on
        # its whole training split: the points' subsets are too small (and too many) to each get their own.
        model_cfg, _, choice = choose_rates(cfg, ref, data, accelerator, None)
        handoff.announce(choice)
        for n in points(counts, len(data.train)):
            for k in range(cfg.seeds):
                seed = cfg.seed + k
                subset = stratified_subset(data.train, n, data.names, seed,
                                           stratify=data.task_shape.one_label)
                run_cfg = dataclasses.replace(model_cfg, seed=seed)
                seed_everything(seed)
                log.info("learning curve: %s, %d labels, seed %d", name, len(subset), seed)
                _, result, best = fit(run_cfg, ref, data, subset, accelerator, by_class=False, calibrate=False)
                runs.append({"model": name, "n_labels": "all" if n is None else n, "n_train": len(subset), "seed": seed,
                             **{k: best[k] for k in keys}, "loss": best["loss"], "lr": run_cfg.lr,
                             "steps": result.steps, "train_seconds": round(result.train_seconds, 3)})
    found = {r["model"]: r["lr"] for r in runs} if cfg.lr == "auto" else {}  # each model's range test's rate
    summary = summarize(runs, keys)
    plans = label_budget(runs, names, keys[0])
    config = to_dict(cfg)
    lineage = lineage_of("finetune", refs[0], mode="learning-curve", models=[r.spec for r in refs], task=cfg.task,
                         train=spec.train.record(), n_labels=[r["n_labels"] for r in summary],
                         **({"lr": {"auto": found}} if found else {}))
    result = {"learning_curve": summary, "runs": runs, "label_budget": plans, "n_eval": len(data.eval),
              "output_dir": str(out),
              "plot": str(out / "learning_curve.png"), "config": config, "lineage": lineage}

    def write(w) -> dict:
        (w.path / "learning_curve.json").write_text(json.dumps({"summary": summary, "runs": runs,
                                                                "label_budget": plans}, indent=2))
        with open(w.path / "learning_curve.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(runs[0]))
            writer.writeheader()
            writer.writerows(runs)
        plot(summary, w.path / "learning_curve.png", cfg.task, keys[0])
        return {}

    # No model is kept, so nothing to upload: a learning curve refuses --push-to-hub (config.py).
    write_stage(run, metrics=result, lineage=lineage, write=write, accelerator=accelerator,
                recorded={"learning_curve": summary})
    console.table(f"learning curve on --eval ({len(data.eval)} examples), mean ± std over {cfg.seeds} seed(s)",
                  ["model", "labels", *keys],
                  [[r["model"], r["n_train"], *(f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}" for k in keys)]
                   for r in summary])
    return result


def label_budget(runs: list[dict], names: list[str], metric: str) -> dict:
    """What more labels are expected to buy, per model (nlptl/budget.py), each plan logged in one line."""
    from nlptl import budget

    plans = {}
    for name in names:
        if metric in budget.GROWING:
            plans[name] = budget.plan([r for r in runs if r["model"] == name], metric)
        else:  # regression's curve is RMSE, which falls as labels grow
            grows = ", ".join(budget.GROWING)
            plans[name] = {"ok": False, "why": f"the planner fits scores that grow with labels ({grows}); "
                                              f"this curve's is {metric}"}
        log.info("%s", budget.sentence(name, plans[name]))
    return plans


def points(counts: list[int | None], available: int) -> list[int | None]:
    """The curve's label counts for a training set of `available` examples: a count past it is all of them
    and is labelled with the count used (the plot, the CSV and the record say what was trained on); a
    point that repeats another is dropped. None: all (--n-labels all)."""
    out: list[int | None] = []
    asked: dict[int | None, int | None] = {}
    for n in counts:
        used = n if n is None else min(n, available)
        if used in asked:
            log.warning("--n-labels %s: only %d training examples, as for --n-labels %s; one point", n, available,
                        asked[used])
            continue
        if n is not None and n > available:
            log.warning("--n-labels %d: only %d training examples; using all %d", n, available, available)
        asked[used] = n
        out.append(used)
    return out


def summarize(runs: list[dict], keys: tuple[str, ...] = ("accuracy", "f1_macro")) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["n_labels"]), []).append(r)
    out = []
    for (model, n), rs in groups.items():
        row = {"model": model, "n_labels": n, "n_train": rs[0]["n_train"], "seeds": len(rs)}
        for key in keys:
            values = [r[key] for r in rs]
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def plot(summary: list[dict], path: Path, task: str, metric: str = "accuracy") -> None:
    """`metric` against the number of labels (log scale), one line per model, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for model in dict.fromkeys(r["model"] for r in summary):
        rows = sorted((r for r in summary if r["model"] == model), key=lambda r: r["n_train"])
        ax.errorbar([r["n_train"] for r in rows], [r[f"{metric}_mean"] for r in rows],
                    yerr=[r[f"{metric}_std"] for r in rows], marker="o", capsize=3, label=model)
    ax.set_xscale("log")
    ticks = sorted({r["n_train"] for r in summary})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples (log scale)")
    ax.set_ylabel(f"{metric.replace('_', '-')} on the evaluation set")
    ax.set_title(f"Learning curve: {task}")
    ax.grid(True, alpha=0.3)
    ax.legend(title="model", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
