"""The model card of a stage directory: README.md in the Hugging Face format (YAML metadata + text),
built from the run's record with huggingface_hub's ModelCard, so that the hub (and `nlptl report`)
can read what the model is, what data it saw (with hashes), how it was trained and how to rebuild it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

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

    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(STAGE_CONFIGS[stage])}
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
def usage(lineage: dict, name: str, remote: bool) -> list[str]:
    """How to call a finetune run with transformers, for its task shape."""
    from nlptl.shapes import of_problem

    shape = of_problem(lineage.get("problem_type"))
    args = [f'model="{name}"'] + (["trust_remote_code=True"] if remote else []) + list(shape.pipeline_args)
    lines = ["```python", "from transformers import pipeline", "", f'clf = pipeline("text-classification", {", ".join(args)})']
    if lineage.get("text_pair"):
        lines.append('clf({"text": "A man is sleeping.", "text_pair": "Somebody rests."})')
    else:
        lines.append('clf("A text to classify")')
    if shape.threshold:
        lines.append(f"# labels: every score >= {lineage.get('threshold', 0.5)} (the threshold nlptl chose)")
    if lineage.get("window"):
        lines.append("# a long text goes in whole (no truncation): the model cuts it into windows itself")
    return lines + ["```"]


def build(record: dict, directory: Path, out: Path):
    """The huggingface_hub ModelCard of a stage record; `directory` holds the files (the staging
    directory while a stage is written), `out` is where they end up."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    stage, config, metrics, lineage = record["stage"], record["config"], record.get("metrics") or {}, record["lineage"]
    objective = lineage.get("objective") or ("classification" if stage == "finetune" else None)
    base = lineage.get("base_model")
    sources = data_sources(lineage)
    hub_data = sorted({s["hub"] for s in sources if s.get("hub")})
    eval_results, metric_names = [], []
    card_metrics = [(k, name, conf) for k, name, conf in CARD_METRICS if metrics.get(k) is not None]
    if stage == "finetune" and card_metrics:
        ev = lineage.get("eval") or {}
        dataset = ev.get("name") or ev.get("spec") or f"held-out slice of {(lineage.get('train') or {}).get('spec', '--train')}"
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
    command = reproduce_command(stage, config, out, lineage)
    encoder = objective == "contrastive"  # a sentence encoder: it carries sentence-transformers' pooling files
    data = ModelCardData(
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
    body = _body(record, directory, out, objective, base, sources, command)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _body(record: dict, directory: Path, out: Path, objective, base, sources: list[dict], command: str) -> str:
    stage, config, metrics, lineage = record["stage"], record["config"], record.get("metrics") or {}, record["lineage"]
    what = {"pretrain": "a general language model", "adapt": "a language model adapted to domain text",
            "finetune": "a sequence classifier"}[stage]
    if objective == "contrastive":
        what = "a sentence encoder trained on pairs of a task's labelled examples (same label = similar)"
    lines = [f"# {out.name}", "",
             f"{what[0].upper() + what[1:]}, made by `nlptl {stage}` (ULMFiT-style transfer "
             f"learning: pretrain -> adapt -> finetune)" + (f", objective **{objective}**." if objective else "."), "",
             "## Model", "",
             f"- base model: `{base or 'none (new model)'}`",
             f"- general model the chain started from: {general_model(lineage)}"]
    if stage == "finetune":
        problem = lineage.get("problem_type") or "single_label_classification"
        lines += [f"- task shape: {problem}" + ("; sentence pairs" if lineage.get("text_pair") else ""),
                  f"- labels: {', '.join(lineage.get('labels') or [])}",
                  f"- pooling: {lineage.get('pooling')}; texts truncated to {lineage.get('max_length')} tokens"]
        if lineage.get("window"):
            lines.append(f"- long documents: windows of {lineage['window']} tokens sharing {lineage.get('stride')}, "
                         f"pooled by {lineage.get('doc_pooling')}")
        if lineage.get("threshold") is not None:
            lines.append(f"- decision threshold: {lineage['threshold']}")
    # adapt --probe (unless the probe was at chance), else --patience; older runs recorded no kept_by
    by = lineage.get("kept_by") or ("probe" if lineage.get("probe") else "held-out perplexity")
    kept = f" (the weights are step {lineage['kept_step']}'s, the best by {by})" if lineage.get("kept_step") else ""
    lines += [f"- steps: {lineage.get('steps', metrics.get('steps'))}, tokens seen: {lineage.get('tokens_seen', '?')}{kept}", "",
              "## Data", "", "| stage | role | name or path | sha256 |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['role']} | `{s['name']}` | `{s['sha256'] or 'n/a (hub dataset)'}` |" for s in sources]
    if not sources:
        lines.append("| | | (no training data: an existing checkpoint taken as it is) | |")
    lines += ["", "## Hyperparameters", "", "| key | value |", "|---|---|"]
    unused = NOT_REPRODUCED + UNUSED.get(objective, ())
    lines += [f"| {k} | `{_fmt(v)}` |" for k, v in config.items() if v not in (None, [], "") and k not in unused]
    lines += choices(lineage)
    lines += ["", "## Results", ""]
    if metrics.get("learning_curve"):
        lines += ["Learning curve (mean over seeds, on the evaluation data): see `learning_curve.csv`.", ""]
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if shown:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in shown.items()]
        lines += ["", *scored_on(stage, objective, config, metrics, lineage), *per_class_table(metrics)]
        if metrics.get("stopped_early"):
            lines += ["", f"Training stopped early (--patience) at step {metrics['stopped_at_step']}: "
                          f"{metrics['early_stop']}; the checkpoint kept is the best one."]
    else:
        lines.append("No training in this stage.")
    lines += ["", "## Intended use and limits", ""]
    if stage == "finetune":
        lines += [f"Classifies texts into {', '.join(lineage.get('labels') or [])} for the task `{lineage.get('task')}`. "
                  "Its accuracy holds for text like its training data (domain, language, length); measure it on "
                  "your own held-out data before relying on it, and do not use it for decisions about people "
                  "without human review. It inherits the biases of its training text and labels.",
                  "", *usage(lineage, out.name, (Path(directory) / "modeling_nlptl.py").exists())]
        lines += serve_and_export(directory, out, lineage)
    elif objective == "contrastive":
        lines += ["A sentence encoder for `nlptl finetune --from` (which then trains the body slowly and the head "
                  "fast) or for sentence-transformers (`SentenceTransformer(path)`: it carries its pooling, "
                  f"{lineage.get('pooling')}). Its embeddings place texts of one label of its task close together; "
                  "for other tasks or domains they are untested. It inherits the biases of its training text and "
                  "labels."]
    else:
        lines += ["A starting point for the next nlptl stage (`nlptl adapt --from` / `nlptl finetune --from`) or "
                  "for further training with transformers. It is not instruction-tuned and not meant to generate "
                  "text for end users; its perplexity says how well it models held-out text of its own corpus, "
                  "not other domains. It inherits the biases of its training text."]
    lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    if record.get("command"):
        lines += ["The command as it was typed:", "", "```bash", record["command"], "```", ""]
    lines += ["## Lineage", "", "```json", json.dumps(lineage, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def scored_on(stage: str, objective, config: dict, metrics: dict, lineage: dict) -> list[str]:
    """What the card's metrics were measured on."""
    if stage == "finetune":
        from nlptl.shapes import of_problem

        scores = of_problem(lineage.get("problem_type")).card_scores
        return [f"{scores[0].upper() + scores[1:]} on the evaluation data that selected the checkpoint (not a test set)."]
    if objective == "contrastive":
        return [f"pair_loss: the {config.get('pair_loss', 'cosine')} pair loss on pairs of the labelled examples drawn "
                "apart from the training pairs (before training: pair_loss_before)."]
    lines = ["perplexity on held-out blocks of the training corpus (before training: perplexity_before)."]
    if "probe_accuracy" in metrics:
        lines.append("probe_accuracy: a logistic regression on the frozen, pooled features of the --probe file, "
                     "cross-validated (before training: probe_accuracy_before); the kept checkpoint is the best by it.")
    return lines


def per_class_table(metrics: dict) -> list[str]:
    """A classifier's precision, recall, F1 and support of each class on its evaluation data (none before
    nlptl recorded them, or for regression)."""
    rows = metrics.get("per_class") or []
    if not rows:
        return []
    return ["", "Per class, on the same data:", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|",
            *[f"| {r['label']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |" for r in rows]]


def choices(lineage: dict) -> list[str]:
    """The options the run left to nlptl (`auto` or unset), what it chose and why (nlptl/handoff.py)."""
    made = lineage.get("choices") or {}
    if not made:
        return []
    return ["", "## Choices nlptl made", "", "Options left to nlptl (`auto`, or not given), what it chose and why:", "",
            *[f"- {name}: {_fmt(c['value'])} ({c['why']})" for name, c in made.items()]]


def serve_and_export(directory: Path, out: Path, lineage: dict | None = None) -> list[str]:
    """How to put the classifier to work: `nlptl serve` and `nlptl export` (after `nlptl merge` for a LoRA
    run whose adapter is not merged), with a request of the classifier's own shape (pairs)."""
    lines = ["", "## Serve and export", ""]
    model = str(out)
    if not (Path(directory) / "config.json").is_file():
        lines += ["The LoRA adapter of this run is not merged: merge it first.", "", "```bash",
                  f"nlptl merge {shlex.quote(model)} --out {shlex.quote(model + '-merged')}", "```", ""]
        model += "-merged"
    quoted = shlex.quote(model)
    return lines + [
        "```bash",
        f"nlptl serve {quoted}   # HTTP on 127.0.0.1:8000, dynamic batching",
        ("""curl -s localhost:8000/predict -d '{"texts": ["A man sleeps."], "text_pairs": ["Somebody rests."]}'"""
         if (lineage or {}).get("text_pair") else
         """curl -s localhost:8000/predict -d '{"texts": ["first text", "second text"]}'"""),
        *([] if (lineage or {}).get("window") else [
            f"nlptl export {quoted} --format onnx --out {shlex.quote(model + '-onnx')}   # onnxruntime; --quantize int8",
            f"nlptl serve {shlex.quote(model + '-onnx')}   # the ONNX model, same API"]),
        "```"]


def write(directory: Path, record: dict, out: Path) -> None:
    build(record, directory, out).save(Path(directory) / CARD_FILE)
