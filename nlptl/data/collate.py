"""From datasets to batches: tokenizing labelled texts for a classifier, and the collators of every
stage (padding for classifiers; stacking and masking for language models).
"""

from __future__ import annotations

import logging

from nlptl.errors import UsageError

log = logging.getLogger("nlptl")

EVAL_MASK_SEED = 20180118  # fixed: every run and `nlptl evaluate` score the same masked positions


def tokenize(ds, tokenizer, max_length: int, flag: str):
    """Tokenize labelled texts, or pairs of texts (`text_pair`: the tokenizer joins them as the model
    expects); no padding: batches are padded to their own longest text. Says how many texts were cut.
    The `label` column becomes `labels`."""
    pairs = "text_pair" in ds.column_names

    def enc(batch):
        second = batch["text_pair"] if pairs else None
        out = tokenizer(batch["text"], second, truncation=True, max_length=max_length)
        out["n_tokens"] = [len(x) for x in tokenizer(batch["text"], second)["input_ids"]]
        return out

    tok = ds.map(enc, batched=True, remove_columns=["text", "text_pair"] if pairs else ["text"], desc="tokenizing")
    over = sum(1 for n in tok["n_tokens"] if n > max_length)
    if over:
        log.warning("%s: truncated %d of %d texts longer than %d tokens (raise --max-length to keep more)",
                    flag, over, len(tok), max_length)
    return tok.remove_columns("n_tokens").rename_column("label", "labels")


def classification_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    from nlptl.runtime import pad_multiple

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple())


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
        raise UsageError("--objective mlm needs a tokenizer with a mask token; this model's has none "
                         "(use --objective clm)")

    return (MaskingCollator(tokenizer, mlm_probability, whole_word, seed),
            lambda: MaskingCollator(tokenizer, mlm_probability, whole_word, eval_seed, per_example=True))
