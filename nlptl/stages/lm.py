"""The flow of the language-modelling stages: corpus -> packed blocks -> perplexity before -> train()
-> perplexity after -> stage directory. `pretrain` (with a corpus) and `adapt` are this flow with a
different model source.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nlptl.config import LMConfig, to_dict
from nlptl.errors import UsageError
from nlptl.stages.common import check_block_size, resume_args, write_stage

log = logging.getLogger("nlptl")


def lm_stage(stage: str, cfg: LMConfig, *, accelerator, model, tokenizer, objective: str, corpora: list,
             lineage: dict, out: Path, kept: dict | None = None, notes: list[str] | None = None,
             head_added: bool = False) -> dict:
    """Train `model` on `corpora` (one, or a mixture) with `objective` and write the stage directory.
    Perplexity is measured on the first corpus's held-out blocks (a mixture's domain corpus comes first);
    with a mixture, also on each corpus's at the end."""
    from nlptl.data.collate import lm_collators
    from nlptl.evaluation import lm_loss
    from nlptl.models import apply_lora, positions_of
    from nlptl.tracking import RunLog

    check_block_size(cfg.block_size, positions_of(model.config))
    for note in notes or []:
        log.info(note)
    train_blocks, held_outs, preprocess_seconds = blocks_of(cfg, corpora, tokenizer, objective, accelerator)
    held_out = next(iter(held_outs.values()))
    train_collate, eval_collate = lm_collators(tokenizer, objective, cfg.mlm_probability, cfg.seed,
                                               objective == "mlm" and cfg.whole_word_mask)

    def score(m, blocks=held_out):
        return lm_loss(accelerator, m, blocks, eval_collate(), cfg.batch_size)

    peft_model = None
    if cfg.lora:
        # The adapters are injected into `model` in place (LoRA's B starts at zero, so the "before"
        # score is the base model's): everything below trains `model` as usual.
        peft_model = apply_lora(model, cfg)
        if head_added:
            log.warning("the %s head is new and LoRA leaves it at its random initialisation; "
                        "a full adapt (without --lora) trains it", "masked-LM" if objective == "mlm" else "causal-LM")
    train_args = resume_args(cfg, out)
    # The record keeps --lr as given (auto, or unset: a rerun resolves it alike); training gets the rate.
    train_cfg, lr_found = (auto_lr(cfg, stage, accelerator, model, objective, train_blocks, train_collate, out)
                           if cfg.lr == "auto" else (cfg.with_default_lr(), None))
    with RunLog(accelerator, out, stage, to_dict(cfg), resume=train_args["resume_from"] is not None) as runlog:
        before = score(model.to(accelerator.device))
        runlog.log({"step": 0, "eval_loss": before["loss"], "eval_perplexity": before["perplexity"]})
        model, result = fit_lm(train_cfg, stage, accelerator, model, objective, train_blocks, train_collate, runlog, train_args)
        after = score(model)
        by_corpus = {name: score(model, blocks)["perplexity"] for name, blocks in held_outs.items()} if len(corpora) > 1 else None
        runlog.log({"step": result.steps, "eval_loss": after["loss"], "eval_perplexity": after["perplexity"]})
    metrics = {
        "perplexity": after["perplexity"],
        "perplexity_before": before["perplexity"],  # with a newly added LM head this is no baseline
        "lm_head_added": head_added,
        "loss": after["loss"],
        "steps": result.steps,
        "n_train": result.n_train if not cfg.streaming else None,  # a stream's length is not known
        "n_eval": len(held_out),
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        "preprocess_seconds": round(preprocess_seconds, 3),
        **({"lr_found": train_cfg.lr} if lr_found is not None else {}), "lr": train_cfg.lr,
        "output_dir": str(out),
    }
    if by_corpus:
        metrics["perplexity_by_corpus"] = by_corpus
    if len(corpora) > 1:  # `corpus` stays the one perplexity is measured on (the first: the domain)
        lineage["mixture"] = [c.record() for c in corpora]
    lineage.update(objective=objective, corpus=corpora[0].record(), block_size=cfg.block_size,
                   masking=(("whole-word" if cfg.whole_word_mask else "token") if objective == "mlm" else None),
                   steps=result.steps, **({"streaming": True} if cfg.streaming else {}),
                   tokens_seen=result.train_tokens, **({"lr": {"auto": lr_found}} if lr_found is not None else {}))

    def write(w) -> dict:
        from nlptl.models import save_lora

        if lr_found is not None:
            from nlptl import lr_find

            lr_find.save(w.path, lr_found)
        if peft_model is not None:
            return {"lora": save_lora(w, peft_model, tokenizer, cfg.merge, kept), "history": result.history}
        w.save_model(model, tokenizer, kept)
        return {"history": result.history}

    return write_stage(cfg, out, stage, metrics=metrics, lineage=lineage, write=write, runlog=runlog,
                       accelerator=accelerator)


def lm_from(cfg: LMConfig, ref) -> dict:
    """An existing checkpoint as a language model with the objective's head (--objective, or the
    family's): lm_stage's model arguments."""
    from nlptl import models

    models.hub_guard(ref)
    config = models.load_config(ref)
    objective = models.default_objective(config) if cfg.objective == "auto" else cfg.objective
    tokenizer = models.load_tokenizer(ref, config)
    model, note, kept = models.load_lm(ref, config, objective)
    return {"model": model, "tokenizer": tokenizer, "objective": objective, "kept": kept,
            "notes": [note] if note else [], "head_added": note is not None}


def blocks_of(cfg: LMConfig, corpora: list, tokenizer, objective: str, accelerator):
    """(training blocks, held-out blocks of each corpus, seconds it took). Cached: read, tokenize, pack
    and split each corpus (seconds on an unchanged corpus, whose blocks come from the cache). Streamed:
    the first --max-eval-blocks blocks of each corpus are held out, the rest is a BlockStream. Several
    corpora are mixed in their shares."""
    from nlptl.data.lm import mix

    started = time.perf_counter()
    word_starts = objective == "mlm" and cfg.whole_word_mask
    parts = [(_streamed if cfg.streaming else _cached)(cfg, c, tokenizer, word_starts, accelerator) for c in corpora]
    held_out = {c.name or c.spec: held for c, (_, held) in zip(corpora, parts, strict=True)}
    trains = [train for train, _ in parts]
    weights = [c.weight for c in corpora]
    if cfg.streaming:
        from nlptl.data.stream import BlockStream

        train = BlockStream(trains[0] if len(trains) == 1 else lambda: mix([t() for t in trains], weights, cfg.seed))
    else:
        train = trains[0] if len(trains) == 1 else mix(trains, weights, cfg.seed)
    if len(corpora) > 1:
        log.info("mixing %s", ", ".join(f"{c.name or c.spec} {c.weight:.0%}" for c in corpora)
                 + ("" if cfg.streaming else f": {len(train)} blocks an epoch"))
    return train, held_out, time.perf_counter() - started


def _cached(cfg: LMConfig, corpus, tokenizer, word_starts: bool, accelerator):
    from nlptl.data.lm import corpus_blocks, split_blocks

    with accelerator.main_process_first():
        blocks, where = corpus_blocks(corpus, tokenizer, cfg.block_size, word_starts, cfg.num_proc)
    if len(blocks) < 2:
        raise UsageError(
            f"--corpus {corpus.spec} gives {len(blocks)} block(s) of --block-size {cfg.block_size}; "
            "pass more text or a smaller --block-size"
        )
    train_blocks, held_out = split_blocks(blocks, cfg.validation_percentage, cfg.max_eval_blocks)
    log.info("%s: %d blocks of %d tokens (%d held out), from %s", corpus.spec, len(blocks), cfg.block_size,
             len(held_out), where)
    return train_blocks, held_out


def _streamed(cfg: LMConfig, corpus, tokenizer, word_starts: bool, accelerator):
    """(a function that opens the training stream, the held-out blocks): the first --max-eval-blocks."""
    import datasets

    from nlptl.data.lm import packer, stream_blocks

    pack = packer(tokenizer, cfg.block_size, word_starts)
    held_out = datasets.Dataset.from_list(list(stream_blocks(corpus, pack).take(cfg.max_eval_blocks)))
    if len(held_out) < cfg.max_eval_blocks:
        raise UsageError(f"--corpus {corpus.spec} gives only {len(held_out)} block(s) of --block-size {cfg.block_size}, "
                         f"all of them needed for the held-out sample (--max-eval-blocks {cfg.max_eval_blocks}); "
                         "lower --max-eval-blocks, or drop --streaming for a small corpus")
    log.info("%s: streamed, %d blocks of %d tokens held out (the first ones)", corpus.spec, len(held_out), cfg.block_size)
    return (lambda: stream_blocks(corpus, pack).skip(cfg.max_eval_blocks)), held_out


def auto_lr(cfg: LMConfig, stage: str, accelerator, model, objective: str, blocks, collate, out: Path):
    """--lr auto: the rate the range test picks on the training blocks, trained as fit_lm trains them
    (lr_find.rate_for: a resumed run reuses it). Returns (config with it, record)."""
    from nlptl import lr_find
    from nlptl.models import masked_only

    def search() -> dict:
        if objective != "mlm":
            return lr_find.range_test(accelerator, model.to(accelerator.device), blocks, collate, cfg,
                                      description=f"{stage} lr range test")
        trial = masked_only(model) or model
        return lr_find.range_test(accelerator, trial.to(accelerator.device), blocks, collate.stack, cfg,
                                  description=f"{stage} lr range test", batch_transform=collate.transform,
                                  random_source=collate)

    return lr_find.rate_for(cfg, out, accelerator, search)


def fit_lm(cfg: LMConfig, stage: str, accelerator, model, objective: str, blocks, collate, runlog, train_args: dict):
    """train() with the objective's collator; returns (the trained LM, TrainResult)."""
    from nlptl.models import masked_only
    from nlptl.train import train

    if objective != "mlm":
        return train(accelerator, model, blocks, collate, cfg, description=stage, runlog=runlog, **train_args)
    # MLM trains on the masked positions only (same loss, a fraction of the vocabulary projection), and
    # masks in the loop: the loader stacks the blocks, the collator's `transform` masks them.
    sparse = masked_only(model)
    trained, result = train(accelerator, sparse or model, blocks, collate.stack, cfg, description=stage,
                            batch_transform=collate.transform, random_source=collate, runlog=runlog, **train_args)
    return (trained.lm if sparse is not None else trained), result
