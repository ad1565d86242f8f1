"""What a run is and how it got there: lineage, the metrics of every stage of its chain, and plots.

    nlptl report runs/sentiment                  # tables on stdout, PNGs into runs/sentiment/report/
    nlptl report runs/sentiment --json           # the same as one JSON object

The chain is followed through each stage's base model while it is an nlptl run directory (a finetune
run -> its adapt run -> its pretrain run); a parent that was moved or deleted is still named from
the lineage its child recorded, without metrics or curves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nlptl.card import data_sources, general_model
from nlptl.config import ReportConfig
from nlptl.errors import UsageError
from nlptl.rundir import read_record, record_problem
from nlptl.shapes import BY_PROBLEM_TYPE, SHAPES
from nlptl.tracking import METRICS_FILE

log = logging.getLogger("nlptl")
REPORT_DIR = "report"
SWEEP_RECORD = "sweep.json"  # nlptl/stages/sweep.py: the search, its trials and the best trial's command


def chain_of(run_dir: Path) -> list[dict]:
    """The runs of the chain, oldest first: {stage, dir, record or None, lineage}."""
    record = read_record(run_dir)
    if record is None and record_problem(run_dir):
        raise UsageError(f"{run_dir}: its {record_problem(run_dir)}; restore it from a copy of the run")
    if record is None:
        raise UsageError(f"{run_dir} is not a completed nlptl run (no nlptl-run.json); pass a run directory")
    chain, seen = [], set()
    node_dir: Path | None = run_dir.resolve()
    lineage: dict | None = record.get("lineage") or {}
    while lineage:
        rec = read_record(node_dir) if node_dir is not None else None
        chain.append({"stage": lineage.get("stage", "?"), "dir": str(node_dir) if rec else None,
                      "record": rec, "lineage": lineage})
        if node_dir is not None:
            seen.add(node_dir)
        base = lineage.get("base_model")
        parent_dir = Path(base) if base and Path(base).is_dir() else None
        node_dir = parent_dir.resolve() if parent_dir is not None and parent_dir.resolve() not in seen else None
        if lineage.get("parent"):
            lineage = lineage["parent"]
        elif node_dir is not None and read_record(node_dir) is not None:
            lineage = read_record(node_dir).get("lineage")
        else:
            break
    chain.reverse()
    return chain


def run(cfg: ReportConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{cfg.run_dir}: no such run directory")
    if (run_dir / SWEEP_RECORD).is_file() and read_record(run_dir) is None:  # `nlptl sweep`'s directory
        return json.loads((run_dir / SWEEP_RECORD).read_text(encoding="utf-8"))
    chain = chain_of(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    plots = _plots(chain, run_dir, out)
    lineage = read_record(run_dir)["lineage"]
    stages = []
    for i, node in enumerate(chain):
        lin = node["lineage"]
        rec = node["record"] or {}
        stages.append({
            "index": i + 1, "stage": node["stage"], "dir": node["dir"], "created": rec.get("created"),
            "base_model": lin.get("base_model") or (f"scratch ({lin.get('arch')}, {lin.get('size')})"
                                                     if lin.get("source") == "scratch" else None),
            "objective": lin.get("objective") or (f"classification ({lin.get('task')})"
                                                  if node["stage"] == "finetune" else None),
            "data": [s for s in data_sources({k: v for k, v in lin.items() if k != "parent"})],
            "metrics": {k: v for k, v in (rec.get("metrics") or {}).items()},
            "command": rec.get("command"),
        })
    return {"run_dir": str(run_dir), "general_model": general_model(lineage), "stages": stages,
            "plots": [str(p) for p in plots], "report_dir": str(out),
            "lineage": {k: v for k, v in lineage.items()}}


# --------------------------------------------------------------------------- plots


def _plots(chain: list[dict], run_dir: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for i, node in enumerate(chain):
        history = _rows(node)
        if any("loss" in r for r in history):
            path = out / f"{i + 1}-{node['stage']}-training.png"
            _training_plot(plt, node, history, path)
            paths.append(path)
    for i, node in enumerate(chain):
        confusion = ((node["record"] or {}).get("metrics") or {}).get("confusion_matrix")
        if confusion:
            path = out / f"{i + 1}-{node['stage']}-confusion_matrix.png"
            _confusion_plot(plt, confusion, node, path)
            paths.append(path)
    lm = [(i, n) for i, n in enumerate(chain)
          if (n["record"] or {}).get("metrics", {}).get("perplexity_before") is not None]
    if lm:
        path = out / "perplexity.png"
        _perplexity_plot(plt, lm, path)
        paths.append(path)
    curve = run_dir / "learning_curve.json"
    if curve.is_file():
        from nlptl.stages.curve import plot

        path = out / "learning_curve.png"
        summary = json.loads(curve.read_text(encoding="utf-8"))["summary"]
        metric = next((k for k in ("accuracy", "f1_micro", "rmse") if summary and f"{k}_mean" in summary[0]),
                      "accuracy")
        plot(summary, path, (read_record(run_dir).get("lineage") or {}).get("task", ""), metric)
        paths.append(path)
    for i, node in enumerate(chain):
        found = Path(node["dir"]) / "lr_find.json" if node["dir"] else None
        if found is not None and found.is_file():
            path = out / f"{i + 1}-{node['stage']}-lr_find.png"
            _lr_find_plot(plt, json.loads(found.read_text(encoding="utf-8")), path)
            paths.append(path)
    return paths


def _confusion_plot(plt, confusion: dict, node: dict, path: Path) -> None:
    """The kept checkpoint's confusion matrix on the eval data (counts, shaded by the share of each true
    class); multi-label: one 2x2 matrix per label."""
    import numpy as np

    names, matrix = confusion["labels"], np.array(confusion["matrix"])
    pairs = matrix.ndim == 3  # multi-label: [[TN, FP], [FN, TP]] per label
    if pairs:
        panels = [(f"{n}", m, ["not", "is"]) for n, m in zip(names, matrix, strict=True)]
    else:
        panels = [("", matrix, names)]
    size = 2.6 if pairs else max(4.5, 0.6 * len(names) + 2.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.6), dpi=110, squeeze=False)
    for ax, (title, m, ticks) in zip(axes[0], panels, strict=True):
        shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (r, c), count in np.ndenumerate(m):
            ax.text(c, r, str(count), ha="center", va="center", fontsize=8,
                    color="white" if shares[r, c] > 0.5 else "black")
        slanted = len(ticks) > 4  # long label names side by side would overlap
        ax.set_xticks(range(len(ticks)), ticks, rotation=45 if slanted else 0, ha="right" if slanted else "center",
                      fontsize=8)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    name = Path(node["dir"]).name if node["dir"] else "?"
    fig.suptitle(f"{node['stage']} ({name}): confusion matrix\nof the kept checkpoint on the eval data (rows: true)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _lr_find_plot(plt, record: dict, path: Path) -> None:
    """The learning-rate range test of --lr auto: loss against the rate (log scale), and the rate chosen."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot(record["lrs"], record["losses"], color="lightgrey", label="loss per step")
    ax.plot(record["lrs"], record["smoothed"], label="smoothed loss")
    # The rate trained with: the rule's, or lower where it was capped for a pretrained body or retried
    # after a one-class start (stages/classifier.py).
    from nlptl.lr_find import found_before_lowered

    found = found_before_lowered(record)
    how = record["rule"] if found is None else f"{record['rule']} found {found:.2g}, then lowered"
    ax.axvline(record["lr"], color="tab:red", ls="--", label=f"chosen ({how}): {record['lr']:.2g}")
    for rule, lr in record.get("suggestions", {}).items():
        if rule != record["rule"]:
            ax.axvline(lr, color="grey", ls=":", alpha=0.6)
    ax.set_xscale("log")
    low, high = min(record["smoothed"]), max(record["smoothed"][:1] + [min(record["smoothed"]) * 4])
    ax.set_ylim(low - 0.1 * (high - low), high)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test (--lr auto)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rows(node: dict) -> list[dict]:
    """The run's metrics.csv (it also holds the LM stages' held-out loss before and after training),
    else the history in its record (runs made before metrics.csv existed)."""
    import csv

    path = Path(node["dir"]) / METRICS_FILE if node["dir"] else None
    if path is not None and path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: float(v) if k != "step" else int(v) for k, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(f)]
    return (node["record"] or {}).get("history") or []


# The loss each stage minimises, by what it trained: the y label of its loss panel (short: it is
# written along a panel 2.4 inches high). A classifier's is its task shape's (shapes.py loss_name).
LOSS_NAMES = {"cosine": "cosine pair loss (MSE)", "contrastive": "contrastive pair loss",
              None: "cross-entropy loss (nats)"}


def loss_axis(node: dict) -> tuple[str, str]:
    """(the name of the loss the stage minimised, the key of its held-out value in the history): a pair
    loss for a contrastive run, by the head's problem_type for a classifier, token cross-entropy for
    the LM stages."""
    config = (node["record"] or {}).get("config") or {}
    if config.get("objective") == "contrastive":
        return LOSS_NAMES[config.get("pair_loss", "cosine")], "eval_pair_loss"
    model_config = Path(node["dir"]) / "config.json" if node["dir"] else None
    problem = (json.loads(model_config.read_text(encoding="utf-8")).get("problem_type")
               if model_config is not None and model_config.is_file() else None)
    if problem in BY_PROBLEM_TYPE:
        return BY_PROBLEM_TYPE[problem].loss_name, "eval_loss"
    return LOSS_NAMES[None], "eval_loss"


def _training_plot(plt, node: dict, history: list[dict], path: Path) -> None:
    """Training loss (with evaluation loss), learning rate and, for a classifier, accuracy, against steps."""
    loss_name, eval_key = loss_axis(node)
    train = [r for r in history if "loss" in r]
    evals = [r for r in history if eval_key in r]
    # The scores of the classifier's task shape (shapes.py plot_scores), found by the first one it logged;
    # adapt --probe: the frozen-feature probe beside the held-out loss.
    panels = [(s.plot_scores, s.score_floor) for s in SHAPES.values()]
    panels.append(((("probe_accuracy", "probe accuracy (frozen features)"),), 0.0))
    scores, floor = next((([(k, n) for k, n in pair if any(f"eval_{k}" in r for r in evals)], floor)
                          for pair, floor in panels if any(f"eval_{pair[0][0]}" in r for r in evals)), ([], 0.0))
    classify = bool(scores)
    n = 3 if classify else 2
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.4 * n + 0.6), dpi=110, sharex=True)
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker=".",
            label="training loss (mean since last log)")
    if evals:
        ax.plot([r["step"] for r in evals], [r[eval_key] for r in evals], "o--",
                label="held-out loss" if node["stage"] != "finetune" else "evaluation loss")
    metrics = (node["record"] or {}).get("metrics") or {}
    if metrics.get("stopped_early"):  # --patience ended the run here
        step = metrics["stopped_at_step"]
        ax.axvline(step, color="tab:red", ls="--", label=f"early stop (step {step})")
    ax.set_ylabel(loss_name)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green", marker=".",
            label="learning rate (--lr)")
    if any(r.get("head_lr") is not None for r in train):
        ax.plot([r["step"] for r in train], [r.get("head_lr") for r in train], color="tab:olive", marker=".",
                label="head's learning rate (--head-lr)")
        ax.set_yscale("log")  # a head at 1e-2 beside a body at 1e-5
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    if classify:
        ax = axes[2]
        for (key, label), marker in zip(scores, "os", strict=False):
            rows = [r for r in evals if f"eval_{key}" in r]
            ax.plot([r["step"] for r in rows], [r[f"eval_{key}"] for r in rows], f"{marker}-", label=label)
        best = (node["record"] or {}).get("metrics", {}).get("best_step")
        if best is not None:
            ax.axvline(best, color="grey", ls=":", label=f"kept checkpoint (step {best})")
        ax.set_ylabel("score on eval data")
        ax.set_ylim(floor * 1.02, 1.02)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    name = Path(node["dir"]).name if node["dir"] else "?"
    fig.suptitle(f"{node['stage']} ({name}): training curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _perplexity_plot(plt, lm: list[tuple[int, dict]], path: Path) -> None:
    """Held-out perplexity before and after each language-modelling stage (log scale)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    width = 0.38
    for j, (key, label, color) in enumerate((("perplexity_before", "before training", "tab:grey"),
                                             ("perplexity", "after training", "tab:blue"))):
        xs = [k + (j - 0.5) * width for k in range(len(lm))]
        ys = [n["record"]["metrics"][key] for _, n in lm]
        bars = ax.bar(xs, ys, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(lm)), [f"{i + 1}. {n['stage']}\n({Path(n['dir']).name})" for i, n in lm], fontsize=8)
    values = [n["record"]["metrics"][k] for _, n in lm for k in ("perplexity_before", "perplexity")]
    if max(values) / max(min(values), 1e-9) > 20:  # a model from scratch next to an adapted one: orders apart
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("held-out perplexity (log scale; lower is better)")
    else:
        ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_xlabel("stage (run directory)")
    ax.set_title("Perplexity before and after each language-model stage")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
