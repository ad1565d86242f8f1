"""Stage 3: task fine-tuning. A sequence-classification head on the (adapted) language model.

    nlptl finetune --task sentiment                        # from the latest adapt run, hub SST-2
    nlptl finetune --from runs/adapt-... --task sentiment --train train.csv --eval dev.csv
    nlptl finetune --from DIR --task classification --train topics.jsonl --label-column topic
    nlptl finetune --from DIR --task sentiment --lora --merge         # LoRA adapters + full head, merged
    nlptl finetune --from DIR --task multilabel --train tags.csv --label-column tags   # 'sports;politics'
    nlptl finetune --from DIR --task regression --train ratings.csv --label-column score
    nlptl finetune --from DIR --task classification --train nli.csv --text-column premise,hypothesis
    nlptl finetune --from DIR --task classification --train docs.jsonl --long-docs chunk --window 256
    nlptl finetune --from DIR --task sentiment --lr auto                # the learning-rate range test

Works for encoders (BERT-style) and decoders (GPT-style: no pad token, the head reads the last real
token). Keeps the checkpoint with the best score on --eval (or on a seeded slice of --train): accuracy,
micro-F1 (multi-label) or RMSE (regression).
"""

from __future__ import annotations

from nlptl.config import FinetuneConfig
from nlptl.data.task_data import prepare
from nlptl.data.tasks import resolve_task
from nlptl.models import inspect_model, require_peft
from nlptl.rundir import default_from, lineage_of
from nlptl.stages.classifier import choose_rates, train_classifier
from nlptl.stages.common import Run, check_max_length, open_stage, start, write_stage


def run(cfg: FinetuneConfig, command: list[str] | None = None) -> dict:
    """`command`: the arguments `nlptl` was given (None from Python), which the record quotes."""
    if cfg.lora:
        require_peft()
    refs = [inspect_model(cfg.from_model or default_from("finetune"), "--from"),
            *(inspect_model(m, "--compare") for m in cfg.compare)]
    for ref in refs:
        if cfg.long_docs == "chunk":
            check_max_length(cfg.window, ref.config, "--window")
        else:
            check_max_length(cfg.max_length, ref.config)
    spec = resolve_task(cfg.task, cfg.train_file, cfg.eval_file, cfg.text_column, cfg.label_column,
                        cfg.label_separator)
    inputs = {flag: src.sha256 or src.spec for flag, src in (("--train", spec.train), ("--eval", spec.eval)) if src}
    with open_stage(cfg, "finetune", refs[0].path if refs[0].local else None, inputs, command) as opened:
        if cfg.learning_curve:
            from nlptl.stages.curve import learning_curve

            return learning_curve(opened, refs, spec)
        return finetune(opened, refs[0], spec)


def finetune(run: Run, ref, spec) -> dict:
    """Train a classifier on `ref` for the task `spec`, and write the stage directory."""
    from nlptl import handoff, models

    cfg, out = run.cfg, run.out
    accelerator = start(cfg, out)
    data = prepare(cfg, ref, spec, accelerator)
    # The record keeps --lr as given (auto, or none: a recipe or a rerun resolves it the same way);
    # training gets the rate found or chosen for the checkpoint. Each `auto` choice is logged and recorded.
    train_cfg, lr_found, lr_choice = choose_rates(cfg, ref, data, accelerator, out)
    choices = handoff.announce(data.pooling_choice, lr_choice)
    leakage = leakage_check(ref, spec, cfg.text_column)
    train_cfg, model, result, best = train_classifier(run, train_cfg, ref, data, accelerator, lr_found)
    metrics = {
        **best,
        "n_eval": len(data.eval),
        "best_step": result.best_step,
        "steps": result.steps,
        "n_train": result.n_train,
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        **result.early_stop_metrics(),
        **({"lr_found": train_cfg.lr} if lr_found is not None else {}),
        **range_test_rate(lr_found),
        "lr": train_cfg.lr,
        **({"head_lr": train_cfg.head_lr} if train_cfg.head_lr is not None else {}),
        **({"leakage": leakage} if leakage is not None else {}),
        "output_dir": str(out),
    }
    shape = {k.removeprefix("nlptl_"): v for k, v in data.shape.items() if k != "nlptl_threshold"}
    if data.task_shape.threshold:
        shape["threshold"] = best["threshold"]
        if len(spec.label_columns) == 1:
            shape["label_separator"] = cfg.label_separator
    lineage = lineage_of("finetune", ref, task=cfg.task, labels=data.names, train=spec.train.record(),
                         eval=data.eval_from, max_length=data.max_length, **shape,
                         **({"lr": {"auto": lr_found}} if lr_found is not None else {}),
                         pooling=models.resolve_pooling(data.config, data.pooling), steps=result.steps,
                         tokens_seen=result.train_tokens, choices=choices,
                         handoff=handoff.record(pooling=data.pooling_choice, origin_of=handoff.origin(ref).value,
                                                objective="classification", config=data.config))

    def write(w) -> dict:
        if lr_found is not None:
            from nlptl import lr_find

            lr_find.save(w.path, lr_found)
        if cfg.lora:
            lora = {"lora": models.save_lora(w, model, data.tokenizer, cfg.merge)}
        else:
            lora = {}
            w.save_model(model, data.tokenizer)
            models.save_head_code(model, w.path)
        return {**lora, "max_length": data.max_length, "history": result.history}

    return write_stage(run, metrics=metrics, lineage=lineage, write=write, accelerator=accelerator)


def leakage_check(ref, spec, text_column: str) -> dict | None:
    """Were --eval's texts seen in the lineage or in --train? (nlptl/audit.py; before training, so the
    warning comes first.) None without an --eval file."""
    from nlptl.audit import finetune_check

    if spec.eval is None or spec.train is None:
        return None
    return finetune_check(ref, spec.train.record(), spec.eval.record(), text_column)


def range_test_rate(record: dict | None) -> dict:
    """`lr_range_test`: what --lr auto's range test found, where the rate trained with is lower."""
    from nlptl.lr_find import found_before_lowered

    found = found_before_lowered(record) if record is not None else None
    return {"lr_range_test": found} if found is not None else {}

