"""Measure a model on data: accuracy and macro-F1 for a classifier (labelled file), perplexity for a
language model (text corpus).

    nlptl evaluate --data test.csv                      # the latest finetune run
    nlptl evaluate --model runs/finetune-... --data test.csv
    nlptl evaluate --model runs/adapt-... --data held_out_reviews.txt
    nlptl evaluate --model runs/finetune-... --data task:sample-sentiment   # the task's test file
    nlptl evaluate --model runs/finetune-nli --data test.csv --text-column premise,hypothesis

A classifier is scored for its task shape (config.problem_type): accuracy and macro-F1 (one label),
micro/macro-F1, subset accuracy and F1 per label at its threshold (multi-label), RMSE, MAE, Pearson
and Spearman (regression); a classifier also gets precision, recall, F1 and support per class and the
confusion matrix (evaluation.per_class).
"""

from __future__ import annotations

import dataclasses

from nlptl.config import EvaluateConfig, LMConfig, to_dict
from nlptl.data.corpora import resolve_corpus
from nlptl.data.registry import task_entry
from nlptl.data.task_data import trained_task
from nlptl.data.tasks import TaskSpec, labelled_source
from nlptl.errors import UsageError
from nlptl.models import inspect_model, positions_of
from nlptl.rundir import default_from
from nlptl.stages.common import check_block_size, check_max_length

# --block-size when neither the flag nor the model's run record gives one (a checkpoint from elsewhere):
# the LM stages' own default (LMConfig.block_size), so that such a model is scored in the blocks an nlptl
# LM stage trains on.
DEFAULT_BLOCK_SIZE = LMConfig.block_size


def run(cfg: EvaluateConfig) -> dict:
    if cfg.data.startswith("task:"):
        cfg = dataclasses.replace(cfg, data=task_test_file(cfg.data))
    ref = inspect_model(cfg.model or default_from("evaluate"), "--model")
    if ref.is_classifier:
        check_max_length(cfg.max_length, ref.config)
        src = labelled_source(cfg.data, "--data", cfg.text_column, cfg.label_column)
        spec = TaskSpec(trained_task(ref), src, None, cfg.text_column, cfg.label_column,
                        ref.lineage.get("label_separator", ";"))
        return {**_classifier(cfg, ref, spec), "leakage": leakage(ref, cfg)}
    block_size = cfg.block_size or ((ref.run or {}).get("config") or {}).get("block_size") or DEFAULT_BLOCK_SIZE
    if ref.config:
        check_block_size(block_size, positions_of(ref.config))
    corpus = resolve_corpus(cfg.data, cfg.text_column)
    return {**_language_model(cfg, ref, corpus, block_size), "leakage": leakage(ref, cfg)}


def leakage(ref, cfg: EvaluateConfig) -> dict | None:
    """Were --data's texts seen in the model's adaptation or training? (stages/audit.py)"""
    from nlptl.audit import evaluate_check

    return evaluate_check(ref, cfg.data, cfg.text_column)


def task_test_file(spec: str) -> str:
    """`--data task:NAME`: the test file the task names (the sample tasks ship one; registry.yaml can add `test:`)."""
    entry = task_entry(spec.split(":", 1)[1])
    if not entry.test:
        raise UsageError(f"--data {spec}: the task names no test file; pass --data FILE (or add test: to its entry "
                         "in $NLPTL_HOME/registry.yaml)")
    return entry.test


def _classifier(cfg: EvaluateConfig, ref, spec) -> dict:
    """The classifier's scores on a labelled file, read and encoded by finetune's reader (data/tasks.py)
    for the shape the classifier was trained for, with its labels."""
    from nlptl import models, runtime
    from nlptl.data.collate import classification_collator, tokenize
    from nlptl.data.tasks import read_encoded
    from nlptl.evaluation import classification_metrics, classify, per_class
    from nlptl.inference import takes_pairs, threshold_of
    from nlptl.shapes import of_config

    runtime.quiet_libraries()
    accelerator = runtime.make_accelerator()
    model, tokenizer, names, max_length = models.load_trained_classifier(ref)
    shape = of_config(model.config)
    spec = dataclasses.replace(spec, entry=dataclasses.replace(spec.entry, problem=shape.name))
    if takes_pairs(model.config) != spec.pairs:
        fix = ("text pairs: pass their two columns, --text-column FIRST,SECOND" if takes_pairs(model.config)
               else f"single texts: pass one --text-column (got {cfg.text_column})")
        raise UsageError(f"--model {ref.spec} was trained on {fix}")
    max_length = cfg.max_length or max_length
    with accelerator.main_process_first():
        tok = tokenize(read_encoded(spec.train, names, spec, trained=True), tokenizer, max_length, "--data")
    logits, labels = classify(accelerator, model.to(accelerator.device), tok, classification_collator(tokenizer),
                              cfg.batch_size)
    threshold = threshold_of(model.config)
    metrics = classification_metrics(logits, labels, shape.problem_type, threshold, per_label=True)
    metrics.update(per_class(logits, labels, shape.problem_type, threshold, names))
    if shape.threshold:
        metrics["threshold"] = threshold
        metrics["labels"] = names  # the order of f1_per_label
    return {**metrics, "n_eval": len(tok), "config": to_dict(cfg),
            "lineage": (ref.run or {}).get("lineage", {"base_model": ref.spec})}


def _language_model(cfg: EvaluateConfig, ref, corpus, block_size: int) -> dict:
    from nlptl import models, runtime
    from nlptl.data.collate import EVAL_MASK_SEED, lm_collators
    from nlptl.data.lm import corpus_blocks
    from nlptl.evaluation import lm_loss

    runtime.quiet_libraries()
    accelerator = runtime.make_accelerator()
    config, tokenizer = models.load_config_and_tokenizer(ref)
    objective = models.trained_objective(config)
    model, _, _ = models.load_lm(ref, config, objective)
    LMConfig(mlm_probability=cfg.mlm_probability, block_size=block_size)  # validates the values
    with accelerator.main_process_first():
        blocks, _ = corpus_blocks(corpus, tokenizer, block_size)  # the blocks adapt and pretrain cache
    if len(blocks) == 0:
        raise UsageError(f"--data {cfg.data}: shorter than one block of {block_size} tokens; pass --block-size smaller")
    _, eval_collate = lm_collators(tokenizer, objective, cfg.mlm_probability, 0,
                                   eval_seed=cfg.seed if cfg.seed is not None else EVAL_MASK_SEED)
    scores = lm_loss(accelerator, model.to(accelerator.device), blocks, eval_collate(), cfg.batch_size)
    return {"perplexity": scores["perplexity"], "loss": scores["loss"], "n_eval": len(blocks),
            "eval_tokens": scores["tokens"], "objective": objective, "config": to_dict(cfg),
            "lineage": (ref.run or {}).get("lineage", {"base_model": ref.spec})}
