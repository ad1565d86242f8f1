"""The flow of the language-modelling stages: corpus -> packed blocks -> perplexity before -> train()
-> perplexity after -> stage directory. `pretrain` (with a corpus) and `adapt` are this flow with a
different model source.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from nlptl.config import LMConfig
from nlptl.errors import UsageError
from nlptl.stages.common import Run, check_block_size, write_stage

log = logging.getLogger("nlptl")


def lm_stage(run: Run, *, accelerator, model, tokenizer, objective: str, corpora: list, lineage: dict,
             kept: dict | None = None, notes: list[str] | None = None, head_added: bool = False,
             pooling: str | None = None, probe=None) -> dict:
    """Train `model` on `corpora` (one, or a mixture) with `objective` and write the run's directory.
    Perplexity is measured on the first corpus's held-out blocks (a mixture's domain corpus comes first);
    with a mixture, also on each corpus's at the end. `head_added`: the LM head is new (--head-warmup
    trains it alone first). `probe`: the task spec of adapt's --probe (probe.probe_spec), or None; `pooling`:
    how the probe pools the body's features. `lineage` carries the stage's `handoff` entry; this adds what
    training decided."""
    from nlptl import rates
    from nlptl.data.collate import lm_collators
    from nlptl.evaluation import lm_loss
    from nlptl.models import positions_of

    stage, cfg, out = run.stage, run.cfg, run.out
    check_block_size(cfg.block_size, positions_of(model.config))
    for note in notes or []:
        log.info(note)
    train_blocks, held_outs, preprocess_seconds = blocks_of(cfg, corpora, tokenizer, objective, accelerator)
    held_out = next(iter(held_outs.values()))
    train_collate, eval_collate = lm_collators(tokenizer, objective, cfg.mlm_probability, cfg.seed,
                                               objective == "mlm" and cfg.whole_word_mask)

    def score(m, blocks=held_out):
        return lm_loss(accelerator, m, blocks, eval_collate(), cfg.batch_size)

    probe = make_probe(probe, cfg, tokenizer, pooling or "mean", accelerator)
    peft_model = lora(cfg, model, objective, head_added)
    checkpoints = run.checkpoints()
    # The record keeps --lr as given (auto, or unset: a rerun resolves it alike); training gets the rate.
    lr_found = (auto_lr(cfg, stage, accelerator, model, objective, train_blocks, train_collate, out)
                if cfg.lr == "auto" else None)
    train_cfg = rates.resolve(cfg, objective=objective, range_test=lr_found).apply(cfg)
    # A new head trains alone first (not under LoRA, which leaves the head as it is).
    warmup = cfg.head_warmup if head_added and peft_model is None else 0.0
    if warmup and cfg.max_steps and round(warmup * cfg.max_steps) == 0:
        # The share is of the steps: a run too short for one step of it trains head and body together.
        log.info("head warm-up: %g of %d step(s) rounds to no step; the new head and the body train together",
                 warmup, cfg.max_steps)
        (lineage.get("choices") or {}).pop("head_warmup", None)
        warmup = 0.0
    train_cfg = dataclasses.replace(train_cfg, head_warmup=warmup)
    with run.open_log(accelerator) as runlog:
        before = scores(score, probe, model.to(accelerator.device), accelerator)
        runlog.log({"step": 0, **{f"eval_{k}": v for k, v in before.items()}})
        guarded = probe is not None and probe.guards(before["probe_accuracy"])
        # Periodic evaluations for the probe, or for --patience on held-out perplexity (none otherwise).
        evaluate = (lambda m: scores(score, probe, m, accelerator)) if probe is not None or cfg.patience else None
        model, result = fit_lm(train_cfg, stage, accelerator, model, objective, train_blocks, train_collate, runlog,
                               checkpoints, evaluate, by_probe=guarded)
        after = kept_scores(result, evaluate is not None) or scores(score, probe, model, accelerator)
        by_corpus = ({name: score(model, blocks)["perplexity"] for name, blocks in held_outs.items()}
                     if len(corpora) > 1 else None)
        if evaluate is None:  # else the loop evaluated the last step already (the kept one may be earlier)
            runlog.log({"step": result.steps, **{f"eval_{k}": v for k, v in after.items()}})
    metrics = lm_metrics(before, after, result, head_added, train_cfg, lr_found, n_eval=len(held_out),
                         streaming=cfg.streaming, preprocess_seconds=preprocess_seconds, out=out)
    if by_corpus:
        metrics["perplexity_by_corpus"] = by_corpus
    if probe is not None:
        metrics.update(probe_results(before, after, result, probe, metrics.get("head_warmup_steps", 0), guarded))
    record_training(lineage, cfg, corpora, objective, result, lr_found, warmup)
    record_kept(lineage, result, evaluate is not None, "probe" if guarded else "held-out perplexity")

    def write(w) -> dict:
        from nlptl.models import save_lora, save_sentence_pooling

        if lr_found is not None:
            from nlptl import lr_find

            lr_find.save(w.path, lr_found)
        carried = (lineage.get("handoff") or {}).get("pooling")
        if carried:  # a sentence encoder's pooling, kept in the files that say it (SentenceTransformer(path))
            save_sentence_pooling(w.path, carried["value"], model.config.hidden_size, cfg.block_size)
        if peft_model is not None:
            return {"lora": save_lora(w, peft_model, tokenizer, cfg.merge, kept), "history": result.history}
        w.save_model(model, tokenizer, kept)
        return {"history": result.history}

    return write_stage(run, metrics=metrics, lineage=lineage, write=write, accelerator=accelerator)


def lora(cfg: LMConfig, model, objective: str, head_added: bool):
    """--lora: the adapters injected into `model` in place (LoRA's B starts at zero, so the "before" score
    is the base model's; everything trains `model` as usual); returns the PeftModel, or None."""
    if not cfg.lora:
        return None
    from nlptl.models import apply_lora

    if head_added:
        log.warning("the %s head is new and LoRA leaves it at its random initialisation; "
                    "a full adapt (without --lora) trains it", "masked-LM" if objective == "mlm" else "causal-LM")
    return apply_lora(model, cfg)


def make_probe(spec, cfg: LMConfig, tokenizer, pooling: str, accelerator):
    """The --probe of an adapt run (nlptl/probe.py) on its task spec, or None."""
    from nlptl.probe import Probe

    if spec is None:
        return None
    probe = Probe(spec, tokenizer, pooling, cfg.block_size, cfg.seed, accelerator)
    log.info("probe: %s, %d examples of %d labels, %s pooling, %d-fold logistic regression on frozen features",
             spec.train.spec, len(probe.labels), len(probe.names), pooling, probe.folds)
    return probe


def scores(score, probe, model, accelerator) -> dict:
    """Held-out loss and perplexity, and with a probe its accuracy on the model's frozen features (`model`:
    the LM, or inside the loop the model it trains, which may wrap it)."""
    from nlptl.models import unwrap_lm

    lm = unwrap_lm(accelerator.unwrap_model(model))
    out = {k: v for k, v in score(lm).items() if k != "tokens"}
    if probe is not None:
        out["probe_accuracy"] = probe.score(lm, accelerator.device)
    return out


def kept_scores(result, evaluated: bool) -> dict | None:
    """The kept checkpoint's scores as the loop's evaluation of it recorded them (with a probe or
    --patience, the loop evaluated it and scoring it again would repeat a whole held-out pass), or None."""
    if not evaluated or result.best_step is None:
        return None
    row = next((r for r in reversed(result.history) if r.get("step") == result.best_step and "eval_perplexity" in r),
               None)
    return None if row is None else {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_")}


def lm_metrics(before: dict, after: dict, result, head_added: bool, train_cfg, lr_found, *, n_eval: int,
               streaming: bool, preprocess_seconds: float, out: Path) -> dict:
    """The LM stage's result (--json) and recorded metrics."""
    return {
        "perplexity": after["perplexity"],
        "perplexity_before": before["perplexity"],  # with a newly added LM head this is no baseline
        "lm_head_added": head_added,
        "loss": after["loss"],
        "steps": result.steps,
        "n_train": result.n_train if not streaming else None,  # a stream's length is not known
        "n_eval": n_eval,
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        "preprocess_seconds": round(preprocess_seconds, 3),
        **({"lr_found": train_cfg.lr} if lr_found is not None else {}), "lr": train_cfg.lr,
        **({"head_warmup_steps": round(train_cfg.head_warmup * result.steps)} if train_cfg.head_warmup else {}),
        **({"best_step": result.best_step} if result.patience else {}), **result.early_stop_metrics(),
        "output_dir": str(out),
    }


def probe_results(before: dict, after: dict, result, probe, warmup_steps: int = 0, guarded: bool = True) -> dict:
    """The probe's scores: before, at each evaluation (the curve), the kept checkpoint's; with a warning
    when adapting ended below where it started, or when the kept checkpoint is the end of the head's
    warm-up (the starting body: no evaluation after the body joined did better). A probe at chance
    (`guarded` False: Probe.guards said so) selected nothing, and its differences are noise: no warning."""
    curve = [{"step": 0, "probe_accuracy": before["probe_accuracy"], "perplexity": before["perplexity"]}]
    curve += [{"step": r["step"], "probe_accuracy": r["eval_probe_accuracy"], "perplexity": r.get("eval_perplexity")}
              for r in result.history if "eval_probe_accuracy" in r]
    if curve[-1]["step"] != result.steps:
        curve.append({"step": result.steps, "probe_accuracy": after["probe_accuracy"],
                      "perplexity": after["perplexity"]})
    if not guarded:
        pass
    elif warmup_steps and result.best_step == warmup_steps and result.steps > warmup_steps:
        log.warning("adapting did not improve the probe's accuracy on %s (%.3f before): the kept checkpoint is the "
                    "end of the head's warm-up (step %d), the starting body with its new head", probe.spec.train.spec,
                    before["probe_accuracy"], warmup_steps)
    elif after["probe_accuracy"] < before["probe_accuracy"] - 1 / len(probe.labels):  # more than one text
        log.warning("adapting lowered the probe's accuracy on %s: %.3f before, %.3f for the kept checkpoint (step %s); "
                    "the task may be better served by the model adapt started from", probe.spec.train.spec,
                    before["probe_accuracy"], after["probe_accuracy"], result.best_step)
    return {"probe_accuracy_before": before["probe_accuracy"], "probe_accuracy": after["probe_accuracy"],
            "best_step": result.best_step, "probe_curve": curve, "probe_guarded": guarded,
            "probe_chance": round(probe.chance()[1], 4)}


def record_kept(lineage: dict, result, evaluated: bool, by: str) -> None:
    """With a probe or --patience, the kept checkpoint may be earlier than the last step: the lineage says
    which, and by what it was the best."""
    if evaluated and result.best_step is not None:
        lineage.update(kept_step=result.best_step, kept_by=by)


def record_training(lineage: dict, cfg: LMConfig, corpora: list, objective: str, result, lr_found,
                    warmup: float) -> None:
    """What the LM stage's lineage records of its training."""
    if len(corpora) > 1:  # `corpus` stays the one perplexity is measured on (the first: the domain)
        lineage["mixture"] = [c.record() for c in corpora]
    lineage.update(objective=objective, corpus=corpora[0].record(), block_size=cfg.block_size,
                   masking=(("whole-word" if cfg.whole_word_mask else "token") if objective == "mlm" else None),
                   steps=result.steps, **({"streaming": True} if cfg.streaming else {}),
                   tokens_seen=result.train_tokens, **({"lr": {"auto": lr_found}} if lr_found is not None else {}),
                   **({"head_warmup": warmup} if warmup else {}))


def lm_from(cfg: LMConfig, ref) -> dict:
    """An existing checkpoint as a language model with the objective's head (--objective, or the
    family's): lm_stage's model arguments."""
    from nlptl import models

    config, tokenizer = models.load_config_and_tokenizer(ref)
    objective = models.default_objective(config) if cfg.objective == "auto" else cfg.objective
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
    from nlptl.data.stream import shard

    pack = packer(tokenizer, cfg.block_size, word_starts)
    # One block past the held-out sample: a stream with none would leave the loop waiting for a first batch.
    first = list(stream_blocks(corpus, pack).take(cfg.max_eval_blocks + 1))
    if len(first) <= cfg.max_eval_blocks:
        raise UsageError(f"--corpus {corpus.spec} gives only {len(first)} block(s) of --block-size {cfg.block_size}, "
                         f"all of them needed for the held-out sample (--max-eval-blocks {cfg.max_eval_blocks}): "
                         "nothing left to train on; lower --max-eval-blocks, or drop --streaming for a small corpus")
    held_out = datasets.Dataset.from_list(first[: cfg.max_eval_blocks])
    log.info("%s: streamed, %d blocks of %d tokens held out (the first ones)", corpus.spec, len(held_out),
             cfg.block_size)
    return (lambda: shard(stream_blocks(corpus, pack).skip(cfg.max_eval_blocks), accelerator)), held_out


def auto_lr(cfg: LMConfig, stage: str, accelerator, model, objective: str, blocks, collate, out: Path):
    """--lr auto: the range test's record (its `lr`: the rate it picks) on the training blocks, trained as
    fit_lm trains them (lr_find.range_test_record: a resumed run reuses it)."""
    from nlptl import lr_find
    from nlptl.models import masked_only
    from nlptl.objective import language_model

    def search() -> dict:
        trial = (masked_only(model) if objective == "mlm" else None) or model
        return lr_find.range_test(accelerator, trial.to(accelerator.device), blocks, cfg,
                                  language_model(collate, objective), description=f"{stage} lr range test")

    return lr_find.range_test_record(cfg, out, accelerator, search)


def fit_lm(cfg: LMConfig, stage: str, accelerator, model, objective: str, blocks, collate, runlog, checkpoints,
           evaluate=None, by_probe: bool = True):
    """train() with the objective's collator; returns (the trained LM, TrainResult). `evaluate(model)`:
    the scores at each evaluation; the kept checkpoint is the best by probe accuracy (`by_probe`), else
    (--patience without a probe) by held-out perplexity. `checkpoints`: the run's (Run.checkpoints)."""
    from nlptl.models import masked_only
    from nlptl.objective import language_model
    from nlptl.train import train

    # Ties to the later checkpoint: the probe's accuracy moves in steps of 1/n, and of equal task features
    # the more adapted body is the one to keep.
    select = ("probe_accuracy", "max_latest") if by_probe else ("perplexity", "min")
    # MLM trains on the masked positions only (same loss, a fraction of the vocabulary projection).
    sparse = masked_only(model) if objective == "mlm" else None
    goal = language_model(collate, objective, evaluate, select)
    trained, result = train(accelerator, sparse or model, blocks, cfg, goal, description=stage,
                            checkpoints=checkpoints, runlog=runlog)
    return (trained.lm if sparse is not None else trained), result
