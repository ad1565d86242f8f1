"""Stage 1: a general language model, trained from scratch or taken from an existing checkpoint.

    nlptl pretrain --arch gpt --size tiny --corpus sample-general       # from scratch, seconds on a CPU
    nlptl pretrain --arch bert --size small --corpus wikitext-103 --out runs/general-bert
    nlptl pretrain --from bert-base-uncased --out runs/general          # take a checkpoint as the general stage
    nlptl pretrain --from DIR --corpus more.txt                         # ... and continue training it

From scratch: a tokenizer is trained on the corpus (byte-level BPE for gpt, WordPiece for bert) and a
GPT-2 or BERT of the preset size is initialised at random.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from nlptl.config import PretrainConfig, runs_root
from nlptl.data.corpora import mixture_key, resolve_corpora
from nlptl.errors import UsageError
from nlptl.models import inspect_model, positions_of, require_peft, scratch_positions
from nlptl.rundir import lineage_of
from nlptl.stages.common import Run, check_block_size, open_stage, start, write_stage

log = logging.getLogger("nlptl")

MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.py")


def run(cfg: PretrainConfig, command: list[str] | None = None) -> dict:
    """`command`: the arguments `nlptl` was given (None from Python), which the record quotes."""
    if cfg.lora and not (cfg.from_model and cfg.corpus):
        raise UsageError("--lora continues an existing model: pass --from MODEL and --corpus CORPUS "
                         "(or train without --lora)")
    if cfg.lora:
        require_peft()
    ref = inspect_model(cfg.from_model) if cfg.from_model else None
    if ref is not None and ref.is_classifier:
        raise UsageError(f"--from {ref.spec} is a fine-tuned classifier, not a general language model")
    if ref is None:
        check_block_size(cfg.block_size, scratch_positions(cfg.arch, cfg.size))
    elif ref.config:
        check_block_size(cfg.block_size, positions_of(ref.config))
    corpora = resolve_corpora(cfg.corpus, cfg.text_column, cfg.train_file) if cfg.corpus else None
    if ref is None and (cfg.streaming or len(corpora) > 1):
        # The new tokenizer is trained on the whole of one corpus, read ahead.
        raise UsageError(f"{'--streaming' if cfg.streaming else 'a mixture of corpora'} needs --from MODEL (a model "
                         "with its tokenizer); to train from scratch, pass one corpus without --streaming")
    with open_stage(cfg, "pretrain", ref.path if ref and ref.local else None,
                    {"--corpus": mixture_key(corpora)} if corpora else None, command) as opened:
        if ref is not None and corpora is None:
            return take_checkpoint(opened, ref)
        return pretrain(opened, ref, corpora)


def pretrain(run: Run, ref, corpora: list) -> dict:
    """Train on the corpus: a new model (`ref` None) or an existing checkpoint, continued."""
    from nlptl import handoff
    from nlptl.stages.lm import lm_from, lm_stage

    cfg = run.cfg
    accelerator = start(cfg, run.out)
    if ref is not None:  # an existing checkpoint, continued on the corpus
        model = lm_from(cfg, ref)
        model["lineage"] = lineage_of("pretrain", ref, source="checkpoint, continued", handoff=handoff.record(
            pooling=handoff.carried_pooling(ref), origin_of=handoff.lm_origin(ref),
            objective=model["objective"], config=model["model"].config))
    else:
        model = _scratch(cfg, corpora[0], accelerator)
        model["lineage"]["handoff"] = handoff.record(pooling=None, origin_of=handoff.SCRATCH,
                                                     objective=model["objective"], config=model["model"].config)
    return lm_stage(run, accelerator=accelerator, corpora=corpora, **model)


def _scratch(cfg: PretrainConfig, corpus, accelerator) -> dict:
    """A new model of --arch and --size, with a tokenizer trained on the corpus: lm_stage's model arguments."""
    from nlptl import models

    objective = "clm" if cfg.arch == "gpt" else "mlm"
    if cfg.objective != "auto" and cfg.objective != objective:
        raise UsageError(f"--arch {cfg.arch} trains with {objective}; drop --objective {cfg.objective}")
    with accelerator.main_process_first():
        tokenizer = scratch_tokenizer(cfg, corpus)
    model = models.build_scratch(cfg.arch, cfg.size, tokenizer)
    notes = [f"new {cfg.arch} ({cfg.size}): {models.count_parameters(model) / 1e6:.2f}M parameters, "
             f"vocabulary {len(tokenizer)}"]
    lineage = lineage_of("pretrain", None, source="scratch", arch=cfg.arch, size=cfg.size, vocab_size=len(tokenizer))
    return {"model": model, "tokenizer": tokenizer, "objective": objective, "lineage": lineage, "notes": notes}


def scratch_tokenizer(cfg: PretrainConfig, corpus):
    """Train (or reuse, for the same corpus and settings) the tokenizer of a from-scratch model."""
    from transformers import AutoTokenizer

    from nlptl.data.corpora import load_corpus
    from nlptl.models import DEFAULT_VOCAB, train_tokenizer

    vocab = cfg.vocab_size or DEFAULT_VOCAB[cfg.size]
    positions = scratch_positions(cfg.arch, cfg.size)
    key = hashlib.sha256(f"{corpus.sha256 or corpus.spec}|{cfg.arch}|{vocab}|{positions}|v2".encode()).hexdigest()[:16]
    cache = runs_root() / ".cache" / "tokenizers" / key
    if (cache / "tokenizer.json").is_file():
        log.info("reusing the tokenizer trained on this corpus before (%s)", cache)
        return AutoTokenizer.from_pretrained(cache)
    texts = load_corpus(corpus)
    batches = (texts[i : i + 1000]["text"] for i in range(0, len(texts), 1000))
    log.info("training a %s tokenizer (vocabulary %d) on %s", "byte-level BPE" if cfg.arch == "gpt" else "WordPiece",
             vocab, corpus.spec)
    tokenizer = train_tokenizer(cfg.arch, batches, vocab, positions)
    tmp = cache.with_name(cache.name + ".tmp")
    tokenizer.save_pretrained(tmp)
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)
    return AutoTokenizer.from_pretrained(cache)


def take_checkpoint(run: Run, ref) -> dict:
    """Record an existing checkpoint as the general stage: its files are copied as they are."""
    src = Path(ref.path)
    if not ref.local:
        from nlptl import models

        models.hub_guard(ref)
        try:
            from huggingface_hub import snapshot_download

            src = Path(snapshot_download(ref.path, allow_patterns=list(MODEL_FILES)))
        except Exception as e:  # noqa: BLE001
            raise models.load_error(ref, e) from e

    def write(w) -> dict:
        for pattern in MODEL_FILES:
            for f in src.glob(pattern):
                if f.is_file() and f.name != "nlptl-run.json":
                    shutil.copy2(f, w.path / f.name)
        return {}

    metrics = {"steps": 0, "n_train": 0, "train_tokens": 0, "train_seconds": 0.0, "perplexity": None,
               "perplexity_before": None, "loss": None, "output_dir": str(run.out)}
    return write_stage(run, metrics=metrics, lineage=taken_lineage(ref), write=write, recorded={})


def taken_lineage(ref) -> dict:
    """The lineage of a checkpoint taken as it is: its origin and the pooling it was trained with go on
    (a sentence encoder's 1_Pooling is not among the files copied)."""
    from nlptl import handoff

    return lineage_of("pretrain", ref, source="checkpoint", handoff=handoff.record(
        pooling=handoff.carried_pooling(ref), origin_of=handoff.lm_origin(ref),
        objective=None, config=ref.config or {}))

