"""What the language-modelling stages share: corpus -> packed blocks -> perplexity before -> train()
-> perplexity after -> stage directory. `pretrain` (with a corpus) and `adapt` are this flow with a
different model source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nlptl.config import LMConfig, to_dict
from nlptl.errors import UsageError

log = logging.getLogger("nlptl")


def positions_of(config: dict) -> int | None:
    """Max sequence length from a config.json dict (light: no transformers import)."""
    from nlptl.models import OFFSET_POSITIONS

    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value - 2 if config.get("model_type") in OFFSET_POSITIONS else value
    return None


def check_block_size(block_size: int, positions: int | None) -> None:
    if positions is not None and block_size > positions:
        raise UsageError(f"--block-size {block_size} is larger than the model's {positions} positions; use --block-size {positions} or less")


def check_max_length(max_length: int | None, config: dict | None) -> None:
    """--max-length must fit the model's positions (finetune, evaluate and predict alike): past them a
    GPT fails with an IndexError and a BERT with a CUDA/CPU assertion on the first long text."""
    positions = positions_of(config) if config else None
    if max_length and positions and max_length > positions:
        raise UsageError(f"--max-length {max_length} is larger than the model's {positions} positions; use {positions} or less")


def preflight(cfg, out: Path) -> None:
    """What a training stage checks before loading anything heavy, for --report-to and --push-to-hub."""
    from nlptl import hub, tracking

    tracking.trackers(cfg.report_to)
    if cfg.push_to_hub:
        hub.check_push(cfg.push_to_hub)


def publish(cfg, out: Path, stage: str, accelerator=None) -> dict:
    """--push-to-hub: upload the finished stage directory (main process); the result gains `hub_url`."""
    if not cfg.push_to_hub or (accelerator is not None and not accelerator.is_main_process):
        return {}
    from nlptl import hub

    url = hub.push(out, cfg.push_to_hub, cfg.hub_private, stage)
    log.info("uploaded %s to %s", out, url)
    return {"hub_url": url}


@dataclass
class LMData:
    train: object
    held_out: object
    n_blocks: int


EVAL_MASK_SEED = 20180118  # fixed: every run and `nlptl evaluate` score the same masked positions


def lm_collators(tokenizer, objective: str, mlm_probability: float, seed: int, whole_word: bool = False,
                 eval_seed: int = EVAL_MASK_SEED):
    """(train collator, factory of evaluation collators). Evaluation masks do not depend on the training
    seed, so perplexity before and after training, and across runs, is measured on the very same
    masked positions of the same held-out blocks."""
    import torch

    from nlptl.data.masking import MaskingCollator

    if objective == "clm":
        def clm(examples):
            ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
            return {"input_ids": ids, "labels": ids.clone()}

        return clm, lambda: clm
    if tokenizer.mask_token is None:
        raise UsageError("--objective mlm needs a tokenizer with a mask token; this model's has none (use --objective clm)")

    return (MaskingCollator(tokenizer, mlm_probability, whole_word, seed),
            lambda: MaskingCollator(tokenizer, mlm_probability, whole_word, eval_seed, per_example=True))


def lm_stage(stage: str, cfg: LMConfig, *, accelerator, model, tokenizer, objective: str, corpus,
             lineage: dict, out: Path, kept: dict | None = None, notes: list[str] | None = None,
             head_added: bool = False) -> dict:
    """Train `model` on `corpus` with `objective` and write the stage directory."""
    from nlptl.checkpoint import StageWriter, make_record
    from nlptl.data.corpora import load_corpus
    from nlptl.data.lm import pack_blocks, split_blocks
    from nlptl.evaluation import lm_loss
    from nlptl.models import max_positions
    from nlptl.train import train

    check_block_size(cfg.block_size, max_positions(model.config))
    for note in notes or []:
        log.info(note)
    import time

    started = time.perf_counter()
    with accelerator.main_process_first():
        texts = load_corpus(corpus)
        # The key names the column too: one file can hold several text columns (the cache must tell them apart).
        blocks = pack_blocks(texts, tokenizer, cfg.block_size, corpus_key=f"{corpus.sha256 or corpus.spec}|{corpus.text_column}",
                             word_starts=objective == "mlm" and cfg.whole_word_mask)
    if len(blocks) < 2:
        raise UsageError(
            f"--corpus {corpus.spec} gives {len(blocks)} block(s) of --block-size {cfg.block_size}; "
            "pass more text or a smaller --block-size"
        )
    train_blocks, held_out = split_blocks(blocks, cfg.validation_percentage, cfg.max_eval_blocks)
    # Read, tokenize, pack and split: seconds on an unchanged corpus, whose blocks come from the cache.
    preprocess_seconds = time.perf_counter() - started
    log.info("%s: %d documents -> %d blocks of %d tokens (%d held out), objective %s",
             corpus.spec, len(texts), len(blocks), cfg.block_size, len(held_out), objective)
    train_collate, eval_collate = lm_collators(tokenizer, objective, cfg.mlm_probability, cfg.seed,
                                               objective == "mlm" and cfg.whole_word_mask)

    def score(m):
        return lm_loss(accelerator, m, held_out, eval_collate(), cfg.batch_size)

    from nlptl.checkpoint import checkpoints_dir, find_resume_checkpoint, resume_hint
    from nlptl.models import apply_lora, masked_only
    from nlptl.tracking import RunLog

    peft_model = None
    if cfg.lora:
        # The adapters are injected into `model` in place (LoRA's B starts at zero, so the "before"
        # score is the base model's): everything below trains `model` as usual.
        peft_model = apply_lora(model, cfg)
        if head_added:
            log.warning("the %s head is new and LoRA leaves it at its random initialisation; "
                        "a full adapt (without --lora) trains it", "masked-LM" if objective == "mlm" else "causal-LM")

    resume_from = find_resume_checkpoint(out, cfg.resume_from) if (cfg.resume or cfg.resume_from) else None
    config = to_dict(cfg)
    with RunLog(accelerator, out, stage, config, resume=resume_from is not None) as runlog:
        before = score(model.to(accelerator.device))
        runlog.log({"step": 0, "eval_loss": before["loss"], "eval_perplexity": before["perplexity"]})
        # MLM trains on the masked positions only (same loss, a fraction of the vocabulary projection).
        sparse = masked_only(model) if objective == "mlm" else None
        transform = None
        if objective == "mlm":
            transform = train_collate.transform
            train_collate = train_collate.stack
        trained, result = train(accelerator, sparse or model, train_blocks, train_collate, cfg, description=stage,
                                checkpoints=checkpoints_dir(out), resume_from=resume_from,
                                resume_hint=resume_hint(out), batch_transform=transform, runlog=runlog)
        model = trained.lm if sparse is not None else trained
        after = score(model)
        runlog.log({"step": result.steps, "eval_loss": after["loss"], "eval_perplexity": after["perplexity"]})
    metrics = {
        "perplexity": after["perplexity"],
        "perplexity_before": before["perplexity"],  # with a newly added LM head this is no baseline
        "lm_head_added": head_added,
        "loss": after["loss"],
        "steps": result.steps,
        "n_train": result.n_train,
        "n_eval": len(held_out),
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        "preprocess_seconds": round(preprocess_seconds, 3),
        "output_dir": str(out),
    }
    lineage.update(objective=objective, corpus=corpus.record(), block_size=cfg.block_size,
                   masking=(("whole-word" if cfg.whole_word_mask else "token") if objective == "mlm" else None),
                   steps=result.steps,
                   tokens_seen=result.train_tokens)
    if accelerator.is_main_process:
        with StageWriter(out) as w:
            lora = None
            if peft_model is not None:
                from nlptl.models import save_lora

                lora = save_lora(w, peft_model, tokenizer, cfg.merge, kept)
            else:
                w.save_model(model, tokenizer, kept)
            runlog.write(w.path)
            record = make_record(stage, config, {k: v for k, v in metrics.items() if k != "output_dir"}, lineage)
            if lora:
                record["lora"] = lora
            record["history"] = result.history
            w.commit(record)
    accelerator.wait_for_everyone()
    return {**metrics, **publish(cfg, out, stage, accelerator), "config": config, "lineage": lineage}
