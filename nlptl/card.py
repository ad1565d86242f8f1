"""The model card of a stage directory: README.md in the Hugging Face format (YAML metadata + text),
built from the run's record with huggingface_hub's ModelCard, so that the hub (and `nlptl report`)
can read what the model is, what data it saw (with hashes), how it was trained and how to rebuild it.

As SetFit does it: the record gives a CardData (card_data), whose fields fill a Markdown template
shipped in the package (templates/model_card.md: the card's words and layout).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from nlptl.config import ADAPT_OBJECTIVES, not_read_by, option_keys

CARD_FILE = "README.md"
PIPELINE = {"clm": "text-generation", "mlm": "fill-mask"}
# Keys that change nothing in the model: not part of the command that rebuilds it (reproduced=False on
# the config field).
NOT_REPRODUCED = option_keys("reproduced", False)
# Options an objective does not read (the card's hyperparameters name only what the run used): the
# fields whose read_by names other objectives.
UNUSED = {objective: not_read_by(objective) for objective in ADAPT_OBJECTIVES if objective != "auto"}


def is_hub_id(value: str | None) -> bool:
    return bool(value) and not Path(value).is_absolute() and not Path(value).exists() and value.count("/") <= 1


def data_sources(lineage: dict) -> list[dict]:
    """Every dataset of the chain, oldest first: role, name or path, sha256 (of the content), hub id."""
    out: list[dict] = []
    node: dict | None = lineage
    chain = []
    while node:
        chain.append(node)
        node = node.get("parent")
    for node in reversed(chain):
        for role in ("corpus", "train", "eval", "probe"):
            src = node.get(role)
            if not isinstance(src, dict) or "spec" not in src:
                continue
            name = {"corpus": "corpus", "train": "training data", "eval": "evaluation data",
                    "probe": "probe (checkpoint selection)"}[role]
            out.append({"stage": node.get("stage"), "role": name, "name": src.get("name") or src["spec"],
                        "files": src.get("files") or [], "sha256": src.get("sha256"), "hub": src.get("hub")})
    return out


def general_model(lineage: dict) -> str:
    """Where the chain started: the checkpoint the first stage took, or 'trained from scratch'."""
    node = lineage
    while node.get("parent"):
        node = node["parent"]
    if node.get("source") == "scratch":
        return f"trained from scratch ({node.get('arch')}, {node.get('size')}) by nlptl pretrain"
    return node.get("base_model", "?")


def reproduce_command(stage: str, config: dict, out: Path, lineage: dict) -> str:
    """`nlptl STAGE ...` with every setting that differs from the default, as flags (or --set key=value
    for the keys without one): run it and the same model comes out (the data files must be the same,
    which their sha256 in the card lets one check)."""
    from nlptl.config import STAGE_CONFIGS, flags

    defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                for f in fields(STAGE_CONFIGS[stage])}
    options = flags(stage)
    values = dict(config)
    if not values.get("from_model") and lineage.get("base_model") and stage != "pretrain":
        values["from_model"] = lineage["base_model"]  # the run it defaulted to (the latest one)
    values["out"] = str(out)
    args = ["nlptl", stage]
    first = ("from_model", "corpus", "task", "arch", "size", "train_file", "eval_file", "out")
    for key, value in sorted(values.items(), key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first)):
        if key not in NOT_REPRODUCED and key in defaults and value != defaults[key]:
            args += _as_flags(options.get(key), key, value)
    return shlex.join(args)


def _as_flags(flag, key: str, value) -> list[str]:
    """One setting on the command line: its flag (repeated for a list), or --set key=value without one."""
    if flag is None:
        return ["--set", f"{key}={'null' if value is None else value}"]
    if flag.kind == "bool":
        return [flag.names[0]] if value else [flag.negative] if flag.negative else []
    if isinstance(value, list):
        return [a for v in value for a in (flag.names[0], str(v))]
    return [] if value is None else [flag.names[0], str(value)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# A finetune run's scores as the hub's model-index names them: (metric key, metric type, config).
CARD_METRICS = [("accuracy", "accuracy", None), ("f1_macro", "f1", "macro"), ("f1_micro", "f1", "micro"),
                ("subset_accuracy", "accuracy", "subset"), ("rmse", "rmse", None), ("mae", "mae", None),
                ("pearson", "pearsonr", None), ("spearman", "spearmanr", None)]
# The card's words and layout: a Jinja template filled with a CardData (as SetFit's model_card_template.md).
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"


@dataclass
class CardData:
    """What a model card says, drawn from a run's record (nlptl-run.json): the fields of
    templates/model_card.md. `kind` picks the card's words: a classifier (finetune), a sentence
    encoder (contrastive adapt) or a language model."""

    metadata: str  # the YAML header: huggingface_hub's ModelCardData
    name: str  # the run directory's name
    out: str  # where the run directory ends up
    stage: str
    objective: str | None
    kind: str  # "classifier", "encoder" or "lm"
    base_model: str | None
    general_model: str
    steps: Any
    tokens_seen: Any
    kept_step: int | None  # the step whose weights were kept (--probe or --patience), if not the last
    kept_by: str
    sources: list[dict]  # data_sources()
    hyperparameters: dict  # the config the card shows: set, reproduced and read by the objective
    choices: dict  # the options left to nlptl: {name: {value, why}} (nlptl/handoff.py)
    results: dict  # the numeric metrics
    learning_curve: bool
    pair_loss: str  # a contrastive run's pair loss
    probed: bool  # an adapt run scored by --probe
    per_class: list[dict]
    stopped_early: dict | None  # {step, why} of --patience
    reproduce: str
    command: str | None  # as it was typed
    lineage_json: str
    pooling: str | None  # how the body's features are pooled (a classifier's, an encoder's)
    # A classifier's facts (empty for the others).
    task: str | None = None
    problem_type: str = ""
    scores: str = ""  # its scores, in words (the task shape's)
    labels: list[str] = field(default_factory=list)
    text_pair: bool = False
    max_length: int | None = None
    window: int | None = None
    stride: int | None = None
    doc_pooling: str | None = None
    threshold: float | None = None
    threshold_decides: bool = False  # the shape answers with every label over the threshold
    pipeline_args: list[str] = field(default_factory=list)  # transformers' pipeline(), as the usage calls it
    unmerged: bool = False  # a LoRA run whose adapter is not merged (no config.json)


def card_data(record: dict, directory: Path, out: Path) -> CardData:
    """The CardData of a stage record; `directory` holds the files (the staging directory while a stage
    is written), `out` is where they end up."""
    stage, config, metrics, lineage = record["stage"], record["config"], record.get("metrics") or {}, record["lineage"]
    objective = lineage.get("objective") or ("classification" if stage == "finetune" else None)
    sources = data_sources(lineage)
    command = reproduce_command(stage, config, out, lineage)
    unused = NOT_REPRODUCED + UNUSED.get(objective, ())
    kind = "classifier" if stage == "finetune" else "encoder" if objective == "contrastive" else "lm"
    data = CardData(
        metadata=metadata(record, objective, sources, command, out).to_yaml(),
        name=out.name,
        out=str(out),
        stage=stage,
        objective=objective,
        kind=kind,
        base_model=lineage.get("base_model"),
        general_model=general_model(lineage),
        steps=lineage.get("steps", metrics.get("steps")),
        tokens_seen=lineage.get("tokens_seen", "?"),
        kept_step=lineage.get("kept_step"),
        # adapt --probe (unless the probe was at chance), else --patience; older runs recorded no kept_by
        kept_by=lineage.get("kept_by") or ("probe" if lineage.get("probe") else "held-out perplexity"),
        sources=sources,
        hyperparameters={k: v for k, v in config.items() if v not in (None, [], "") and k not in unused},
        choices=lineage.get("choices") or {},
        results={k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        learning_curve=bool(metrics.get("learning_curve")),
        pair_loss=config.get("pair_loss", "cosine"),
        probed="probe_accuracy" in metrics,
        per_class=metrics.get("per_class") or [],
        stopped_early=({"step": metrics["stopped_at_step"], "why": metrics["early_stop"]}
                       if metrics.get("stopped_early") else None),
        reproduce=command,
        command=record.get("command"),
        lineage_json=json.dumps(lineage, indent=2, default=str),
        pooling=lineage.get("pooling"),
    )
    if kind == "classifier":
        classifier_facts(data, lineage, directory)
    return data


def classifier_facts(data: CardData, lineage: dict, directory: Path) -> None:
    """A finetune run's task, labels and input, and how transformers' pipeline() calls it."""
    from nlptl.shapes import of_problem

    shape = of_problem(lineage.get("problem_type"))
    data.task = lineage.get("task")
    data.problem_type = lineage.get("problem_type") or "single_label_classification"
    data.labels = lineage.get("labels") or []
    data.text_pair = lineage.get("text_pair")
    data.max_length = lineage.get("max_length")
    data.window = lineage.get("window")
    data.stride = lineage.get("stride")
    data.doc_pooling = lineage.get("doc_pooling")
    data.threshold = lineage.get("threshold")
    data.threshold_decides = shape.threshold
    data.scores = shape.card_scores[0].upper() + shape.card_scores[1:]
    remote = (Path(directory) / "modeling_nlptl.py").exists()  # the heads nlptl copies in: trust_remote_code
    data.pipeline_args = [f'model="{data.name}"', *(["trust_remote_code=True"] if remote else []), *shape.pipeline_args]
    data.unmerged = not (Path(directory) / "config.json").is_file()


def metadata(record: dict, objective, sources: list[dict], command: str, out: Path):
    """The card's YAML header (huggingface_hub's ModelCardData): what the hub indexes, and nlptl's record."""
    from huggingface_hub import EvalResult, ModelCardData

    stage, metrics, lineage = record["stage"], record.get("metrics") or {}, record["lineage"]
    base = lineage.get("base_model")
    hub_data = sorted({s["hub"] for s in sources if s.get("hub")})
    eval_results, metric_names = [], []
    card_metrics = [(k, name, conf) for k, name, conf in CARD_METRICS if metrics.get(k) is not None]
    if stage == "finetune" and card_metrics:
        ev = lineage.get("eval") or {}
        dataset = ev.get("name") or ev.get("spec") or \
            f"held-out slice of {(lineage.get('train') or {}).get('spec', '--train')}"
        for key, name, conf in card_metrics:
            eval_results.append(EvalResult(task_type="text-classification", dataset_type=ev.get("hub") or "local",
                                           dataset_name=str(dataset), dataset_split="validation",
                                           metric_type=name, metric_value=metrics[key], metric_config=conf))
        metric_names = list(dict.fromkeys(name for _, name, _ in card_metrics))
    elif metrics.get("perplexity") is not None:
        corpus = lineage.get("corpus") or {}
        eval_results.append(EvalResult(task_type=PIPELINE.get(objective, "text-generation"),
                                       dataset_type=corpus.get("hub") or "local",
                                       dataset_name=f"held-out blocks of {corpus.get('name') or corpus.get('spec')}",
                                       metric_type="perplexity", metric_value=metrics["perplexity"]))
        metric_names = ["perplexity"]
    encoder = objective == "contrastive"  # a sentence encoder: it carries sentence-transformers' pooling files
    return ModelCardData(
        library_name="sentence-transformers" if encoder else "transformers",
        pipeline_tag="text-classification" if stage == "finetune" else
        "sentence-similarity" if encoder else PIPELINE.get(objective),
        tags=["nlptl", "ulmfit", "transfer-learning", stage] + ([objective] if objective in PIPELINE else []),
        # The hub only accepts hub ids here; a local base model is named in the text and under `nlptl`.
        base_model=base if is_hub_id(base) else None,
        datasets=hub_data or None,
        metrics=metric_names or None,
        model_name=out.name if eval_results else None,
        eval_results=eval_results or None,
        nlptl={"version": record.get("nlptl_version"), "stage": stage, "objective": objective,
               "base_model": base, "general_model": general_model(lineage),
               "data": [{k: s[k] for k in ("stage", "role", "name", "sha256")} for s in sources],
               "reproduce": command},
    )


def build(record: dict, directory: Path, out: Path):
    """The huggingface_hub ModelCard of a stage record: templates/model_card.md filled with its CardData."""
    import jinja2  # a dependency of torch (and what huggingface_hub's ModelCard.from_template uses)
    from huggingface_hub import ModelCard

    data = card_data(record, directory, out)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=_fmt, quote=shlex.quote)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return ModelCard(template.render({f.name: getattr(data, f.name) for f in fields(data)}))


def write(directory: Path, record: dict, out: Path) -> None:
    build(record, directory, out).save(Path(directory) / CARD_FILE)
