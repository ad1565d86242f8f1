#!/usr/bin/env python
"""The transformers `run_glue.py` recipe (custom CSV task), reduced to what the speed comparison needs.

    python bench/reference/run_glue.py --model MINILM --train-file train.csv --output-dir OUT \
        --max-steps 16 --batch-size 32 --block-size 128

As in the example with its defaults: a CSV with `text`/`label` read with `datasets`, tokenized with
`padding="max_length"` to `max_seq_length` 128 (`pad_to_max_length` is on by default) and truncation,
`default_data_collator`, `AutoModelForSequenceClassification` (the family's own CLS head), the
Trainer with its defaults.
"""

from __future__ import annotations

from _common import finish, pad_decoder, parse, training_args


def main() -> None:
    a = parse(__doc__.splitlines()[1], lr=2e-5)
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        default_data_collator,
        set_seed,
    )

    set_seed(a.seed)
    raw = load_dataset("csv", data_files={"train": a.train_file})["train"]
    labels = sorted(set(raw["label"]))
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=len(labels))
    pad_decoder(tokenizer, model)
    label_to_id = {v: i for i, v in enumerate(labels)}

    def preprocess_function(examples):
        result = tokenizer(examples["text"], padding="max_length", max_length=a.block_size, truncation=True)
        result["label"] = [label_to_id[v] for v in examples["label"]]
        return result

    train = raw.map(preprocess_function, batched=True, remove_columns=["text"])
    trainer = Trainer(model=model, args=training_args(a), train_dataset=train, data_collator=default_data_collator)
    finish(trainer, tokenizer, a, n_examples=len(train), max_seq_length=a.block_size)


if __name__ == "__main__":
    main()
