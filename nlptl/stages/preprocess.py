"""Tokenize and pack a corpus ahead of training, on every core and without a GPU, into the cache that
`adapt` and `pretrain` then read without tokenizing again.

    nlptl preprocess --from bert-base-uncased --corpus reviews/ --block-size 256
    nlptl preprocess --from runs/pretrain-... --corpus big.jsonl --text-column body --num-proc 16
    nlptl preprocess --from DIR --corpus reviews:0.95,wikitext-103:0.05     # each corpus of a mixture

The cache is keyed by the corpus content, the tokenizer and the block size (and, for MLM with
--whole-word-mask, the word starts): a run with the same --from tokenizer, --corpus and --block-size
finds it. The result says where each cache lives and how large it is.
"""

from __future__ import annotations

import logging

from nlptl.config import PreprocessConfig
from nlptl.data.corpora import resolve_corpora

log = logging.getLogger("nlptl")


def run(cfg: PreprocessConfig) -> dict:
    from nlptl.models import inspect_model, positions_of
    from nlptl.stages.common import check_block_size

    ref = inspect_model(cfg.from_model)
    if ref.config:
        check_block_size(cfg.block_size, positions_of(ref.config))
    corpora = resolve_corpora(cfg.corpus, cfg.text_column, cfg.train_file)

    from nlptl import models, runtime
    from nlptl.data.lm import cache_info, corpus_blocks, usable_cores

    runtime.quiet_libraries()  # e.g. the tokenizer's warning about documents longer than the model's positions
    config, tokenizer = models.load_config_and_tokenizer(ref)
    objective = models.default_objective(config) if cfg.objective == "auto" else cfg.objective
    caches = []
    for corpus in corpora:
        _, where = corpus_blocks(corpus, tokenizer, cfg.block_size, objective == "mlm" and cfg.whole_word_mask,
                                 cfg.num_proc or usable_cores())
        info = cache_info(where)
        log.info("%s: %d blocks of %d tokens, %.1f MB, in %s", corpus.spec, info["blocks"], cfg.block_size,
                 info["bytes"] / 1e6, where)
        caches.append({"corpus": corpus.spec, **info})
    return {"caches": caches, "block_size": cfg.block_size, "objective": objective,
            "tokenizer": tokenizer.name_or_path}
