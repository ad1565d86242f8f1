"""Stage 3: task fine-tuning. A sequence-classification head on the (adapted) language model.

    nlptl finetune --task sentiment                        # from the latest adapt run, hub SST-2
    nlptl finetune --from runs/adapt-... --task sentiment --train train.csv --eval dev.csv
    nlptl finetune --from DIR --task classification --train topics.jsonl --label-column topic
    nlptl finetune --from DIR --task sentiment --lora --merge         # LoRA adapters + full head, merged

Works for encoders (BERT-style) and decoders (GPT-style: no pad token, the head reads the last real
token). Keeps the checkpoint with the best accuracy on --eval (or on a seeded slice of --train).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nlptl.checkpoint import check_out, default_from, default_out, lineage_of
from nlptl.config import FinetuneConfig, to_dict
from nlptl.data.tasks import resolve_task
from nlptl.errors import UsageError
from nlptl.models import inspect_model, require_peft
from nlptl.stages.common import check_max_length, preflight, publish

log = logging.getLogger("nlptl")
DEFAULT_MAX_LENGTH = 256


def run(cfg: FinetuneConfig) -> dict:
    if cfg.lora:
        require_peft()
    refs = [inspect_model(cfg.from_model or default_from("finetune"), "--from"),
            *(inspect_model(m, "--compare") for m in cfg.compare)]
    for ref in refs:
        check_max_length(cfg.max_length, ref.config)
    spec = resolve_task(cfg.task, cfg.train_file, cfg.eval_file, cfg.text_column, cfg.label_column)
    out = Path(cfg.out) if cfg.out else default_out("finetune")
    check_out(out, cfg.overwrite, refs[0].path if refs[0].local else None, resume=cfg.resume or bool(cfg.resume_from),
              resume_from=cfg.resume_from)
    preflight(cfg, out)
    if cfg.learning_curve:
        from nlptl.curve import learning_curve

        return learning_curve(cfg, refs, spec, out)
    ref = refs[0]

    from nlptl import models
    from nlptl.checkpoint import StageWriter, make_record
    from nlptl.tracking import RunLog

    accelerator = start(cfg, out)
    data = prepare(cfg, ref, spec, accelerator)
    with RunLog(accelerator, out, "finetune", to_dict(cfg), resume=cfg.resume or bool(cfg.resume_from)) as runlog:
        model, result, best = fit(cfg, ref, data, data.train, accelerator, out, runlog)
    metrics = {
        "accuracy": best["accuracy"],
        "f1_macro": best["f1_macro"],
        "loss": best["loss"],
        "n_eval": len(data.eval),
        "best_step": result.best_step,
        "steps": result.steps,
        "n_train": result.n_train,
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        "output_dir": str(out),
    }
    lineage = lineage_of("finetune", ref, task=cfg.task, labels=data.names, train=spec.train.record(),
                         eval=data.eval_from, max_length=data.max_length,
                         pooling=models.resolve_pooling(data.config, cfg.pooling), steps=result.steps,
                         tokens_seen=result.train_tokens)
    config_dict = to_dict(cfg)
    if accelerator.is_main_process:
        with StageWriter(out) as w:
            if cfg.lora:
                lora = models.save_lora(w, model, data.tokenizer, cfg.merge)
            else:
                lora = None
                w.save_model(model, data.tokenizer)
                models.save_head_code(model, w.path)
            runlog.write(w.path)
            record = make_record("finetune", config_dict, {k: v for k, v in metrics.items() if k != "output_dir"}, lineage)
            if lora:
                record["lora"] = lora
            record["max_length"] = data.max_length
            record["history"] = result.history
            w.commit(record)
    accelerator.wait_for_everyone()
    return {**metrics, **publish(cfg, out, "finetune", accelerator), "config": config_dict, "lineage": lineage}


@dataclass
class TaskData:
    config: object  # the model's transformers config
    tokenizer: object
    names: list[str]
    train: object  # tokenized, with `labels`
    eval: object
    eval_from: dict
    max_length: int


def start(cfg: FinetuneConfig, out: Path | None = None):
    """The accelerator; with `out`, its --report-to trackers write under OUT/logs."""
    from nlptl import runtime, tracking

    runtime.quiet_libraries()
    accelerator = runtime.make_accelerator(cfg.precision, cfg.grad_accum,
                                           **tracking.accelerator_args(cfg.report_to, out))
    runtime.seed_everything(cfg.seed)
    return accelerator


def prepare(cfg: FinetuneConfig, ref, spec, accelerator) -> TaskData:
    """Read, label-encode and tokenize the task data for `ref`'s tokenizer."""
    from nlptl import models
    from nlptl.data.tasks import encode, label_names, read_labelled
    from nlptl.evaluation import load_metric

    models.hub_guard(ref)
    config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, config)
    max_length = cfg.max_length or min(DEFAULT_MAX_LENGTH, models.max_positions(config) or DEFAULT_MAX_LENGTH)
    with accelerator.main_process_first():
        train_raw = read_labelled(spec.train, spec)
        names = label_names(spec, train_raw["label"])
        train_ds = encode(train_raw, names, spec, "--train", spec.train.spec)
        if len(set(train_ds["label"])) < 2:
            raise UsageError(f"--train {spec.train.spec}: holds a single class ('{names[train_ds[0]['label']]}'); "
                             "a classifier needs examples of at least two labels")
        if spec.eval is not None:
            eval_ds = encode(read_labelled(spec.eval, spec), names, spec, "--eval", spec.eval.spec)
            eval_from = spec.eval.record()
        else:
            train_ds, eval_ds = held_out_slice(train_ds, names, cfg.eval_fraction, cfg.seed)
            eval_from = {"slice_of_train": cfg.eval_fraction, "seed": cfg.seed}
            log.info("no --eval: holding out %d of the training examples (seeded) for model selection", len(eval_ds))
        train_tok = tokenize(train_ds, tokenizer, max_length, "--train")
        eval_tok = tokenize(eval_ds, tokenizer, max_length, "--eval")
    load_metric("accuracy"), load_metric("f1")  # fail before training, not after, if metrics cannot load
    log.info("%s: %d labels (%s), %d train / %d eval examples, max length %d",
             cfg.task, len(names), ", ".join(names[:6]), len(train_tok), len(eval_tok), max_length)
    return TaskData(config, tokenizer, names, train_tok, eval_tok, eval_from, max_length)


def fit(cfg: FinetuneConfig, ref, data: TaskData, train_ds, accelerator, out: Path | None = None, runlog=None):
    """A new classifier on `ref`, trained on `train_ds`; returns (best model, TrainResult, best metrics).
    With --lora the model is the PeftModel around the trained classifier."""
    import copy

    from nlptl import models
    from nlptl.evaluation import classification_metrics, classify
    from nlptl.train import train

    model = models.load_classifier(ref, copy.deepcopy(data.config), data.names, data.tokenizer, cfg.pooling)
    peft_model = models.apply_lora(model, cfg) if cfg.lora else None
    collate = classification_collator(data.tokenizer)

    def evaluate_fn(m):
        logits, labels = classify(accelerator, m, data.eval, collate, cfg.batch_size * 2)
        return classification_metrics(logits, labels)

    model, result = train(accelerator, model, train_ds, collate, cfg, description="finetune",
                          evaluate_fn=evaluate_fn, select=("accuracy", "max"), default_evals=4,
                          lengths=[len(ids) for ids in train_ds["input_ids"]], runlog=runlog, **resume_args(cfg, out))
    best = result.best or evaluate_fn(model)
    # With LoRA, train() trained the model inside the PeftModel (the adapters live in it, in place);
    # the PeftModel is what saves the adapter and merges.
    return (peft_model if peft_model is not None else model), result, best


def resume_args(cfg, out: Path | None) -> dict:
    """Checkpointing arguments of train() for a stage writing to `out` (none without one)."""
    if out is None:
        return {}
    from nlptl.checkpoint import checkpoints_dir, find_resume_checkpoint, resume_hint

    resume_from = find_resume_checkpoint(out, cfg.resume_from) if (cfg.resume or cfg.resume_from) else None
    return {"checkpoints": checkpoints_dir(out), "resume_from": resume_from, "resume_hint": resume_hint(out)}


def held_out_slice(ds, names: list[str], fraction: float, seed: int):
    """A seeded, stratified slice of the training data for model selection when no --eval is given."""
    import datasets

    ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    except ValueError:  # a class too small to stratify
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def tokenize(ds, tokenizer, max_length: int, flag: str):
    """Tokenize (no padding: batches are padded to their own longest text); say how many texts were cut."""

    def enc(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["n_tokens"] = [len(x) for x in tokenizer(batch["text"])["input_ids"]]
        return out

    tok = ds.map(enc, batched=True, remove_columns=["text"], desc="tokenizing")
    over = sum(1 for n in tok["n_tokens"] if n > max_length)
    if over:
        log.warning("%s: truncated %d of %d texts longer than %d tokens (raise --max-length to keep more)",
                    flag, over, len(tok), max_length)
    return tok.remove_columns("n_tokens").rename_column("label", "labels")


def classification_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    from nlptl.runtime import pad_multiple

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple())
