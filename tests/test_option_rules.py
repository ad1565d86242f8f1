"""The option rules (which fields are flags, which may change on resume, which a recipe ignores, which
a model card leaves out) as the commands apply them: pinned, so that declaring the rules on the
config fields (nlptl/config.py `opt`) keeps every derived set as it was."""

import dataclasses
from dataclasses import dataclass

import typer.main

from nlptl.card import NOT_REPRODUCED, UNUSED
from nlptl.checkpoint import _NOT_COMPARED, RESUME_SAFE
from nlptl.cli import app
from nlptl.config import (
    COMMAND_FLAGS,
    STAGE_CONFIGS,
    AdaptConfig,
    annotation,
    command_flags,
    flags,
    not_read_by,
    opt,
    option_keys,
)
from nlptl.recipe import IGNORED, MANAGED

# The options of each command as its --help lists them (sorted; ",": aliases, "/": the negative form).
HELP_FLAGS = {"pretrain": ("--arch", "--batch-size", "--block-size", "--compile/--no-compile", "--config", "--corpus",
              "--cut-frac", "--discriminative-lr", "--epochs", "--eval-every", "--from", "--fsdp", "--grad-accum",
              "--gradual-unfreeze/--no-gradual-unfreeze", "--head-warmup", "--hub-private", "--json", "--keep-last",
              "--log-every", "--lora", "--lora-alpha", "--lora-dropout", "--lora-r", "--lora-targets", "--lr",
              "--max-eval-blocks", "--max-grad-norm", "--max-steps", "--merge", "--min-delta", "--mlm-probability",
              "--num-proc", "--objective", "--out,-o", "--overwrite", "--patience", "--precision", "--push-to-hub",
              "--quiet,-q", "--report-to", "--resume", "--resume-from", "--save-every", "--schedule", "--seed",
              "--set", "--size", "--stlr-ratio", "--streaming", "--text-column", "--train", "--unfreeze-every",
              "--validation-percentage", "--verbose,-v", "--vocab-size", "--warmup-ratio", "--weight-decay",
              "--whole-word-mask/--no-whole-word-mask"),
 "adapt": ("--batch-size", "--block-size", "--compile/--no-compile", "--config", "--corpus", "--cut-frac",
           "--discriminative-lr", "--epochs", "--eval-every", "--from", "--fsdp", "--grad-accum",
           "--gradual-unfreeze/--no-gradual-unfreeze", "--head-warmup", "--hub-private", "--json", "--keep-last",
           "--label-column", "--log-every", "--lora", "--lora-alpha", "--lora-dropout", "--lora-r",
           "--lora-targets", "--lr", "--max-eval-blocks", "--max-grad-norm", "--max-steps", "--merge",
           "--min-delta", "--mlm-probability", "--num-proc", "--objective", "--out,-o", "--overwrite",
           "--pair-loss", "--pairs-per-example", "--patience", "--pooling", "--precision", "--probe",
           "--push-to-hub", "--quiet,-q", "--report-to", "--resume", "--resume-from", "--save-every", "--schedule",
           "--seed", "--set", "--stlr-ratio", "--streaming", "--text-column", "--train", "--unfreeze-every",
           "--validation-percentage", "--verbose,-v", "--warmup-ratio", "--weight-decay",
           "--whole-word-mask/--no-whole-word-mask"),
 "preprocess": ("--block-size", "--config", "--corpus", "--from", "--json", "--num-proc", "--objective",
                "--quiet,-q", "--set", "--text-column", "--train", "--verbose,-v",
                "--whole-word-mask/--no-whole-word-mask"),
 "finetune": ("--batch-size", "--class-weights", "--compare", "--compile/--no-compile", "--config", "--cut-frac",
              "--discriminative-lr", "--doc-pooling", "--epochs", "--eval", "--eval-every", "--eval-fraction",
              "--from", "--fsdp", "--grad-accum", "--gradual-unfreeze/--no-gradual-unfreeze", "--head-lr",
              "--hub-private",
              "--json", "--keep-last", "--label-column", "--label-separator", "--log-every", "--long-docs",
              "--lora", "--lora-alpha", "--lora-dropout", "--lora-r", "--lora-targets", "--lr", "--max-grad-norm",
              "--max-length", "--max-steps", "--merge", "--min-delta", "--min-steps", "--n-labels",
              "--numeric-classes", "--out,-o", "--overwrite", "--patience", "--pooling", "--precision",
              "--push-to-hub", "--quiet,-q", "--report-to", "--resume", "--resume-from", "--save-every",
              "--schedule", "--seed", "--seeds", "--set", "--stlr-ratio", "--stride", "--task", "--text-column",
              "--threshold", "--train", "--tune-threshold/--no-tune-threshold", "--unfreeze-every", "--verbose,-v",
              "--warmup-ratio", "--weight-decay", "--window"),
 "evaluate": ("--batch-size", "--block-size", "--config", "--data", "--json", "--label-column", "--max-length",
              "--mlm-probability", "--model", "--quiet,-q", "--seed", "--set", "--text-column", "--verbose,-v"),
 "predict": ("--abstain-below", "--backend", "--batch-size", "--chunk-size", "--id-column", "--input,-i", "--int8",
             "--json", "--max-length", "--model", "--output", "--quiet,-q", "--raw-scores", "--text-column"),
 "serve": ("--abstain-below", "--backend", "--drain-seconds", "--host", "--info-paths", "--int8", "--json",
           "--max-batch-size", "--max-batch-tokens", "--max-length", "--max-request-bytes", "--max-texts",
           "--max-wait-ms", "--port", "--quiet,-q", "--raw-scores", "--threads", "--workers"),
 "export": ("--data", "--format", "--json", "--label-column", "--max-length", "--out,-o", "--overwrite",
            "--quantize", "--quiet,-q", "--text-column"),
 "merge": ("--json", "--out,-o", "--overwrite", "--quiet,-q"),
 "audit": ("--data", "--json", "--num-proc", "--quiet,-q", "--text-column"),
 "sweep": ("--json", "--out,-o", "--parallel", "--quiet,-q", "--space", "--trials")}

KINDS = {"pretrain": ("arch:str", "batch_size:int", "block_size:int", "compile:bool", "corpus:str", "cut_frac:float",
              "discriminative_lr:float", "epochs:float", "eval_every:int", "from_model:str", "fsdp:bool",
              "grad_accum:int",
              "gradual_unfreeze:bool", "head_warmup:float", "hub_private:bool", "keep_last:int", "log_every:int",
              "lora:bool", "lora_alpha:float", "lora_dropout:float", "lora_r:int", "lora_targets:str", "lr:str",
              "max_eval_blocks:int", "max_grad_norm:float", "max_steps:int", "merge:bool", "min_delta:float",
              "mlm_probability:float", "num_proc:int", "objective:str", "out:str", "overwrite:bool", "patience:int",
              "precision:str", "push_to_hub:str", "report_to:str", "resume:bool", "resume_from:str",
              "save_every:int", "schedule:str", "seed:int", "size:str", "stlr_ratio:float", "streaming:bool",
              "text_column:str", "train_file:str", "unfreeze_every:int", "validation_percentage:float",
              "vocab_size:int", "warmup_ratio:float", "weight_decay:float", "whole_word_mask:bool"),
 "adapt": ("batch_size:int", "block_size:int", "compile:bool", "corpus:str", "cut_frac:float",
           "discriminative_lr:float", "epochs:float", "eval_every:int", "from_model:str", "fsdp:bool",
           "grad_accum:int",
           "gradual_unfreeze:bool", "head_warmup:float", "hub_private:bool", "keep_last:int", "label_column:str",
           "log_every:int", "lora:bool", "lora_alpha:float", "lora_dropout:float", "lora_r:int", "lora_targets:str",
           "lr:str", "max_eval_blocks:int", "max_grad_norm:float", "max_steps:int", "merge:bool", "min_delta:float",
           "mlm_probability:float", "num_proc:int", "objective:str", "out:str", "overwrite:bool", "pair_loss:str",
           "pairs_per_example:int", "patience:int", "pooling:str", "precision:str", "probe:str", "push_to_hub:str",
           "report_to:str", "resume:bool", "resume_from:str", "save_every:int", "schedule:str", "seed:int",
           "stlr_ratio:float", "streaming:bool", "text_column:str", "train_file:str", "unfreeze_every:int",
           "validation_percentage:float", "warmup_ratio:float", "weight_decay:float", "whole_word_mask:bool"),
 "preprocess": ("block_size:int", "corpus:str", "from_model:str", "num_proc:int", "objective:str",
                "text_column:str", "train_file:str", "whole_word_mask:bool"),
 "finetune": ("batch_size:int", "class_weights:str", "compare:list", "compile:bool", "cut_frac:float",
              "discriminative_lr:float", "doc_pooling:str", "epochs:float", "eval_every:int", "eval_file:str",
              "eval_fraction:float", "from_model:str", "fsdp:bool", "grad_accum:int", "gradual_unfreeze:bool",
              "head_lr:float",
              "hub_private:bool", "keep_last:int", "label_column:str", "label_separator:str", "log_every:int",
              "long_docs:str", "lora:bool", "lora_alpha:float", "lora_dropout:float", "lora_r:int",
              "lora_targets:str", "lr:str", "max_grad_norm:float", "max_length:int", "max_steps:int", "merge:bool",
              "min_delta:float", "min_steps:int", "n_labels:str", "numeric_classes:bool", "out:str",
              "overwrite:bool", "patience:int", "pooling:str", "precision:str", "push_to_hub:str", "report_to:str",
              "resume:bool", "resume_from:str", "save_every:int", "schedule:str", "seed:int", "seeds:int",
              "stlr_ratio:float", "stride:int", "task:str", "text_column:str", "threshold:float", "train_file:str",
              "tune_threshold:bool", "unfreeze_every:int", "warmup_ratio:float", "weight_decay:float",
              "window:int"),
 "evaluate": ("batch_size:int", "block_size:int", "data:str", "label_column:str", "max_length:int",
              "mlm_probability:float", "model:str", "seed:int", "text_column:str"),
 "predict": ("abstain_below:float", "backend:str", "batch_size:int", "chunk_size:int", "id_column:str", "input:str",
             "int8:bool", "max_length:int", "model:str", "output:str", "raw_scores:bool", "text_column:str"),
 "serve": ("abstain_below:float", "backend:str", "drain_seconds:float", "host:str", "info_paths:bool", "int8:bool",
           "max_batch_size:int", "max_batch_tokens:int", "max_length:int", "max_request_bytes:int", "max_texts:int",
           "max_wait_ms:float", "port:int", "raw_scores:bool", "threads:int", "workers:int"),
 "export": ("data:str", "format:str", "label_column:str", "max_length:int", "out:str", "overwrite:bool",
            "quantize:str", "text_column:str"),
 "merge": ("out:str", "overwrite:bool"),
 "audit": ("data:list", "num_proc:int", "text_column:str"),
 "sweep": ("out:str", "parallel:int", "space:str", "trials:int")}

RESUME_SAFE_KEYS = {"epochs", "eval_every", "hub_private", "keep_last", "log_every", "max_steps", "min_delta",
                    "num_proc", "patience", "push_to_hub", "report_to", "save_every"}

NOT_COMPARED = {"out", "overwrite", "resume", "resume_from"}

MANAGED_KEYS = {"overwrite", "resume", "resume_from"}

IGNORED_KEYS = {"keep_last", "log_every", "overwrite", "resume", "resume_from", "save_every"}

NOT_REPRODUCED_KEYS = {"hub_private", "overwrite", "push_to_hub", "report_to", "resume", "resume_from"}

UNUSED_KEYS = {
    "contrastive": ("head_warmup", "lr_find_steps", "max_eval_blocks", "mlm_probability", "num_proc", "probe",
                    "streaming", "validation_percentage", "whole_word_mask"),
    "mlm": ("label_column", "pair_loss", "pairs_per_example", "pooling"),
    "clm": ("label_column", "mlm_probability", "pair_loss", "pairs_per_example", "pooling", "whole_word_mask"),
}


def _shown(option) -> str:
    negative = [",".join(option.secondary_opts)] if option.secondary_opts else []
    return "/".join([",".join(option.opts), *negative])


def test_each_command_has_the_flags_it_had():
    commands = typer.main.get_command(app).commands
    assert set(COMMAND_FLAGS) == set(HELP_FLAGS)
    for name, expected in HELP_FLAGS.items():
        shown = sorted(_shown(p) for p in commands[name].params if p.param_type_name == "option")
        assert tuple(shown) == expected, name


def test_each_flag_has_the_type_it_had():
    for name, expected in KINDS.items():
        assert tuple(sorted(f"{key}:{f.kind}" for key, f in flags(name).items())) == expected, name


def test_resume_recipe_and_card_sets_are_the_ones_they_were():
    assert set(RESUME_SAFE) == RESUME_SAFE_KEYS
    assert set(_NOT_COMPARED) == NOT_COMPARED
    assert set(MANAGED) == MANAGED_KEYS
    assert set(IGNORED) == IGNORED_KEYS
    assert set(NOT_REPRODUCED) == NOT_REPRODUCED_KEYS
    assert {k: tuple(sorted(v)) for k, v in UNUSED.items()} == UNUSED_KEYS


def test_the_lists_are_derived_from_the_fields():
    assert COMMAND_FLAGS == {stage: command_flags(cls) for stage, cls in STAGE_CONFIGS.items()}
    assert RESUME_SAFE == frozenset(option_keys("resume_safe"))
    assert _NOT_COMPARED == frozenset(option_keys("locates_run"))
    assert MANAGED == option_keys("recipe", "managed")
    assert IGNORED == option_keys("recipe", "managed", "ignored")
    assert NOT_REPRODUCED == option_keys("reproduced", False)
    assert UNUSED == {objective: not_read_by(objective) for objective in ("contrastive", "mlm", "clm")}


def test_a_new_field_reaches_every_derived_list_without_editing_one():
    @dataclass
    class Wider(AdaptConfig):
        max_minutes: float | None = opt(None, "Stop after this many minutes.", resume_safe=True, recipe="ignored",
                                        reproduced=False, read_by=("mlm",))
        hidden: int = opt(1, "A key set with --config or --set only.", flag=False)

    configs = {**STAGE_CONFIGS, "adapt": Wider}
    assert "max_minutes" in command_flags(Wider) and "hidden" not in command_flags(Wider)
    # --help lists a command's own options first; a field given only another default keeps its place.
    assert command_flags(Wider)[0] == "max_minutes"
    assert COMMAND_FLAGS["pretrain"].index("out") < COMMAND_FLAGS["pretrain"].index("lr")
    assert "max_minutes" in option_keys("resume_safe", configs=configs)
    assert "max_minutes" in option_keys("recipe", "ignored", configs=configs)
    assert "max_minutes" not in option_keys("recipe", "managed", configs=configs)
    assert "max_minutes" in option_keys("reproduced", False, configs=configs)
    assert "max_minutes" not in option_keys("locates_run", configs=configs)
    assert "max_minutes" in not_read_by("clm", configs) and "max_minutes" in not_read_by("contrastive", configs)
    assert "max_minutes" not in not_read_by("mlm", configs)
    for rule in ("resume_safe", "locates_run"):
        assert "hidden" not in option_keys(rule, configs=configs)
    assert annotation(Wider, "max_minutes") == ((float,), True)  # the type, resolved, not parsed from a string


def test_a_key_shared_by_commands_has_one_rule():
    """The derived lists hold key names: a key must not be resume-safe for one command and not another."""
    seen: dict[str, tuple] = {}
    for cls in STAGE_CONFIGS.values():
        for f in dataclasses.fields(cls):
            rules = tuple(f.metadata[r] for r in ("resume_safe", "locates_run", "reproduced", "recipe"))
            assert seen.setdefault(f.name, rules) == rules, f"{cls.__name__}.{f.name}"
