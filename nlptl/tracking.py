"""What a training run reports while it runs: `OUT/metrics.csv`, and the `--report-to` trackers
(TensorBoard, MLflow, Weights & Biases) through accelerate's tracking API, writing under `OUT/logs/`.

    nlptl adapt --corpus reviews --out runs/lm --report-to tensorboard,mlflow
    tensorboard --logdir runs/lm/logs                           # or --logdir runs: every run
    MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/lm/logs/mlruns

metrics.csv has one row per logged training step and one per evaluation, always with the columns
of `COLUMNS` (empty where a row has no value), so that scripts can rely on them, then every other
evaluation metric the stage logs (a regression's eval_pearson, a contrastive run's eval_pair_loss),
in the order they first come. It is rewritten from the run's history whenever training (re)starts,
so a resumed run never repeats a row.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

from nlptl.config import TRACKERS, report_targets
from nlptl.errors import UsageError

METRICS_FILE = "metrics.csv"
LOGS_DIR = "logs"
# Stable: the same columns for every stage (finetune leaves eval_perplexity empty, the LM stages the
# classification metrics). step = optimizer updates so far; lr = the rate --lr sets.
COLUMNS = ("step", "loss", "lr", "tokens_per_s", "eval_loss", "eval_perplexity", "eval_accuracy", "eval_f1_macro")
# The Python module that must be importable, and what to pip install for it.
PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "mlflow": (("mlflow",), "mlflow-skinny"),
            "wandb": (("wandb",), "wandb")}


def _installed(name: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in PACKAGES[name][0])


def trackers(report_to: str) -> list[str]:
    """--report-to as a list of installed trackers; a missing package is a usage error naming the pip
    command (accelerate would skip it silently and the user would find no logs)."""
    names = report_targets(report_to)
    if names == ["none"]:
        return []
    if names == ["all"]:
        found = [t for t in TRACKERS if _installed(t)]
        if not found:
            raise UsageError("--report-to all: no tracker is installed; pip install tensorboard mlflow-skinny "
                             "(or pip install 'nlptl[track]')")
        return found
    missing = [t for t in names if not _installed(t)]
    if missing:
        pip = " ".join(PACKAGES[t][1] for t in missing)
        raise UsageError(f"--report-to {','.join(missing)} needs the package: pip install {pip}"
                         + (" (or pip install 'nlptl[track]')" if "wandb" not in missing else ""))
    return names


def accelerator_args(report_to: str, out: Path | None) -> dict:
    """The Accelerator's tracking arguments for a stage writing to `out`."""
    names = trackers(report_to)
    if not names or out is None:
        return {}
    return {"log_with": names, "project_dir": str(Path(out) / LOGS_DIR)}


def columns_of(rows: list[dict]) -> list[str]:
    """`COLUMNS`, then the other evaluation metrics of `rows` in the order they first come (a fixed set
    would silently drop what a task shape or objective scores beyond accuracy and perplexity), and the
    head's own learning rate where it has one."""
    columns = list(COLUMNS)
    for row in rows:
        columns += [k for k, v in row.items() if (k.startswith("eval_") or k == "head_lr") and k not in columns
                    and isinstance(v, int | float) and not isinstance(v, bool)]
    return columns


def _tracker_key(key: str) -> str:
    # TensorBoard and W&B group "train/..." and "eval/..." into sections.
    return "eval/" + key[5:] if key.startswith("eval_") else "train/" + key


class RunLog:
    """The metrics of one stage run: kept in memory, appended to OUT/metrics.csv as they come, and sent
    to the accelerator's trackers. Use as a context manager: the trackers are closed at the end."""

    def __init__(self, accelerator, out: Path, stage: str, config: dict, resume: bool = False):
        self.accelerator, self.out, self.stage = accelerator, Path(out), stage
        self.rows: list[dict] = []
        self.columns = list(COLUMNS)  # those of the metrics.csv written so far
        self.main = accelerator.is_main_process
        self.tracking = bool(accelerator.log_with)
        self.created_out = not self.out.exists()
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        logs = self.out / LOGS_DIR
        if not resume and logs.exists():
            shutil.rmtree(logs)  # an earlier attempt's logs (--overwrite): this run starts them afresh
        self._rewrite()
        if self.tracking:
            self._start_trackers(config, logs, resume)

    def _start_trackers(self, config: dict, logs: Path, resume: bool) -> None:
        kwargs: dict = {}
        names = [str(t) for t in self.accelerator.log_with]
        if "mlflow" in names:
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                # MLflow's local default: a file store in the run directory. mlflow 3 wants an explicit
                # opt-in for it (mlflow-skinny has no database backend); MLFLOW_TRACKING_URI overrides.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                import mlflow

                mlflow.set_tracking_uri((logs / "mlruns").resolve().as_uri())
            run_id = logs / "mlflow-run-id"
            kwargs["mlflow"] = {"run_name": f"{self.stage} {self.out.name}"}
            if resume and run_id.is_file():  # continue the interrupted run's MLflow run, not a new one
                kwargs["mlflow"]["run_id"] = run_id.read_text().strip()
        if "wandb" in names:
            kwargs["wandb"] = {"name": f"{self.stage} {self.out.name}", "dir": str(logs)}
        logs.mkdir(parents=True, exist_ok=True)
        # Trackers take scalars and strings only: lists (--compare) and None become strings.
        flat = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.items()}
        self.accelerator.init_trackers("nlptl", config={"stage": self.stage, **flat}, init_kwargs=kwargs)
        if "mlflow" in names:
            tracker = self.accelerator.get_tracker("mlflow", unwrap=False)
            active = getattr(tracker, "active_run", None)
            if active is not None:
                (logs / "mlflow-run-id").write_text(active.info.run_id)

    def _rewrite(self) -> None:
        self.write(self.out)

    def restore(self, history: list[dict]) -> None:
        """A resumed run: the interrupted run's history replaces whatever the CSV holds past the checkpoint
        (rows logged after its last checkpoint would otherwise appear twice)."""
        self.rows = self.rows + list(history)
        if self.main:
            self._rewrite()

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if not self.main:
            return
        if any(k not in self.columns for k in columns_of([row])):
            self._rewrite()  # a metric new to this run: the header grows, so the file is written anew
        else:
            with open(self.out / METRICS_FILE, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.tracking:
            values = {_tracker_key(k): v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
            self.accelerator.log(values, step=row["step"])

    def write(self, directory: Path) -> None:
        """The complete metrics.csv, into the stage directory being written."""
        self.columns = columns_of(self.rows)
        with open(Path(directory) / METRICS_FILE, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            # Rows that are notes (a resume's changed options) have no metric column to fill.
            writer.writerows(r for r in self.rows if any(k in r for k in self.columns if k != "step"))

    def close(self) -> None:
        if self.tracking:
            self.accelerator.end_training()
            self.tracking = False

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        from nlptl.errors import Interrupted

        if exc_type is None or not self.main or issubclass(exc_type, Interrupted):
            return
        # A failed run leaves nothing half-written: the live metrics.csv and tracker logs go, unless a
        # checkpoint makes the directory a resumable run (--resume rewrites them from its history).
        checkpoints = self.out / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            return
        (self.out / METRICS_FILE).unlink(missing_ok=True)
        if self.created_out:
            shutil.rmtree(self.out, ignore_errors=True)
