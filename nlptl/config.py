"""Typed configs for every stage, and how they are resolved.

Precedence: dataclass defaults < `--config FILE.yaml` < explicit flags < `--set key=value`.
Each field's help text and rules (is it a flag, may it change on resume, ...: RULES) are plain data in
its metadata (read by the CLI without parsing any source), and `__post_init__` checks values with
messages that name the flag the user typed.

This module must stay light: the CLI imports it before any heavy library.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlptl.errors import UsageError, did_you_mean

ARCHS = ("gpt", "bert")
SIZES = ("tiny", "mini", "small", "base")
OBJECTIVES = ("auto", "mlm", "clm")
ADAPT_OBJECTIVES = (*OBJECTIVES, "contrastive")
LM_OBJECTIVES = ("mlm", "clm")
PAIR_LOSSES = ("cosine", "contrastive")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("linear", "stlr", "one-cycle", "cosine", "constant")
POOLINGS = ("auto", "cls", "mean", "last", "concat")
LONG_DOCS = ("truncate", "chunk")
DOC_POOLINGS = ("mean", "max", "attention")
BACKENDS = ("auto", "torch", "onnx")  # the engines nlptl/inference.py runs a classifier with (auto: by the directory)
TRACKERS = ("tensorboard", "mlflow", "wandb")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# Config keys that are not valid Python identifiers, or that users spell like the flag.
ALIASES = {"from": "from_model", "train": "train_file", "eval": "eval_file"}


# Panels of a command's --help (rich help only); a field's panel is "Training" unless it says otherwise.
TRAINING, DATA, OUTPUT, LORA, CURVE = "Training", "Data", "Output", "LoRA (parameter-efficient)", "Learning curve"
SERVER = "Server"


LR_HELP = ("Peak learning rate, or auto: a learning-rate range test on the training data picks it "
           "(fastai's lr_find; the curve and the choice are kept in the run directory).")
CONTRASTIVE = "Contrastive (--objective contrastive)"


# The rules of an option, declared on its field (`opt(..., resume_safe=True)`); the lists the commands
# apply are derived from them (COMMAND_FLAGS below, option_keys, not_read_by):
#   flag         a flag of every command whose config has the field; False: set with --config or --set
#                (or given as the command's argument: `nlptl serve MODEL`)
#   resume_safe  may change when a run is resumed: how long it trains, what it logs, where it reports
#   locates_run  says how this invocation finds and treats its run directory (--out, --resume, ...):
#                not part of what a resumed run must share (nlptl/checkpoint.py run_identity)
#   reproduced   part of the command that rebuilds the model (the model card); False: changes nothing in it
#   recipe       under `nlptl run`: "managed" (nlptl run decides it; a recipe may not set it), "ignored"
#                (a change alone does not rerun a stage), or None (a change reruns the stage)
#   read_by      the objectives that read it (None: every objective); the card leaves it out for the others
RULES = {"flag": True, "resume_safe": False, "locates_run": False, "reproduced": True, "recipe": None,
         "read_by": None}
RECIPE_RULES = (None, "managed", "ignored")
# overwrite, resume, resume_from: how this invocation treats an existing --out, not a setting of the run.
INVOCATION = {"locates_run": True, "reproduced": False, "recipe": "managed"}


def _rules(rules: dict[str, Any]) -> dict[str, Any]:
    unknown = set(rules) - set(RULES)
    if unknown or rules.get("recipe") not in RECIPE_RULES:
        raise TypeError(f"option rules: unknown {sorted(unknown) or rules.get('recipe')}")  # a mistake in this file
    return {**RULES, **rules}


def opt(default: Any, help: str, *, panel: str = TRAINING, short: str | None = None, negatable: bool = False,
        choices: tuple[str, ...] | None = None, **rules: Any) -> Any:
    """A config field, declared once: its default, its help, the values it accepts (`choices`, checked
    after resolution), how its flag looks (`short`: a one-letter alias; `negatable`: a boolean that
    also has --no-NAME) and its rules (RULES). The command line (cli.py), the resume check
    (checkpoint.py), the recipe's comparison (recipe.py) and the model card (card.py) are built from these."""
    return field(default=default, metadata={"help": help, "panel": panel, "short": short, "negatable": negatable,
                                            "choices": choices, **_rules(rules)})


def many(help: str, *, panel: str = TRAINING, factory: type = list, **rules: Any) -> Any:
    """A list field (a repeatable flag), empty by default (`factory`: dict for a mapping set from Python)."""
    return field(default_factory=factory, metadata={"help": help, "panel": panel, "short": None, "negatable": False,
                                                 "choices": None, **_rules(rules)})


def again(cls: type, name: str, default: Any) -> Any:
    """`cls`'s field `name` with another default (its help and flag stay)."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def flag_name(key: str) -> str:
    """How a message names a config key: its flag, or `--set key` for a key that no command has a flag
    for (every key a message names can be set the way the message says)."""
    if not any(key in keys for keys in COMMAND_FLAGS.values()):
        return f"--set {key}"
    return "--" + {v: k for k, v in ALIASES.items()}.get(key, key).replace("_", "-")


@dataclass
class TrainConfig:
    """Options every training stage shares; the loop in train.py reads only these."""

    out: str | None = opt(None, "Output run directory (default: a new directory under $NLPTL_HOME, default ./runs).",
                          panel=OUTPUT, short="-o", locates_run=True)
    overwrite: bool = opt(False, "Replace an --out directory that already holds a run.", panel=OUTPUT, **INVOCATION)
    max_steps: int | None = opt(None, "Stop after this many optimizer steps (overrides --epochs).", resume_safe=True)
    epochs: float = opt(1.0, "Passes over the training data.", resume_safe=True)
    batch_size: int = opt(16, "Examples (or blocks) per step per process; "
                          "global batch = batch x processes x grad-accum.")
    grad_accum: int = opt(1, "Gradient accumulation steps per optimizer step.")
    lr: float | str = opt(1e-4, "Peak learning rate.")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = opt(0.06, "Fraction of the steps spent warming the learning rate up.")
    max_grad_norm: float = opt(1.0, "Clip gradients to this norm (0 turns clipping off).")
    seed: int = opt(42, "Random seed (data order, initialisation, masking).")
    eval_every: int | None = opt(None, "Evaluate every N steps (default: a few times per run for finetune, at the end "
                                 "for LM stages).", resume_safe=True)
    patience: int | None = opt(None, "Early stopping: stop after N evaluations in a row that do not beat the best "
                               "score (finetune's selection score; adapt's probe accuracy with --probe, else held-out "
                               "perplexity) by --min-delta; the best checkpoint is kept. Default: off.",
                               resume_safe=True)
    min_delta: float = opt(0.0, "With --patience: the improvement of the score that counts as one.",
                            resume_safe=True)
    log_every: int = opt(10, "Log the training loss every N steps.", resume_safe=True, recipe="ignored")
    precision: str = opt("auto", "auto (bf16 where the hardware has it, else fp32), fp32, bf16 or fp16.",
                         choices=PRECISIONS)
    compile: bool = opt(False, "torch.compile the model for training (off by default: on a CPU the compile time "
                               "can outweigh the gain of a short run; see docs/performance.md).", negatable=True)
    fsdp: bool = opt(False, "With several processes (torchrun, accelerate launch): shard the weights, gradients and "
                     "optimizer state over them (FSDP2, each transformer block a unit); checkpoints are sharded too "
                     "and resume on the same number of processes. With one process: no effect.")
    schedule: str = opt("linear", "Learning-rate schedule: linear (warmup + decay), stlr (slanted triangular), "
                        "one-cycle, cosine, constant.", choices=SCHEDULES)
    cut_frac: float = opt(0.1, "stlr: fraction of the steps spent increasing the learning rate (ULMFiT: 0.1).")
    stlr_ratio: float = opt(32.0, "stlr: how much smaller the lowest learning rate is than the peak (ULMFiT: 32).")
    discriminative_lr: float = opt(1.0, "Each layer group's learning rate is the one above divided by this factor; one "
                                   "group per transformer block, so it compounds: 1.1-1.2 suits transformers, ULMFiT's "
                                   "2.6 starves the lower blocks (docs/results.md); 1 = off.")
    gradual_unfreeze: bool = opt(False, "Train only the head first, "
                                 "then unfreeze one more layer group from the top each epoch.", negatable=True)
    unfreeze_every: int | None = opt(None, "With --gradual-unfreeze: unfreeze a group every N steps "
                                     "(default: every epoch).")
    save_every: int | None = opt(500, "Write a resumable checkpoint every N steps into OUT/checkpoints (0 = never).",
                                 panel=OUTPUT, resume_safe=True, recipe="ignored")
    keep_last: int = opt(2, "Keep the last K checkpoints.", panel=OUTPUT, resume_safe=True, recipe="ignored")
    resume: bool = opt(False, "Continue from the latest complete checkpoint in --out.", panel=OUTPUT,
                       **INVOCATION)
    resume_from: str | None = opt(None, "Continue from this checkpoint directory (OUT/checkpoints/step-NNNNNN).",
                                  panel=OUTPUT, **INVOCATION)
    report_to: str = opt("none", "Also log the metrics to these trackers (comma-separated): tensorboard, mlflow, "
                         "wandb, all or none; they write under OUT/logs.",
                         panel=OUTPUT, resume_safe=True, reproduced=False)
    push_to_hub: str | None = opt(None, "Upload the finished run directory (model, tokenizer, model card) to this "
                                  "Hugging Face Hub repo (user/name).",
                                  panel=OUTPUT, resume_safe=True, reproduced=False)
    hub_private: bool = opt(False, "With --push-to-hub: create the repo private.", panel=OUTPUT,
                             resume_safe=True, reproduced=False)
    lora: bool = opt(False, "Train LoRA adapters (peft) instead of all weights; the classifier head stays fully "
                     "trainable. Needs `pip install nlptl[lora]`.", panel=LORA)
    lora_r: int = opt(8, "LoRA rank.", panel=LORA)
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (the update is scaled by alpha / r).", panel=LORA)
    lora_dropout: float = opt(0.05, "Dropout on the LoRA branch.", panel=LORA)
    lora_targets: str | None = opt(None, "Comma-separated module names LoRA adapts (default by architecture: "
                                   "query,value for BERT/RoBERTa, q_lin,v_lin for DistilBERT, c_attn for GPT-2, "
                                   "q_proj,v_proj for Llama-style).", panel=LORA)
    merge: bool = opt(False, "With --lora: also write the merged model "
                      "(loads without peft; usable as the next stage's --from).", panel=LORA)

    # Whether --lr auto (the learning-rate range test, nlptl/lr_find.py) is offered by this stage, and
    # whether --lr may stay unset (finetune: the checkpoint chooses; adapt: the objective). The rule that
    # resolves it for every stage: nlptl/rates.py.
    LR_AUTO = False
    LR_UNSET = False

    def __post_init__(self) -> None:
        self.lr = learning_rate(self.lr, self.LR_AUTO, self.LR_UNSET)
        finite(self)
        seed_range(self)
        positive(self, "epochs", "batch_size", "grad_accum", "log_every")
        if self.lr not in ("auto", None):
            positive(self, "lr")
        self.report_to = ",".join(report_targets(self.report_to))
        if self.push_to_hub is not None and not REPO_ID.fullmatch(self.push_to_hub):
            raise UsageError(f"--push-to-hub expects a repo id 'user-or-org/name' (got '{self.push_to_hub}')")
        if self.lora:
            positive(self, "lora_r", "lora_alpha")
            bounded(self, "lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)")
        elif self.merge or self.lora_targets:
            raise UsageError(f"{'--merge' if self.merge else '--lora-targets'} needs --lora")
        choice(self, "schedule")
        bounded(self, "discriminative_lr", lambda v: v >= 1, ">= 1", "; 1 turns it off")
        bounded(self, "cut_frac", lambda v: 0 < v < 1, "in (0, 1)")
        bounded(self, "stlr_ratio", lambda v: v >= 1, ">= 1")
        bounded(self, "save_every", lambda v: v >= 0, ">= 0")
        positive(self, "keep_last")
        if self.resuming and not self.out:
            raise UsageError("--resume needs --out DIR: the run directory to continue")
        for name in ("unfreeze_every", "max_steps", "eval_every", "patience"):
            bounded(self, name, lambda v: v > 0, "a positive integer")
        bounded(self, "warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)")
        bounded(self, "min_delta", lambda v: v >= 0, ">= 0")
        if self.min_delta and not self.patience:
            raise UsageError("--min-delta needs --patience N (early stopping is off without it)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UsageError("--weight-decay and --max-grad-norm must be >= 0")
        choice(self, "precision")

    @property
    def resuming(self) -> bool:
        """--resume or --resume-from: this run continues a checkpoint."""
        return self.resume or bool(self.resume_from)


@dataclass
class LMConfig(TrainConfig):
    """Options of the language-modelling stages (pretrain with a corpus, adapt)."""

    corpus: str | None = opt(None, "Corpus name (see `nlptl corpora`), hf:NAME[:CONFIG][@SPLIT], or a "
                             ".txt/.csv/.jsonl/.parquet file, directory or glob; a mixture as NAME:SHARE,NAME:SHARE.",
                             panel=DATA)
    text_column: str = opt("text", "Text column of .csv/.jsonl/.parquet and hf: corpora.", panel=DATA)
    streaming: bool = opt(False, "Read the corpus as training goes (nothing tokenized ahead or cached; needs "
                          "--max-steps); the first --max-eval-blocks blocks are held out.",
                          panel=DATA, read_by=LM_OBJECTIVES)
    num_proc: int | None = opt(None, "Processes that tokenize a corpus not yet in the cache (default: the usable "
                               "cores).", panel=DATA, resume_safe=True, read_by=LM_OBJECTIVES)
    objective: str = opt("auto", "auto (MLM for encoders, CLM for decoders), mlm or clm.", choices=OBJECTIVES)
    block_size: int = opt(128, "Tokens per packed training block.", panel=DATA)
    validation_percentage: float = opt(5.0, "Percentage of the packed blocks held out (fixed, seeded) for perplexity.",
                                       panel=DATA, read_by=LM_OBJECTIVES)
    max_eval_blocks: int = opt(2000, "At most this many held-out blocks are scored.", panel=DATA,
                              read_by=LM_OBJECTIVES)
    mlm_probability: float = opt(0.15, "Fraction of tokens (or words) masked for the MLM objective.",
                                 read_by=("mlm",))
    whole_word_mask: bool = opt(False, "MLM: mask whole words (all their tokens), for any fast tokenizer.",
                                negatable=True, read_by=("mlm",))
    train_file: str | None = opt(None, "With --corpus task:NAME: the task's training file whose texts are the corpus.",
                                 panel=DATA)
    lr: float | str = again(TrainConfig, "lr", 1e-4)
    warmup_ratio: float = again(TrainConfig, "warmup_ratio", 0.05)
    head_warmup: float = opt(0.2, "When the checkpoint has no LM head (a bare encoder such as all-MiniLM-L6-v2) and "
                             "one is added: the share of the steps in which only the new head trains, the body frozen, "
                             "before the body joins (ULMFiT's gradual unfreezing at the hand-off; docs/results.md, "
                             "composing stages); 0 = off.", read_by=LM_OBJECTIVES)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "block_size", "max_eval_blocks")
        bounded(self, "head_warmup", lambda v: 0 <= v < 1, "in [0, 1)")
        choice(self, "objective")
        bounded(self, "validation_percentage", lambda v: 0 < v < 50, "in (0, 50)")
        bounded(self, "mlm_probability", lambda v: 0 < v < 1, "in (0, 1)")
        bounded(self, "num_proc", lambda v: v > 0, "a positive integer")
        if self.streaming and not self.max_steps:
            raise UsageError("--streaming reads a corpus of unknown length: pass --max-steps N")
        if self.streaming and self.lr == "auto":
            # The range test would read (and use up) the first blocks of the stream the run trains on.
            raise UsageError("--lr auto runs a range test on the training blocks, which --streaming does not keep; "
                             "pass a number (or find it with --lr auto on a cached sample of the corpus)")


@dataclass
class PretrainConfig(LMConfig):
    """`nlptl pretrain`: a general language model, trained from scratch or taken from a checkpoint."""

    arch: str = opt("gpt", "Model family for training from scratch: gpt (causal LM) or bert (masked LM).",
                    choices=ARCHS)
    size: str = opt("tiny", "Model size preset: tiny (2x64), mini (4x256), small (6x512), base (12x768).",
                    choices=SIZES)
    vocab_size: int | None = opt(None, "Tokenizer vocabulary size "
                                 "(default by size: 4k tiny, 8k mini, 16k small, 32k base).")
    from_model: str | None = opt(None, "Take this existing general checkpoint (hub id or local dir) "
                                 "instead of training from scratch.")
    lr: float | str = again(TrainConfig, "lr", 5e-4)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self, "arch")
        choice(self, "size")
        if self.vocab_size is not None and self.vocab_size < 64:
            raise UsageError(f"--vocab-size must be at least 64 (got {self.vocab_size})")
        if self.from_model is None and self.corpus is None:
            raise UsageError("pretrain needs --corpus CORPUS to train from scratch, "
                             "or --from MODEL to take a checkpoint")
        if self.from_model is not None:
            # The checkpoint fixes the architecture, size and vocabulary: such flags would be ignored,
            # yet recorded in config.yaml and the card's reproduce line.
            ignored = [flag_name(k) for k, default in (("arch", "gpt"), ("size", "tiny"), ("vocab_size", None))
                       if getattr(self, k) != default]
            if ignored:
                raise UsageError(f"{' and '.join(ignored)} {'describes' if len(ignored) == 1 else 'describe'} "
                                 f"a model built from scratch; --from {self.from_model} "
                                 f"brings its own: drop {' and '.join(ignored)}")


@dataclass
class AdaptConfig(LMConfig):
    """`nlptl adapt`: continue a language model on domain (or task) text."""

    from_model: str | None = opt(None, "Language model to adapt: run dir, local checkpoint or hub id "
                                 "(default: latest pretrain run).")
    corpus: str | None = opt(None, "Domain corpus: a name (see `nlptl corpora`), task:NAME, hf:NAME[:CONFIG][@SPLIT], "
                             "or a file/dir/glob; a mixture as NAME:SHARE,NAME:SHARE "
                             "(e.g. reviews:0.95,wikitext-103:0.05 replays general text).", panel=DATA)
    lr: float | str | None = opt(None, "Peak learning rate. Default: 1e-4 for MLM and CLM; 2e-5 for --objective "
                                 "contrastive (SetFit's body rate, the one docs/results.md measured). Or auto (MLM, "
                                 "CLM): a learning-rate range test on the training data picks it (fastai's lr_find; "
                                 "the curve and the choice are kept in the run directory).")
    lr_find_steps: int = opt(100, "--lr auto: steps of the learning-rate range test.", flag=False,
                             read_by=LM_OBJECTIVES)
    LR_AUTO = True
    LR_UNSET = True  # the objective chooses (rates.OBJECTIVE_RATES); the record keeps it unset
    probe: str | None = opt(None, "A labelled file (text and label columns: --text-column, --label-column) that guards "
                            "the adaptation: a logistic regression on the frozen, pooled features is scored on it "
                            "before training and at each evaluation, the checkpoint kept is the best by probe, and "
                            "the run warns if it ends below its start. Default: the task's --train with --corpus "
                            "task:NAME (MLM and CLM).", panel=DATA, read_by=LM_OBJECTIVES)
    objective: str = opt("auto", "auto (MLM for encoders, CLM for decoders), mlm, clm, or contrastive (SetFit-style: "
                         "sentence pairs from the labels of --corpus task:NAME --train FILE; same label = similar).",
                         choices=ADAPT_OBJECTIVES)
    # read_by: --probe reads it too, but the card names it only where the labels train the body.
    label_column: str = opt("label", "--objective contrastive: the label column of --train; --probe: that of the "
                            "probe file.", panel=DATA, read_by=("contrastive",))
    pairs_per_example: int = opt(20, "--objective contrastive: sentence pairs drawn per labelled example, "
                                 "alternately positive (same label) and negative, so an odd count gives one more "
                                 "positive (SetFit 0.x: num_iterations 10 = 20 pairs).",
                                 panel=CONTRASTIVE, read_by=("contrastive",))
    pair_loss: str = opt("cosine", "--objective contrastive: cosine (SetFit's CosineSimilarityLoss: MSE between the "
                         "cosine of the pair and 1/0) or contrastive (Hadsell et al., margin 0.5 on the cosine "
                         "distance).", choices=PAIR_LOSSES, panel=CONTRASTIVE,
                         read_by=("contrastive",))
    pooling: str = opt("auto", "--objective contrastive: how a sentence is pooled: cls, mean, last; auto = what the "
                       "checkpoint says (sentence-transformers' 1_Pooling), else mean for encoders, last for decoders. "
                       "Recorded in the output, so finetune pools the same way.", choices=POOLINGS,
                       panel=CONTRASTIVE, read_by=("contrastive",))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.corpus is None:
            raise UsageError("adapt needs --corpus CORPUS (a name such as 'reviews', or a file)")
        positive(self, "pairs_per_example")
        choice(self, "pair_loss")
        choice(self, "pooling")
        if self.objective == "contrastive":
            if self.lr == "auto":
                raise UsageError("--lr auto is offered for the LM objectives and finetune; --objective contrastive "
                                 "takes a number (its default, 2e-5, is SetFit's)")
            if not self.corpus.startswith("task:"):
                raise UsageError(f"--objective contrastive draws pairs from labels: pass --corpus task:NAME --train "
                                 f"FILE (got --corpus {self.corpus})")
            if self.pooling == "concat":
                raise UsageError("--objective contrastive: --pooling concat has no sentence-embedding form; use cls, "
                                 "mean or last")
            if self.lora:
                raise UsageError("--objective contrastive trains the whole encoder; drop --lora")
            if self.probe:
                raise UsageError("--probe guards the MLM and CLM objectives; --objective contrastive scores its own "
                                 "held-out pairs (pair_loss): drop --probe")


@dataclass
class PreprocessConfig:
    """`nlptl preprocess`: tokenize and pack a corpus into the cache that adapt and pretrain read."""

    from_model: str | None = opt(None, "The model whose tokenizer packs the corpus: "
                                 "run dir, local checkpoint or hub id.")
    corpus: str | None = again(AdaptConfig, "corpus", None)
    text_column: str = again(LMConfig, "text_column", "text")
    train_file: str | None = again(LMConfig, "train_file", None)
    block_size: int = again(LMConfig, "block_size", 128)
    objective: str = again(LMConfig, "objective", "auto")
    whole_word_mask: bool = again(LMConfig, "whole_word_mask", False)
    num_proc: int | None = opt(None, "Processes that tokenize (default: the usable cores).", panel=DATA,
                               resume_safe=True)

    def __post_init__(self) -> None:
        positive(self, "block_size")
        choice(self, "objective")
        bounded(self, "num_proc", lambda v: v > 0, "a positive integer")
        if not self.from_model or not self.corpus:
            raise UsageError("preprocess needs --from MODEL (its tokenizer) and --corpus CORPUS")


@dataclass
class FinetuneConfig(TrainConfig):
    """`nlptl finetune`: a sequence classifier on top of the (adapted) language model."""

    from_model: str | None = opt(None, "Model to fine-tune: run dir, local checkpoint or hub id "
                                 "(default: latest adapt, else pretrain run).")
    task: str = opt("sentiment", "Task name (see `nlptl tasks`): sentiment; "
                    "classification, multilabel or regression with --train.", panel=DATA)
    train_file: str | None = opt(None, "Labelled training file (.csv/.jsonl/.parquet/.tsv).", panel=DATA)
    eval_file: str | None = opt(None, "Labelled evaluation file for model selection "
                                "(default: a seeded slice of --train).", panel=DATA)
    text_column: str = opt("text", "Text column; two, comma-separated (premise,hypothesis), for sentence pairs.",
                           panel=DATA)
    label_column: str = opt("label", "Label column; "
                            "for --task multilabel also several 0/1 columns, comma-separated (a,b,c).", panel=DATA)
    label_separator: str = opt(";", "--task multilabel: what separates the labels in one cell ('sports;politics').",
                               panel=DATA)
    max_length: int | None = opt(None, "Truncate texts to this many tokens (default: min(256, model positions); with "
                                 "--long-docs chunk: 8 windows).", panel=DATA)
    long_docs: str = opt("truncate", "Texts longer than a window: truncate, or chunk (overlapping windows, each "
                         "encoded, pooled into one document; ULMFiT's BPT3C).", panel=DATA, choices=LONG_DOCS)
    window: int | None = opt(None, "--long-docs chunk: tokens per window (default: min(256, model positions)).",
                             panel=DATA)
    stride: int | None = opt(None, "--long-docs chunk: tokens each window shares with the one before "
                             "(default: a quarter window).", panel=DATA)
    doc_pooling: str = opt("mean", "--long-docs chunk: how windows become one document: "
                           "mean, max, or attention (learned).", choices=DOC_POOLINGS)
    threshold: float = opt(0.5, "--task multilabel: a label is predicted when its probability is at least this.")
    tune_threshold: bool = opt(False, "--task multilabel: choose the threshold that maximises micro-F1 "
                               "on the eval split.", negatable=True)
    class_weights: str = opt("none", "Loss weights per class: none, auto (inverse frequency; multilabel: "
                             "negatives/positives per label) or w1,w2,... in label order.")
    # None: the rates below, chosen by what --from was trained for (rates.resolve).
    lr: float | str | None = opt(None, "Peak learning rate. Default: 1e-4; after a contrastive adapt stage, 1e-5 for "
                                 "the body and 1e-2 for the head, which keeps what the pairs taught (docs/results.md, "
                                 "few labels). auto: a learning-rate range test on the training data picks it "
                                 "(fastai's lr_find; the curve and the choice are kept in the run directory).")
    lr_find_steps: int = opt(100, "--lr auto: steps of the learning-rate range test.", flag=False)
    LR_AUTO = True
    LR_UNSET = True
    eval_fraction: float = opt(0.1, "Without --eval: fraction of the training data held out for model selection.",
                               panel=DATA)
    numeric_classes: bool = opt(False, "Take labels that look like continuous numbers as class names all the same "
                                "(each distinct value a class).", panel=DATA)
    n_labels: str | None = opt(None, "Learning curve: train on these numbers of labels, e.g. 100,500,1000,all "
                               "(stratified subsets, fixed by seed).", panel=CURVE)
    seeds: int = opt(1, "Learning curve: repeat each point with this many seeds (seed, seed+1, ...); "
                     "reports mean and std.", panel=CURVE)
    compare: list[str] = many("Learning curve: more models to compare with --from (repeatable).", panel=CURVE)
    pooling: str = opt("auto", "Classifier pooling: cls, mean, last (token), concat ([last, max, mean], ULMFiT); "
                       "auto = the pooling the checkpoint was trained with where it says so (sentence encoders, "
                       "contrastive adapt runs: 1_Pooling), else cls for encoders, last for decoders.",
                       choices=POOLINGS)
    min_steps: int = opt(100, "Train at least this many optimizer steps, whatever --epochs gives (few labels: 3 epochs "
                         "of 64 examples would be 6 steps); --max-steps overrides it; 0 = off. 100: measured on "
                         "validation data (docs/results.md, few labels).")
    head_lr: float | None = opt(None, "Peak learning rate of the head (classifier, pooler, final norm); default: --lr, "
                                "or 1e-2 after a contrastive adapt stage (1e-3 for the head measured no better on "
                                "validation from a plain encoder: docs/results.md, few labels).")
    batch_size: int = again(TrainConfig, "batch_size", 32)
    epochs: float = again(TrainConfig, "epochs", 3.0)
    warmup_ratio: float = again(TrainConfig, "warmup_ratio", 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length is not None and self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2 (got {self.max_length})")
        bounded(self, "eval_fraction", lambda v: 0 < v < 1, "in (0, 1)")
        choice(self, "pooling")
        choice(self, "long_docs")
        choice(self, "doc_pooling")
        bounded(self, "threshold", lambda v: 0 < v < 1, "in (0, 1)")
        at_least_two(self, "window")
        bounded(self, "stride", lambda v: v >= 0, ">= 0")
        positive(self, "lr_find_steps")
        if self.long_docs == "truncate" and (self.window is not None or self.stride is not None):
            raise UsageError(f"{'--window' if self.window is not None else '--stride'} needs --long-docs chunk")
        if self.window is not None and self.stride is not None and self.stride >= self.window:
            raise UsageError(f"--stride must be smaller than --window (got {self.stride} >= {self.window})")
        if not self.label_separator:
            raise UsageError("--label-separator must not be empty")
        if len(self.text_columns) > 2:
            raise UsageError(f"--text-column takes one column, or two for sentence pairs (got {self.text_column})")
        class_weights(self.class_weights)
        positive(self, "seeds")
        if self.seed + self.seeds - 1 > SEED_MAX:
            raise UsageError(f"--seed {self.seed} with --seeds {self.seeds} runs seeds past {SEED_MAX} (the largest "
                             "seed NumPy takes); lower --seed")
        bounded(self, "min_steps", lambda v: v >= 0, ">= 0")
        bounded(self, "head_lr", lambda v: v > 0, "positive")
        if self.learning_curve and self.push_to_hub:
            raise UsageError("--push-to-hub uploads a model; a learning curve (--n-labels, --seeds, --compare) keeps "
                             "none: drop one of them")
        for n in self.label_counts() or []:
            if n is not None and n < 2:
                raise UsageError(f"--n-labels: each count must be at least 2 (got {n})")

    def label_counts(self) -> list[int | None] | None:
        """--n-labels as numbers (None = all), or None when not given."""
        if not self.n_labels:
            return None
        counts: list[int | None] = []
        for part in str(self.n_labels).split(","):
            part = part.strip().lower()
            if part == "all":
                counts.append(None)
            elif part.isdigit():
                counts.append(int(part))
            else:
                raise UsageError(f"--n-labels expects numbers and 'all' separated by commas (got '{self.n_labels}')")
        return counts

    @property
    def learning_curve(self) -> bool:
        return bool(self.n_labels) or self.seeds > 1 or bool(self.compare)

    @property
    def text_columns(self) -> list[str]:
        return [c.strip() for c in self.text_column.split(",")]

    @property
    def label_columns(self) -> list[str]:
        return [c.strip() for c in self.label_column.split(",")]


@dataclass
class EvaluateConfig:
    """`nlptl evaluate`: accuracy/F1 of a classifier, or perplexity of a language model."""

    model: str | None = opt(None, "Run dir or checkpoint to evaluate (default: latest finetune run).")
    data: str | None = opt(None, "Labelled file (classifier) or text corpus (language model); "
                           "task:NAME for a task's test file.", panel=DATA)
    text_column: str = opt("text", "Text column.", panel=DATA)
    label_column: str = opt("label", "Label column (classifiers).", panel=DATA)
    batch_size: int = opt(32, "Examples per batch.")
    max_length: int | None = opt(None, "Truncate texts to this many tokens "
                                 "(default: the length the classifier was trained with).")
    block_size: int | None = opt(None, "LM block size (default: the one the model was trained with).")
    mlm_probability: float = opt(0.15, "Masking rate for MLM perplexity.")
    seed: int | None = opt(None, "Seed of the MLM masks (default: the fixed masks every nlptl LM stage scores with).")

    def __post_init__(self) -> None:
        finite(self)
        positive(self, "batch_size")
        at_least_two(self, "max_length", "block_size")
        seed_range(self)
        if self.data is None:
            raise UsageError("evaluate needs --data FILE")


@dataclass
class AuditConfig:
    """`nlptl audit`: the texts a model is scored on, against every corpus and file of its lineage."""

    model: str = opt("", "A run directory: its lineage names every corpus and file the model trained on.", flag=False)
    data: list[str] = many("A file the model is scored on (repeatable): checked for exact and near duplicates "
                           "in every corpus, train and probe file of the lineage. The run's own --eval files are "
                           "always checked too (without --data, only they are).", panel=DATA)
    text_column: str = opt("text", "Text column of --data (two, comma-separated, for text pairs).", panel=DATA)
    num_proc: int | None = opt(None, "Processes that read the sources (default: the usable cores).", resume_safe=True)

    def __post_init__(self) -> None:
        required(self, model="audit needs MODEL: a run directory")
        if self.num_proc is not None:
            positive(self, "num_proc")


@dataclass
class PredictConfig:
    """`nlptl predict`: labels with scores for texts."""

    model: str | None = opt(None, "Classifier run dir or checkpoint (default: latest finetune run).")
    texts: list[str] = many("Texts to classify.", flag=False)  # the command's TEXTS arguments
    input: str | None = opt(None, "File of texts, one per line (a blank line is answered as blank, not "
                            "classified), or - for standard input; or a table (.csv, .tsv, .jsonl, .parquet) with "
                            "--text-column.", short="-i")
    text_column: str = opt("text", "Text column of a table --input; two, comma-separated, for a pair model.",
                           panel=DATA)
    id_column: str | None = opt(None, "Column of a table --input carried into each result (its ids), under its "
                                "own name.", panel=DATA)
    output: str | None = opt(None, "Write the results here (JSON Lines, in input order) chunk by chunk: memory "
                             "stays flat, the same command again continues a killed run, torchrun processes share "
                             "the chunks.", panel=OUTPUT)
    chunk_size: int = opt(10_000, "With --output: texts per chunk, the unit of resuming and of sharing over "
                          "processes.", panel=OUTPUT)
    batch_size: int = opt(32, "Texts per batch.")
    max_length: int | None = opt(None, "Truncate texts to this many tokens "
                                 "(default: the length the classifier was trained with).")
    backend: str = opt("auto", "Run the model with torch, or with onnxruntime (a directory written by `nlptl export "
                       "--format onnx`); auto: onnx for such a directory, torch otherwise.", choices=BACKENDS)
    int8: bool = opt(False, "With an export made with --quantize int8: run its int8 model (model_quantized.onnx, "
                     "faster, its labels may differ a little) instead of the fp32 model.onnx.")
    raw_scores: bool = opt(False, "Scores of the logits themselves, not calibrated by the temperature finetune "
                           "fitted on its eval split (a model without one answers with these anyway).")
    abstain_below: float | None = opt(None, "One label of a set: answer \"abstain\" (label null, \"abstain\": true, "
                                      "with the scores) when the top score is under this probability.")

    def __post_init__(self) -> None:
        positive(self, "batch_size", "chunk_size")
        at_least_two(self, "max_length")
        choice(self, "backend")
        bounded(self, "abstain_below", lambda v: 0 < v <= 1, "a probability in (0, 1]")


@dataclass
class ServeConfig:
    """`nlptl serve`: a classifier behind an HTTP API (POST /predict, GET /health, GET /info)."""

    model: str = opt("", "Classifier to serve: a finetune run, a checkpoint or an `nlptl export` directory.",
                     flag=False)
    backend: str = again(PredictConfig, "backend", "auto")
    int8: bool = again(PredictConfig, "int8", False)
    raw_scores: bool = again(PredictConfig, "raw_scores", False)
    abstain_below: float | None = again(PredictConfig, "abstain_below", None)
    host: str = opt("127.0.0.1", "Address to listen on "
                    "(0.0.0.0: every interface; put a proxy with TLS and auth in front).", panel=SERVER)
    port: int = opt(8000, "Port to listen on.", panel=SERVER)
    workers: int = opt(1, "Server processes, each with its own copy of the model "
                       "(on a CPU: cores / threads per worker).", panel=SERVER)
    max_batch_size: int = opt(32, "Dynamic batching: the most texts run through the model at once.")
    max_wait_ms: float = opt(5.0, "Dynamic batching: how long the first request of a batch waits for others (ms).")
    max_batch_tokens: int = opt(256, "Dynamic batching: a gathered batch runs in length-sorted passes of at most this "
                                "many tokens (texts x the longest, padding included), "
                                "so long texts do not pad short ones.")
    max_request_bytes: int = opt(1_000_000, "Largest request body accepted (bytes); larger ones get 413.", panel=SERVER)
    max_texts: int = opt(256, "Most texts in one request; more get 413.", panel=SERVER)
    max_length: int | None = again(PredictConfig, "max_length", None)
    threads: int | None = opt(None, "Torch / onnxruntime threads per worker (default: torch's choice, the cores).")
    info_paths: bool = opt(False, "Show absolute paths (the model's, the base model's, the training files') in GET "
                           "/info; by default only their last part, so clients learn nothing of the server's files.",
                           panel=SERVER)
    drain_seconds: float = opt(30.0, "On SIGTERM or Ctrl-C: how long the requests in flight may take to be answered "
                               "before the server exits; those still waiting then get 503 (0: at once).", panel=SERVER)

    def __post_init__(self) -> None:
        finite(self)
        positive(self, "workers", "max_batch_size", "max_batch_tokens", "max_request_bytes", "max_texts")
        at_least_two(self, "max_length")
        bounded(self, "max_wait_ms", lambda v: v >= 0, "0 or more")
        bounded(self, "drain_seconds", lambda v: v >= 0, "0 or more")
        bounded(self, "port", lambda v: 1 <= v <= 65535, "a port number (1 to 65535)")
        bounded(self, "threads", lambda v: v >= 1, "positive")
        bounded(self, "abstain_below", lambda v: 0 < v <= 1, "a probability in (0, 1]")
        choice(self, "backend")
        required(self, model="serve needs MODEL: a finetune run directory, a checkpoint or an ONNX export")


@dataclass
class ExportConfig:
    """`nlptl export`: a classifier as an ONNX model, checked against torch, optionally int8."""

    model: str = opt("", "Classifier run dir or checkpoint to export.", flag=False)
    out: str = opt("", "Directory to write the export to.", panel=OUTPUT, short="-o", locates_run=True)
    format: str = opt("onnx", "Export format.", choices=("onnx",))
    quantize: str | None = opt(None, "Also write a dynamically quantized model (int8 weights), which predict and "
                               "serve run with --int8; its accuracy change on --data is reported.", choices=("int8",))
    data: str | None = opt(None, "Labelled file for the parity check and the int8 accuracy change (default: a "
                           "few built-in sentences); for a pair model each text is 'first<TAB>second', as predict "
                           "reads them.", panel=DATA)
    text_column: str = again(EvaluateConfig, "text_column", "text")
    label_column: str = again(EvaluateConfig, "label_column", "label")
    max_length: int | None = again(PredictConfig, "max_length", None)
    overwrite: bool = opt(False, "Replace an --out directory that holds an export.", panel=OUTPUT, **INVOCATION)

    def __post_init__(self) -> None:
        at_least_two(self, "max_length")
        choice(self, "format")
        if self.quantize is not None:
            choice(self, "quantize")
        required(self, model="export needs MODEL: a finetune run directory", out="export needs --out DIR")


@dataclass
class MergeConfig:
    """`nlptl merge`: a run trained with --lora (without --merge) as one plain checkpoint."""

    model: str = opt("", "A run trained with --lora whose adapter is not merged.", flag=False)
    out: str = opt("", "Directory to write the merged run to.", panel=OUTPUT, short="-o", locates_run=True)
    overwrite: bool = opt(False, "Replace an --out directory that holds a merged run.", panel=OUTPUT,
                          **INVOCATION)

    def __post_init__(self) -> None:
        required(self, model="merge needs MODEL: a run directory trained with --lora", out="merge needs --out DIR")


SWEEP = "Sweep"
# The stages a sweep searches: those that select on a labelled eval split (finetune: --eval, or a seeded slice
# of --train). The others are refused with the reason (nlptl/stages/sweep.py).
SWEEPABLE = ("finetune",)


@dataclass
class SweepConfig:
    """`nlptl sweep`: a search over a stage's options (Optuna), each trial a run directory, selected on eval data."""

    stage: str = opt("", "The stage whose options are searched: finetune (it selects on its eval split).",
                     flag=False)
    options: dict[str, Any] = many("The stage's own options, as its flags give them ({config key: value}); the "
                                   "command line takes them after STAGE.", flag=False, factory=dict)
    stage_config: str | None = opt(None, "The stage's --config FILE.", flag=False)
    stage_sets: list[str] = many("The stage's --set key=value.", flag=False)
    space: str = opt("", "What to search: KEY=DIST separated by ';', DIST one of loguniform(a,b), uniform(a,b), "
                     "int(a,b), choice(v1,v2,...) (e.g. \"lr=loguniform(1e-5,1e-3);batch_size=choice(16,32)\"), or "
                     "a YAML file of KEY: DIST.", panel=SWEEP)
    trials: int = opt(10, "Trials the study ends with, those of an earlier run of the same sweep counted.",
                      panel=SWEEP)
    parallel: int = opt(1, "Trials run at once, each in its own process (1: one after the other, in this "
                        "process).", panel=SWEEP)
    out: str | None = opt(None, "The sweep's directory: the study (study.db), the trials (trials/NNN), sweep.json; "
                          "the same command again continues the sweep.", panel=OUTPUT, short="-o", locates_run=True)

    def __post_init__(self) -> None:
        required(self, stage="sweep needs STAGE: the stage whose options are searched (finetune)",
                 out="sweep needs --out DIR: where the study and its trials go (the same command again continues "
                     "it)", space="sweep needs --space: e.g. \"lr=loguniform(1e-5,1e-3);batch_size=choice(16,32)\"")
        positive(self, "trials", "parallel")
        if self.stage in ("evaluate", "predict"):
            raise UsageError(f"sweep selects on eval data, never test: {self.stage} scores --data, data to report "
                             "on, not to choose with; sweep finetune, whose --eval picks the trial")
        if self.stage in STAGE_CONFIGS and self.stage not in SWEEPABLE:
            raise UsageError(f"sweep selects on a labelled eval split, and {self.stage} has none; sweep finetune "
                             "(its --eval, or a seeded slice of --train)")
        if self.stage not in SWEEPABLE:
            raise UsageError(f"sweep: unknown STAGE '{self.stage}'{did_you_mean(self.stage, SWEEPABLE)}; "
                             f"choose {', '.join(SWEEPABLE)}")


@dataclass
class RunConfig:
    """`nlptl run`: the stages of a recipe file, each run, resumed or reused."""

    recipe: str = opt("", "Recipe YAML: out: (root directory), defaults: (shared keys), stages: (a list of stages).")
    sets: list[str] = many("Override a key: --set NAME.key=value for one stage, --set key=value for every stage "
                           "that has it, --set out=DIR for the root (repeatable).")
    dry_run: bool = opt(False, "Show the plan (each stage: run, reuse or resume; from; out; why) and stop.")


@dataclass
class ReportConfig:
    """`nlptl report`: lineage, metrics of every stage in the chain, and plots of a run."""

    run_dir: str | None = opt(None, "The run directory to report on.")

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise UsageError("report needs RUN_DIR: a run directory (e.g. runs/finetune-...)")


STAGE_CONFIGS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "adapt": AdaptConfig,
    "preprocess": PreprocessConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "predict": PredictConfig,
    "serve": ServeConfig,
    "export": ExportConfig,
    "merge": MergeConfig,
    "audit": AuditConfig,
    "sweep": SweepConfig,
}



def command_flags(cls: type) -> tuple[str, ...]:
    """The flags of a command (its config's fields declared `flag`), in --help order: the options its
    own config class declares first, then those of the classes it builds on (finetune's --task before
    the training options every stage shares); a field given only another default (`again`) keeps its
    place. The other fields are set with --config FILE or --set."""
    classes = [k for k in cls.__mro__ if dataclasses.is_dataclass(k)]
    order: dict[str, None] = {}
    for i, klass in enumerate(classes):
        for key in vars(klass).get("__annotations__", {}):
            meta = klass.__dataclass_fields__[key].metadata
            if not any(key in vars(base).get("__annotations__", {}) and base.__dataclass_fields__[key].metadata == meta
                       for base in classes[i + 1:]):
                order.setdefault(key)
    fields = cls.__dataclass_fields__
    return tuple(key for key in order if fields[key].metadata.get("flag"))


COMMAND_FLAGS: dict[str, tuple[str, ...]] = {stage: command_flags(cls) for stage, cls in STAGE_CONFIGS.items()}


def option_keys(rule: str, *values: Any, configs: dict[str, type] | None = None) -> tuple[str, ...]:
    """The config keys of every command whose `rule` (RULES) has one of `values` (default: True), in
    the order they are declared: option_keys("resume_safe"), option_keys("reproduced", False)."""
    values = values or (True,)
    keys: dict[str, None] = {}
    for cls in (configs or STAGE_CONFIGS).values():
        keys.update((f.name, None) for f in dataclasses.fields(cls) if f.metadata.get(rule, RULES[rule]) in values)
    return tuple(keys)


def not_read_by(objective: str, configs: dict[str, type] | None = None) -> tuple[str, ...]:
    """The config keys `objective` does not read: those whose `read_by` names only other objectives."""
    keys: dict[str, None] = {}
    for cls in (configs or STAGE_CONFIGS).values():
        keys.update((f.name, None) for f in dataclasses.fields(cls)
                    if f.metadata.get("read_by") is not None and objective not in f.metadata["read_by"])
    return tuple(keys)


# Keys given as a command's positional argument (`nlptl serve MODEL`), not as a flag; messages name them
# by the argument's name.
POSITIONAL: dict[str, dict[str, str]] = {"serve": {"model": "MODEL"}, "export": {"model": "MODEL"},
                                         "merge": {"model": "MODEL"}, "audit": {"model": "MODEL"},
                                         "sweep": {"stage": "STAGE"}}


@dataclass(frozen=True)
class Flag:
    """How a config field looks on the command line."""

    key: str  # the field
    names: tuple[str, ...]  # ("--out", "-o"): the first is the one messages and the model card use
    negative: str | None  # "--no-compile" for a negatable boolean
    kind: str  # the field's type: bool, int, float, str or list
    help: str
    panel: str
    default: Any = None  # this stage's default (stages differ: finetune's --lr is not pretrain's)
    choices: tuple[str, ...] | None = None


def flags(stage: str) -> dict[str, Flag]:
    """The flags of `nlptl STAGE`, by field name, in --help order."""
    cls = STAGE_CONFIGS[stage]
    fields = cls.__dataclass_fields__
    out = {}
    for key in COMMAND_FLAGS[stage]:
        meta, name = fields[key].metadata, flag_name(key)
        kinds, _ = annotation(cls, key)
        # A number or a word (--lr auto) is taken as a word: the config converts it.
        kind = "str" if str in kinds[1:] else "list" if typing.get_origin(kinds[0]) is list else kinds[0].__name__
        default = fields[key].default
        if default is dataclasses.MISSING:
            default = None
        out[key] = Flag(key, (name, meta["short"]) if meta["short"] else (name,),
                        "--no-" + name[2:] if meta["negatable"] else None, kind, meta["help"], meta["panel"],
                        default, meta.get("choices"))
    return out


def changed(cfg: Any) -> dict[str, Any]:
    """The keys of a resolved config whose values differ from its class's defaults."""
    out = {}
    for f in dataclasses.fields(cfg):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(cfg, f.name)
        if value != default:
            out[f.name] = value
    return out


def learning_rate(value: Any, auto_ok: bool, unset_ok: bool = False) -> float | str | None:
    """--lr as a number, or 'auto' where the stage offers the range test; None (unset) where the stage
    chooses the rate itself (finetune by the checkpoint, adapt by the objective)."""
    if value is None:
        if not unset_ok:
            raise UsageError("--lr expects a number" + (" or auto" if auto_ok else ""))
        return None
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            if not auto_ok:
                raise UsageError("--lr auto (the learning-rate range test) is offered by finetune and adapt; "
                                 "pass a number")
            return "auto"
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"--lr expects a number or auto (got '{value}')") from None
    return float(value)


def class_weights(value: str) -> list[float] | str:
    """--class-weights as 'none', 'auto' or a list of positive numbers."""
    v = str(value).strip().lower()
    if v in ("none", "auto"):
        return v
    try:
        weights = [float(x) for x in v.split(",")]
    except ValueError:
        raise UsageError(f"--class-weights expects none, auto or numbers separated by commas (got '{value}')") from None
    import math

    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise UsageError(f"--class-weights: every weight must be a positive number (got '{value}')")
    return weights


def required(cfg: Any, **needed: str) -> None:
    """Refuse a config whose key (a keyword of `needed`) is empty, with that keyword's message."""
    for name, message in needed.items():
        if not getattr(cfg, name):
            raise UsageError(message)


def positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise UsageError(f"{flag_name(name)} must be positive (got {value})")


def at_least_two(cfg: Any, *names: str) -> None:
    """Optional lengths in tokens: unset, or at least 2 (a special token and one of text)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 2:
            raise UsageError(f"{flag_name(name)} must be at least 2 (got {value})")


def finite(cfg: Any) -> None:
    """Every float option is a finite number: `--lr nan` or `--warmup-ratio inf` pass every comparison
    (`nan <= 0` is False) and would train on nonsense."""
    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag_name(f.name)} must be a finite number (got {value})")


SEED_MAX = 2**32 - 1  # NumPy's seeds are 32-bit unsigned integers


def seed_range(cfg: Any) -> None:
    bounded(cfg, "seed", lambda v: 0 <= v <= SEED_MAX, f"a whole number from 0 to {SEED_MAX}")


def bounded(cfg: Any, name: str, ok: Any, must: str, hint: str = "") -> None:
    """A range check that names the flag: `ok(value)` must hold unless the value is None."""
    value = getattr(cfg, name)
    if value is not None and not ok(value):
        raise UsageError(f"{flag_name(name)} must be {must} (got {value}){hint}")


def choice(cfg: Any, name: str) -> None:
    """The field's value must be one of the choices its declaration lists."""
    choices = cfg.__dataclass_fields__[name].metadata["choices"]
    value = getattr(cfg, name)
    if value not in choices:
        raise UsageError(
            f"unknown {flag_name(name)} '{value}'{did_you_mean(str(value), choices)}; "
            f"choose one of {', '.join(choices)}"
        )


def report_targets(value: str | None) -> list[str]:
    """--report-to as tracker names: 'all' is every known tracker, 'none' (or nothing) none. Whether
    they are installed is checked when a stage starts (nlptl/tracking.py)."""
    parts = [p.strip().lower() for p in str(value or "none").split(",") if p.strip()]
    for p in parts:
        if p not in (*TRACKERS, "all", "none"):
            raise UsageError(f"unknown --report-to '{p}'{did_you_mean(p, (*TRACKERS, 'all', 'none'))}; "
                             f"choose from {', '.join(TRACKERS)}, all, none (comma-separated)")
    if "all" in parts:
        return ["all"]
    return [p for p in dict.fromkeys(parts) if p != "none"] or ["none"]


def help_of(cls: type, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata.get("help", "")


def runs_root() -> Path:
    """Where runs go by default: $NLPTL_HOME, else ./runs."""
    return Path(os.environ.get("NLPTL_HOME") or "runs")


# --------------------------------------------------------------------------- resolution


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (`from __future__ import annotations`)


def annotation(cls: type, key: str) -> tuple[tuple[Any, ...], bool]:
    """The types a field's annotation allows, None left out, and whether it allows None:
    ((float, str), True) for `float | str | None`."""
    hint = _hints(cls)[key]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(k for k in kinds if k is not type(None)), type(None) in kinds


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Convert a YAML/--set value to the field's declared type."""
    kinds, optional = annotation(cls, key)
    kind = kinds[0]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            # --lr: a number, or a word (auto) that the config checks
            return value if isinstance(value, str) and str in kinds else float(value)
        if typing.get_origin(kind) is list:
            return list(value) if isinstance(value, list | tuple) else [value]
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag_name(key)}: '{value}' is not a valid {kind.__name__}") from None


def _check_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    known = cls.__dataclass_fields__
    out = {}
    for key, value in data.items():
        key = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if key not in known:
            raise UsageError(f"unknown config key '{key}' in {where}{did_you_mean(key, list(known) + list(ALIASES))}")
        out[key] = _coerce(cls, key, value)
    return out


def load_yaml(path: str, what: str = "--config") -> dict[str, Any]:
    """A config or recipe file: a mapping, each key once. Not only a regular file: `<(...)` is a pipe,
    /dev/null an empty config."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {path} is a directory; pass a YAML file")
    if not p.exists():
        raise UsageError(f"{what} {path}: no such file")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=unique_keys_loader())
    except DuplicateKey as e:
        raise UsageError(f"{what} {path}: {e}; keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{what} {path}: malformed YAML{at}; fix the file or check it with a YAML linter") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not a UTF-8 text file") from None
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot be read ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path}: expected a mapping of key: value at the top level")
    return data


class DuplicateKey(Exception):
    """A key given twice in one YAML mapping: PyYAML keeps the last one without a word."""


def unique_keys_loader():
    """PyYAML's safe loader, refusing a mapping that holds a key twice (config files, recipes, registry)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: overriding is its purpose
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(f"'{key}' appears twice (lines {seen[key]} and {line})")
                seen[key] = line
            except TypeError:  # an unhashable key: the safe loader refuses it itself
                continue
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise UsageError(f"--set expects key=value (got '{item}')")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def resolve(cls: type, *, config_file: str | None = None, flags: dict[str, Any] | None = None,
            sets: list[str] | None = None, layers: list[tuple[dict[str, Any], str]] | None = None) -> Any:
    """Build a stage config: defaults < config file < `layers` < flags (those given) < --set.

    `layers`: (mapping, where) pairs applied in order, checked like a config file (`nlptl run` passes
    a recipe's defaults and the stage's own keys; `where` names them in errors)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_check_keys(cls, load_yaml(config_file), f"--config {config_file}"))
    for data, where in layers or []:
        values.update(_check_keys(cls, data, where))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    values.update(_check_keys(cls, parse_sets(sets), "--set"))
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
