"""The `nlptl` command line: one thin function per command, registered in one visible block.

Each command only parses, resolves the stage config (defaults < --config < flags < --set), shows it,
and calls `nlptl.stages.<stage>.run(config)`. Heavy libraries are imported inside the stages, so
`nlptl --help` stays instant. Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

# Plain click help: rich-formatted help would import rich and cost ~0.1 s on every --help.
os.environ.setdefault("TYPER_USE_RICH", "0")
import typer  # noqa: E402

from nlptl import __version__  # noqa: E402
from nlptl.config import (  # noqa: E402
    AdaptConfig,
    EvaluateConfig,
    FinetuneConfig,
    LMConfig,
    PredictConfig,
    PretrainConfig,
    RunConfig,
    TrainConfig,
    help_of,
)

app = typer.Typer(
    name="nlptl",
    help="Transfer learning for Hugging Face transformers, the ULMFiT way: pretrain -> adapt -> finetune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

TRAIN, DATA, RUN = "Training", "Data", "Output"


def _o(*names: str, cls: type = TrainConfig, key: str | None = None, panel: str = TRAIN, **kw: Any):
    key = key or names[0].lstrip("-").replace("-", "_")
    return typer.Option(*names, help=help_of(cls, key), rich_help_panel=panel, show_default=False, **kw)


# Options shared by the training stages (defaults live in the config dataclasses, shown by --help there).
Out = Annotated[str | None, _o("--out", "-o", panel=RUN)]
Overwrite = Annotated[bool | None, _o("--overwrite", panel=RUN)]
MaxSteps = Annotated[int | None, _o("--max-steps")]
Epochs = Annotated[float | None, _o("--epochs")]
BatchSize = Annotated[int | None, _o("--batch-size")]
GradAccum = Annotated[int | None, _o("--grad-accum")]
Lr = Annotated[float | None, _o("--lr")]
WarmupRatio = Annotated[float | None, _o("--warmup-ratio")]
WeightDecay = Annotated[float | None, _o("--weight-decay")]
Seed = Annotated[int | None, _o("--seed")]
EvalEvery = Annotated[int | None, _o("--eval-every")]
Precision = Annotated[str | None, _o("--precision")]
Compile = Annotated[bool | None, _o("--compile/--no-compile", key="compile")]
Schedule = Annotated[str | None, _o("--schedule")]
DiscLr = Annotated[float | None, _o("--discriminative-lr")]
Unfreeze = Annotated[bool | None, _o("--gradual-unfreeze/--no-gradual-unfreeze", key="gradual_unfreeze")]
UnfreezeEvery = Annotated[int | None, _o("--unfreeze-every")]
SaveEvery = Annotated[int | None, _o("--save-every", panel=RUN)]
KeepLast = Annotated[int | None, _o("--keep-last", panel=RUN)]
Resume = Annotated[bool | None, _o("--resume", panel=RUN)]
ResumeFrom = Annotated[str | None, _o("--resume-from", panel=RUN)]
ReportTo = Annotated[str | None, _o("--report-to", panel=RUN)]
PushToHub = Annotated[str | None, _o("--push-to-hub", panel=RUN)]
HubPrivate = Annotated[bool | None, _o("--hub-private", panel=RUN)]
LORA = "LoRA (parameter-efficient)"
Lora = Annotated[bool | None, _o("--lora", panel=LORA)]
LoraR = Annotated[int | None, _o("--lora-r", panel=LORA)]
LoraAlpha = Annotated[float | None, _o("--lora-alpha", panel=LORA)]
LoraDropout = Annotated[float | None, _o("--lora-dropout", panel=LORA)]
LoraTargets = Annotated[str | None, _o("--lora-targets", panel=LORA)]
Merge = Annotated[bool | None, _o("--merge", panel=LORA)]
ConfigFile = Annotated[str | None, typer.Option("--config", help="YAML file of config keys (flags override it).",
                                                rich_help_panel=RUN)]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: --set key=value (repeatable).",
                                                 rich_help_panel=RUN)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout (logs stay on stderr).",
                                    rich_help_panel=RUN)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.", rich_help_panel=RUN)]
Corpus = Annotated[str | None, _o("--corpus", cls=LMConfig, panel=DATA)]
TextColumn = Annotated[str | None, _o("--text-column", cls=LMConfig, panel=DATA)]
Objective = Annotated[str | None, _o("--objective", cls=LMConfig)]
BlockSize = Annotated[int | None, _o("--block-size", cls=LMConfig, panel=DATA)]
ValPct = Annotated[float | None, _o("--validation-percentage", cls=LMConfig, panel=DATA)]
MlmProb = Annotated[float | None, _o("--mlm-probability", cls=LMConfig)]
WholeWord = Annotated[bool | None, _o("--whole-word-mask/--no-whole-word-mask", cls=LMConfig, key="whole_word_mask")]
LMTrain = Annotated[str | None, _o("--train", cls=LMConfig, key="train_file", panel=DATA)]

NOT_CONFIG = ("config", "sets", "json_", "quiet")


def _flags(local: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (None means 'not given', so the config file can set them)."""
    return {k: v for k, v in local.items() if k not in NOT_CONFIG and v is not None}


def _stage(name: str, cls: type, local: dict[str, Any]) -> None:
    from nlptl import config as cfgmod
    from nlptl import console

    console.configure(quiet=local["quiet"], json_mode=local["json_"])
    cfg = cfgmod.resolve(cls, config_file=local["config"], flags=_flags(local), sets=local["sets"])
    console.header(name, cfgmod.to_dict(cfg))
    module = __import__(f"nlptl.stages.{name}", fromlist=["run"])
    result = module.run(cfg)
    if local["json_"]:
        console.emit_json(result)
    elif "learning_curve" in result:
        console.results(f"{name} results", {"plot": result["plot"], "output_dir": result["output_dir"]})
    else:
        console.results(f"{name} results", {k: v for k, v in result.items() if k not in ("config", "lineage")})


# --------------------------------------------------------------------------- commands


@app.command(no_args_is_help=False)
def pretrain(
    arch: Annotated[str | None, _o("--arch", cls=PretrainConfig)] = None,
    size: Annotated[str | None, _o("--size", cls=PretrainConfig)] = None,
    corpus: Corpus = None,
    from_model: Annotated[str | None, _o("--from", cls=PretrainConfig, key="from_model")] = None,
    out: Out = None,
    vocab_size: Annotated[int | None, _o("--vocab-size", cls=PretrainConfig)] = None,
    objective: Objective = None,
    block_size: BlockSize = None,
    validation_percentage: ValPct = None,
    text_column: TextColumn = None,
    mlm_probability: MlmProb = None,
    whole_word_mask: WholeWord = None,
    max_steps: MaxSteps = None, epochs: Epochs = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
    lr: Lr = None, warmup_ratio: WarmupRatio = None, weight_decay: WeightDecay = None, seed: Seed = None,
    eval_every: EvalEvery = None, precision: Precision = None, compile: Compile = None, schedule: Schedule = None,
    discriminative_lr: DiscLr = None, gradual_unfreeze: Unfreeze = None, unfreeze_every: UnfreezeEvery = None,
    save_every: SaveEvery = None, keep_last: KeepLast = None, resume: Resume = None, resume_from: ResumeFrom = None,
    overwrite: Overwrite = None, report_to: ReportTo = None, push_to_hub: PushToHub = None, hub_private: HubPrivate = None,
    config: ConfigFile = None, sets: Sets = None, json_: Json = False, quiet: Quiet = False,
) -> None:
    """Stage 1: train a general language model from scratch (--corpus), or take a checkpoint (--from)."""
    _stage("pretrain", PretrainConfig, locals())


@app.command()
def adapt(
    corpus: Corpus = None,
    from_model: Annotated[str | None, _o("--from", cls=AdaptConfig, key="from_model")] = None,
    out: Out = None,
    objective: Objective = None,
    block_size: BlockSize = None,
    validation_percentage: ValPct = None,
    mlm_probability: MlmProb = None,
    whole_word_mask: WholeWord = None,
    text_column: TextColumn = None,
    train_file: LMTrain = None,
    max_steps: MaxSteps = None, epochs: Epochs = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
    lr: Lr = None, warmup_ratio: WarmupRatio = None, weight_decay: WeightDecay = None, seed: Seed = None,
    eval_every: EvalEvery = None, precision: Precision = None, compile: Compile = None, schedule: Schedule = None,
    discriminative_lr: DiscLr = None, gradual_unfreeze: Unfreeze = None, unfreeze_every: UnfreezeEvery = None,
    save_every: SaveEvery = None, keep_last: KeepLast = None, resume: Resume = None, resume_from: ResumeFrom = None,
    lora: Lora = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None, lora_dropout: LoraDropout = None,
    lora_targets: LoraTargets = None, merge: Merge = None,
    overwrite: Overwrite = None, report_to: ReportTo = None, push_to_hub: PushToHub = None, hub_private: HubPrivate = None,
    config: ConfigFile = None, sets: Sets = None, json_: Json = False, quiet: Quiet = False,
) -> None:
    """Stage 2: adapt a language model to domain text (MLM for encoders, CLM for decoders)."""
    _stage("adapt", AdaptConfig, locals())


@app.command()
def finetune(
    task: Annotated[str | None, _o("--task", cls=FinetuneConfig, panel=DATA)] = None,
    from_model: Annotated[str | None, _o("--from", cls=FinetuneConfig, key="from_model")] = None,
    train_file: Annotated[str | None, _o("--train", cls=FinetuneConfig, key="train_file", panel=DATA)] = None,
    eval_file: Annotated[str | None, _o("--eval", cls=FinetuneConfig, key="eval_file", panel=DATA)] = None,
    text_column: Annotated[str | None, _o("--text-column", cls=FinetuneConfig, panel=DATA)] = None,
    label_column: Annotated[str | None, _o("--label-column", cls=FinetuneConfig, panel=DATA)] = None,
    max_length: Annotated[int | None, _o("--max-length", cls=FinetuneConfig, panel=DATA)] = None,
    pooling: Annotated[str | None, _o("--pooling", cls=FinetuneConfig)] = None,
    n_labels: Annotated[str | None, _o("--n-labels", cls=FinetuneConfig, panel="Learning curve")] = None,
    seeds: Annotated[int | None, _o("--seeds", cls=FinetuneConfig, panel="Learning curve")] = None,
    compare: Annotated[list[str] | None, _o("--compare", cls=FinetuneConfig, panel="Learning curve")] = None,
    out: Out = None,
    max_steps: MaxSteps = None, epochs: Epochs = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
    lr: Lr = None, warmup_ratio: WarmupRatio = None, weight_decay: WeightDecay = None, seed: Seed = None,
    eval_every: EvalEvery = None, precision: Precision = None, compile: Compile = None, schedule: Schedule = None,
    discriminative_lr: DiscLr = None, gradual_unfreeze: Unfreeze = None, unfreeze_every: UnfreezeEvery = None,
    save_every: SaveEvery = None, keep_last: KeepLast = None, resume: Resume = None, resume_from: ResumeFrom = None,
    lora: Lora = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None, lora_dropout: LoraDropout = None,
    lora_targets: LoraTargets = None, merge: Merge = None,
    overwrite: Overwrite = None, report_to: ReportTo = None, push_to_hub: PushToHub = None, hub_private: HubPrivate = None,
    config: ConfigFile = None, sets: Sets = None, json_: Json = False, quiet: Quiet = False,
) -> None:
    """Stage 3: fine-tune a classifier on labelled data; keeps the best checkpoint on --eval."""
    _stage("finetune", FinetuneConfig, locals())


@app.command()
def evaluate(
    data: Annotated[str | None, _o("--data", cls=EvaluateConfig, panel=DATA)] = None,
    model: Annotated[str | None, _o("--model", cls=EvaluateConfig)] = None,
    text_column: Annotated[str | None, _o("--text-column", cls=EvaluateConfig, panel=DATA)] = None,
    label_column: Annotated[str | None, _o("--label-column", cls=EvaluateConfig, panel=DATA)] = None,
    batch_size: Annotated[int | None, _o("--batch-size", cls=EvaluateConfig)] = None,
    max_length: Annotated[int | None, _o("--max-length", cls=EvaluateConfig)] = None,
    block_size: Annotated[int | None, _o("--block-size", cls=EvaluateConfig)] = None,
    seed: Annotated[int | None, _o("--seed", cls=EvaluateConfig)] = None,
    config: ConfigFile = None, sets: Sets = None, json_: Json = False, quiet: Quiet = False,
) -> None:
    """Accuracy and macro-F1 of a classifier on a labelled file, or perplexity of a language model."""
    _stage("evaluate", EvaluateConfig, locals())


@app.command()
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    model: Annotated[str | None, _o("--model", cls=PredictConfig)] = None,
    input: Annotated[str | None, _o("--input", "-i", cls=PredictConfig)] = None,
    batch_size: Annotated[int | None, _o("--batch-size", cls=PredictConfig)] = None,
    max_length: Annotated[int | None, _o("--max-length", cls=PredictConfig)] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON Lines on stdout: one object per text.")] = False,
    quiet: Quiet = False,
) -> None:
    """Labels with scores for texts (arguments, --input FILE, or --input - for stdin)."""
    from nlptl import config as cfgmod
    from nlptl import console
    from nlptl.stages import predict as stage

    console.configure(quiet=quiet, json_mode=json_)
    flags = _flags({"texts": texts or None, "model": model, "input": input, "batch_size": batch_size,
                    "max_length": max_length})
    rows = stage.run(cfgmod.resolve(PredictConfig, flags=flags))
    if json_:
        for row in rows:
            console.emit_json(row)
    else:
        console.table("predictions", ["label", "score", "text"],
                      [[r["label"], r["score"], r["text"][:80]] for r in rows], stdout=True)


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help=help_of(RunConfig, "recipe"), show_default=False,
                                                   metavar="RECIPE.yaml")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help=help_of(RunConfig, "dry_run"))] = False,
    sets: Annotated[list[str] | None, typer.Option("--set", help=help_of(RunConfig, "sets"),
                                                                  metavar="[NAME.]KEY=VALUE")] = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Run a recipe: pretrain -> adapt (any number) -> finetune -> evaluate from one YAML file; reuses
    finished stages, resumes interrupted ones, reruns changed ones and everything after them."""
    from nlptl import console
    from nlptl.stages import run as stage

    console.configure(quiet=quiet, json_mode=json_)
    result = stage.run(RunConfig(recipe=recipe, sets=sets or [], dry_run=dry_run))
    if json_:
        console.emit_json(result)
        return
    columns = ["stage", "kind", "action", "from", "out", "why"] if dry_run else ["stage", "kind", "action", "result"]
    rows = []
    for s in result["stages"]:
        if dry_run:
            rows.append([s["name"], s["stage"], s["action"], s["from"] or "", s["out"] or "", s["why"]])
        else:
            r = s["result"]
            shown = {k: r[k] for k in ("accuracy", "f1_macro", "perplexity", "output_dir") if r.get(k) is not None}
            rows.append([s["name"], s["stage"], s["action"], ", ".join(f"{k} {console._fmt(v)}" for k, v in shown.items())])
    console.table(f"{'plan' if dry_run else 'results'} of {recipe} (root {result['out']})", columns, rows,
                  stdout=dry_run)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory (any stage).", show_default=False)],
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Lineage, metrics of every stage in the chain, and plots (PNG, into RUN_DIR/report/) of a run."""
    from nlptl import config as cfgmod
    from nlptl import console
    from nlptl.stages import report as stage

    console.configure(quiet=quiet, json_mode=json_)
    result = stage.run(cfgmod.resolve(cfgmod.ReportConfig, flags={"run_dir": run_dir}))
    if json_:
        console.emit_json(result)
    else:
        console.report(result)


@app.command()
def corpora(json_: Json = False) -> None:
    """List the corpus names --corpus accepts."""
    from nlptl import console, registry

    console.configure(json_mode=json_)
    table = registry.corpora()
    if json_:
        console.emit_json({k: v.description for k, v in table.items()})
    else:
        console.table("corpora (or pass a file, directory or glob)", ["name", "what it is"],
                      [[k, v.description] for k, v in table.items()], stdout=True)


@app.command()
def tasks(json_: Json = False) -> None:
    """List the task names --task accepts."""
    from nlptl import console, registry

    console.configure(json_mode=json_)
    table = registry.tasks()
    if json_:
        console.emit_json({k: {"description": v.description, "labels": v.labels} for k, v in table.items()})
    else:
        console.table("tasks", ["name", "labels", "what it is"],
                      [[k, ", ".join(v.labels) if v.labels else "(from data)", v.description] for k, v in table.items()],
                      stdout=True)


@app.command()
def demo(
    out: Annotated[str | None, typer.Option("--out", "-o", help="Where the demo runs go (default: $NLPTL_HOME/demo).")] = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Smoke-run the whole chain on the built-in sample data (tiny GPT, CPU, about 30 seconds)."""
    from nlptl import console
    from nlptl.stages import demo as stage

    console.configure(quiet=quiet, json_mode=json_)
    result = stage.run(out)
    if json_:
        console.emit_json(result)


def _version(value: bool) -> None:
    if value:
        print(f"nlptl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Transfer learning for Hugging Face transformers, the ULMFiT way: pretrain -> adapt -> finetune."""


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; known errors become one line on stderr and an exit code, never a traceback
    (set NLPTL_DEBUG=1 to see it)."""
    from nlptl.errors import NlptlError

    try:  # typer >= 0.2x raises the exceptions of its own vendored copy of click
        from typer._click import exceptions as click_exc
    except ImportError:  # older typer: plain click
        from click import exceptions as click_exc
    Exit, Abort = typer.Exit, typer.Abort

    debug = os.environ.get("NLPTL_DEBUG", "") not in ("", "0")
    try:
        # Not standalone: typer returns the code of an Exit (--help, --version, Ctrl-C is 130) instead of raising it.
        code = app(args=argv, prog_name="nlptl", standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except Exit as e:
        sys.exit(e.exit_code)
    except click_exc.NoArgsIsHelpError as e:  # `nlptl` alone: the help, as click does it
        print(e.ctx.get_help(), file=sys.stderr)
        sys.exit(2)
    except click_exc.UsageError as e:
        from nlptl import console

        cmd = e.ctx.command_path if e.ctx else "nlptl"
        console.error(f"{' '.join(e.format_message().split())} (see '{cmd} --help')")
        sys.exit(2)
    except (KeyboardInterrupt, Abort):
        from nlptl import console

        console.error("interrupted")
        sys.exit(130)
    except NlptlError as e:
        if debug:
            raise
        from nlptl import console

        console.error(str(e))
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        from nlptl import console

        console.error(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set NLPTL_DEBUG=1 for the traceback)")
        sys.exit(1)
