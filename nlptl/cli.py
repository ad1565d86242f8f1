"""The `nlptl` command line: one thin function per command, registered in one visible block.

Each command only parses, resolves the stage config (defaults < --config < flags < --set), shows it,
and calls `nlptl.stages.<stage>.run(config)`. The stage commands' options are made from the config
dataclasses (nlptl/config.py: a field's name, type, default, help and flag are declared there once).
Heavy libraries are imported inside the stages, so `nlptl --help` stays instant. Exit codes: 0 ok,
1 runtime failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Annotated, Any

# Plain click help: rich-formatted help would import rich and cost ~0.1 s on every --help.
os.environ.setdefault("TYPER_USE_RICH", "0")
import typer  # noqa: E402

from nlptl import __version__  # noqa: E402
from nlptl.config import OUTPUT, STAGE_CONFIGS, RunConfig, flags, help_of  # noqa: E402

app = typer.Typer(
    name="nlptl",
    help="Transfer learning for Hugging Face transformers, the ULMFiT way: pretrain -> adapt -> finetune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

KINDS = {"bool": bool, "int": int, "float": float, "str": str, "list": list[str]}


def _param(name: str, option: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _options(stage: str) -> list[inspect.Parameter]:
    """The options of `nlptl STAGE`, one per flagged config field. Each defaults to None ('not given'),
    so that the config file (or the field's default) sets it."""
    params = []
    for f in flags(stage).values():
        decls = (f"{f.names[0]}/{f.negative}", *f.names[1:]) if f.negative else f.names
        # The option itself defaults to None ('not given'); --help shows the stage's own default and
        # the accepted values, which differ between stages.
        shown: bool | str = False
        if isinstance(f.default, bool):
            shown = f.names[0][2:] if f.default else (f.negative or "")[2:] or False
        elif f.default is not None and f.default != []:
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        metavar = "[" + "|".join(f.choices) + "]" if f.choices else None
        text = f"{f.help}  [default: {shown}]" if shown else f.help
        option = typer.Option(None, *decls, help=text, rich_help_panel=f.panel, show_default=False, metavar=metavar)
        params.append(_param(f.key, option, KINDS[f.kind] | None))
    return params


JSON_HELP = "Print the result as one JSON object on stdout (logs stay on stderr)."
QUIET_HELP = "Only warnings and errors on stderr."
QUIET = _param("quiet", typer.Option(False, "--quiet", "-q", help=QUIET_HELP, rich_help_panel=OUTPUT), bool)
# The options every stage command ends with: where the config comes from, and how results are shown.
COMMON = [
    _param("config", typer.Option(None, "--config", help="YAML file of config keys (flags override it).",
                                  rich_help_panel=OUTPUT), str | None),
    _param("sets", typer.Option(None, "--set", help="Override any config key: --set key=value (repeatable).",
                                rich_help_panel=OUTPUT), list[str] | None),
    _param("json_", typer.Option(False, "--json", help=JSON_HELP, rich_help_panel=OUTPUT), bool),
    QUIET,
    _param("verbose", typer.Option(False, "--verbose", "-v", help="Show the whole resolved config at the start "
                                   "(by default: only what differs from the stage's defaults).",
                                   rich_help_panel=OUTPUT), bool),
]
Json = Annotated[bool, typer.Option("--json", help=JSON_HELP, rich_help_panel=OUTPUT)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP, rich_help_panel=OUTPUT)]
NOT_CONFIG = ("ctx", "config", "sets", "json_", "quiet", "verbose")
# Typer's context, first of every command: its `obj` is what the user typed (main() puts it there).
CONTEXT = _param("ctx", inspect.Parameter.empty, typer.Context)
# The stages that write a training run: its record quotes the command line, and so does the hint to resume it.
RECORDED = ("pretrain", "adapt", "finetune")


def _flags(local: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (None means 'not given', so the config file can set them)."""
    return {k: v for k, v in local.items() if k not in NOT_CONFIG and v is not None}


def _stage(name: str, local: dict[str, Any]) -> None:
    from nlptl import config as cfgmod
    from nlptl import console

    console.configure(quiet=local["quiet"], json_mode=local["json_"])
    cfg = cfgmod.resolve(STAGE_CONFIGS[name], config_file=local["config"], flags=_flags(local), sets=local["sets"])
    resolved = cfgmod.to_dict(cfg)
    # The whole config is in the run directory (config.yaml); at the start, what this run changed.
    shown = resolved if local.get("verbose") else cfgmod.changed(cfg)
    console.header(name if local.get("verbose") else f"{name} (changed from the defaults)", shown)
    module = __import__(f"nlptl.stages.{name}", fromlist=["run"])
    result = module.run(cfg, command=local["ctx"].obj) if name in RECORDED else module.run(cfg)
    if local["json_"]:
        console.emit_json(result)
    elif "learning_curve" in result:
        console.results(f"{name} results", {"plot": result["plot"], "output_dir": result["output_dir"]})
    else:
        console.results(f"{name} results", {k: v for k, v in result.items() if k not in ("config", "lineage")})


def stage_command(name: str, doc: str, params: list[inspect.Parameter], body=None, **settings: Any) -> None:
    """Register `nlptl NAME` with `params` as its options; it runs `body(given)`, by default the stage.
    `settings`: click's context settings."""

    def command(**given: Any) -> None:
        (body or (lambda given: _stage(name, given)))(given)

    command.__name__, command.__doc__ = name, doc
    command.__signature__ = inspect.Signature([CONTEXT, *params])
    app.command(name=name, context_settings=settings or None)(command)


def _predict(given: dict[str, Any]) -> None:
    from nlptl import config as cfgmod
    from nlptl import console
    from nlptl.stages import predict as stage

    console.configure(quiet=given["quiet"], json_mode=given["json_"])
    console.require_stdout()
    cfg = cfgmod.resolve(STAGE_CONFIGS["predict"], flags=_flags({**given, "texts": given["texts"] or None}))
    if cfg.output:  # the results go to the file; the summary to stdout
        summary = stage.run_to_file(cfg)
        console.emit_json(summary) if given["json_"] else console.results("predict results", summary)
        return
    rows = stage.run(cfg)
    if given["json_"]:
        for row in rows:
            console.emit_json(row)
    else:
        console.table("predictions", ["prediction", "score", "text"], [_prediction(r) for r in rows], stdout=True)


def _prediction(r: dict) -> list:
    """A table row of one result, whatever the task shape (nlptl/inference.py): label, labels or value."""
    text = r["text"] + (f" | {r['text_pair']}" if "text_pair" in r else "")
    if "error" in r:  # a blank text (inference.BLANK)
        return [f"({r['error']})", "", text[:80]]
    if "value" in r:
        return [f"{r['value']:.4g}", "", text[:80]]
    if "labels" in r:
        return [", ".join(r["labels"]) or "(none)", ", ".join(f"{r['scores'][n]:.3f}" for n in r["labels"]), text[:80]]
    return ["(abstain)" if r.get("abstain") else r["label"], r["score"], text[:80]]


def _model_command(name: str):
    """The body of `nlptl serve|export|merge MODEL ...`: MODEL is an argument, the rest are flags."""

    def body(given: dict[str, Any]) -> None:
        from nlptl import config as cfgmod
        from nlptl import console

        serving = name == "serve"
        # serve's --json is its log format (it has no result to print); the others print a result.
        console.configure(quiet=given["quiet"], json_mode=given["json_"] and not serving)
        if serving and given["json_"]:
            console.json_logs()
        cfg = cfgmod.resolve(STAGE_CONFIGS[name], flags={"model": given["model"], **_flags(given)})
        module = __import__(f"nlptl.stages.{name}", fromlist=["run"])
        if serving:
            module.run(cfg, json_logs=given["json_"], quiet=given["quiet"])
        elif given["json_"]:
            console.emit_json(module.run(cfg))
        elif name == "audit":
            console.audit(module.run(cfg))
        else:
            console.results(f"{name} results", module.run(cfg))

    return body


def _model_param(what: str) -> inspect.Parameter:
    return _param("model", typer.Argument(..., help=what, show_default=False, metavar="MODEL"), str)


# --------------------------------------------------------------------------- commands

stage_command("pretrain", "Stage 1: train a general language model from scratch (--corpus), or take a checkpoint "
              "(--from).", _options("pretrain") + COMMON)
stage_command("adapt", "Stage 2: adapt a language model to domain text (MLM for encoders, CLM for decoders).",
              _options("adapt") + COMMON)
stage_command("preprocess", "Tokenize and pack a corpus ahead of adapt/pretrain, on every core (CPU only), into "
              "their cache.", _options("preprocess") + COMMON)
stage_command("finetune", "Stage 3: fine-tune a classifier on labelled data; keeps the best checkpoint on --eval.",
              _options("finetune") + COMMON)
stage_command("evaluate", "The scores of a classifier on a labelled file (accuracy and macro-F1; multi-label and "
              "regression scores for those shapes), or perplexity of a language model.", _options("evaluate") + COMMON)
stage_command("predict", "Labels with scores for texts (arguments, --input FILE, or --input - for stdin).", [
    _param("texts", typer.Argument(None, help=help_of(STAGE_CONFIGS["predict"], "texts"), show_default=False),
           list[str] | None),
    *_options("predict"),
    _param("json_", typer.Option(False, "--json", help="JSON Lines on stdout: one object per text."), bool),
    QUIET,
], _predict)
stage_command("serve", "Serve a classifier over HTTP: POST /predict, GET /health, GET /info; dynamic batching "
              "of concurrent requests.", [
    _model_param("A finetune run directory, a classifier checkpoint, or an `nlptl export` directory."),
    *_options("serve"),
    _param("json_", typer.Option(False, "--json", help="Logs as JSON Lines on stderr (one per batch).",
                                 rich_help_panel=OUTPUT), bool),
    QUIET,
], _model_command("serve"))
stage_command("export", "Export a classifier to ONNX (--format onnx), checked against torch; --quantize int8 "
              "for a smaller, faster model.", [
    _model_param("A finetune run directory or classifier checkpoint."),
    *_options("export"),
    _param("json_", typer.Option(False, "--json", help=JSON_HELP, rich_help_panel=OUTPUT), bool),
    QUIET,
], _model_command("export"))
stage_command("merge", "Merge a run's LoRA adapter (trained with --lora, without --merge) into one plain "
              "checkpoint.", [
    _model_param("A run directory trained with --lora whose adapter is not merged."),
    *_options("merge"),
    _param("json_", typer.Option(False, "--json", help=JSON_HELP, rich_help_panel=OUTPUT), bool),
    QUIET,
], _model_command("merge"))


stage_command("audit", "Leakage: the texts a model is scored on (--data), against every corpus, train and probe "
              "file of its lineage; exact and near duplicates.", [
    _model_param("A run directory (finetune, adapt or pretrain)."),
    *_options("audit"),
    _param("json_", typer.Option(False, "--json", help=JSON_HELP, rich_help_panel=OUTPUT), bool),
    QUIET,
], _model_command("audit"))


def _sweep(given: dict[str, Any]) -> None:
    """`nlptl sweep STAGE [STAGE OPTIONS] --space ...`: the stage's options are parsed by the stage's own command."""
    import typer.main

    from nlptl import config as cfgmod
    from nlptl import console
    from nlptl.stages import sweep as stage

    console.configure(quiet=given["quiet"], json_mode=given["json_"])
    name, options = given["stage"], {}
    if name in STAGE_CONFIGS:
        parsed = typer.main.get_command(app).commands[name].make_context(f"nlptl sweep {name}", list(given["args"]))
        # click gives a repeatable option not given as (): not given, like None.
        given_options = {k: v for k, v in _flags(parsed.params).items() if v != ()}
        options = {"options": given_options, "stage_config": parsed.params.get("config"),
                   "stage_sets": parsed.params.get("sets") or []}
    sweep_flags = {k: v for k, v in _flags(given).items() if k not in ("stage", "args")}
    result = stage.run(cfgmod.resolve(cfgmod.SweepConfig, flags={"stage": name, **options, **sweep_flags}))
    if given["json_"]:
        console.emit_json(result)
    else:
        console.sweep(result)


stage_command("sweep", "Search a stage's options with Optuna (pip install 'nlptl[sweep]'): each trial a run "
              "directory under --out, chosen by the eval score; the same command again continues it.", [
    _param("stage", typer.Argument(..., help=help_of(STAGE_CONFIGS["sweep"], "stage"), show_default=False,
                                   metavar="STAGE"), str),
    _param("args", typer.Argument(None, help="The stage's own options (--from, --task, --train, --eval, ...).",
                                  show_default=False, metavar="[STAGE OPTIONS]..."), list[str] | None),
    *_options("sweep"),
    _param("json_", typer.Option(False, "--json", help=JSON_HELP, rich_help_panel=OUTPUT), bool),
    QUIET,
], _sweep, allow_extra_args=True, ignore_unknown_options=True)


@app.command()
def run(
    ctx: typer.Context,
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
    result = stage.run(RunConfig(recipe=recipe, sets=sets or [], dry_run=dry_run), command=ctx.obj)
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
            rows.append([s["name"], s["stage"], s["action"],
                         ", ".join(f"{k} {console._fmt(v)}" for k, v in shown.items())])
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
    elif "trials" in result:
        console.sweep(result)
    else:
        console.report(result)


@app.command()
def corpora(json_: Json = False) -> None:
    """List the corpus names --corpus accepts."""
    from nlptl import console
    from nlptl.data import registry

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
    from nlptl import console
    from nlptl.data import registry

    console.configure(json_mode=json_)
    table = registry.tasks()
    if json_:
        console.emit_json({k: {"description": v.description, "labels": v.labels} for k, v in table.items()})
    else:
        console.table("tasks", ["name", "labels", "what it is"],
                      [[k, ", ".join(v.labels) if v.labels else "(from data)", v.description]
                       for k, v in table.items()],
                      stdout=True)


@app.command()
def demo(
    out: Annotated[str | None, typer.Option("--out", "-o",
                                            help="Where the demo runs go (default: $NLPTL_HOME/demo).")] = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Smoke-run the whole chain on the built-in sample data (tiny GPT, CPU, about 20 seconds)."""
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
    from nlptl import console

    console.guard_stdout()
    try:
        # Not standalone: typer returns the code of an Exit (--help, --version, Ctrl-C is 130) instead of raising it.
        # `obj`: what the user typed, which the commands pass on to the stages (their records quote it).
        code = app(args=argv, prog_name="nlptl", standalone_mode=False,
                   obj=list(sys.argv[1:] if argv is None else argv))
        if code == 130:
            raise KeyboardInterrupt
    except (Exception, KeyboardInterrupt) as e:
        code = _failure(e)
    if isinstance(code, int) and code:
        sys.exit(code)


def _failure(e: BaseException) -> int:
    """The exit code of a command that raised `e`, after its one line on stderr."""
    from nlptl import console
    from nlptl.errors import NlptlError

    try:  # typer >= 0.2x raises the exceptions of its own vendored copy of click
        from typer._click import exceptions as click_exc
    except ImportError:  # older typer: plain click
        from click import exceptions as click_exc

    if isinstance(e, typer.Exit):
        return e.exit_code
    if isinstance(e, click_exc.NoArgsIsHelpError):  # `nlptl` alone: the help, as click does it
        print(e.ctx.get_help(), file=sys.stderr)
        return 2
    if isinstance(e, click_exc.UsageError):
        cmd = e.ctx.command_path if e.ctx else "nlptl"
        console.error(f"{' '.join(e.format_message().split())} (see '{cmd} --help')")
        return 2
    if isinstance(e, KeyboardInterrupt | typer.Abort):
        console.error("interrupted")
        return 130
    if os.environ.get("NLPTL_DEBUG", "") not in ("", "0"):
        raise e
    if isinstance(e, NlptlError):
        console.error(str(e))
        return e.exit_code
    # The last line of defence: one line, not a traceback.
    console.error(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(set NLPTL_DEBUG=1 for the traceback)")
    return 1
