#!/usr/bin/env python
"""The transformers `run_mlm.py` recipe, reduced to what the speed comparison needs.

    python bench/reference/run_mlm.py --model MINILM --train-file train.txt --output-dir OUT \
        --max-steps 8 --batch-size 16 --block-size 128

As in the example: a text file read with `datasets`, every line tokenized with the special tokens
(`return_special_tokens_mask=True`), `group_texts` concatenates and cuts `block_size` blocks,
`DataCollatorForLanguageModeling(mlm_probability=0.15)` masks, `AutoModelForMaskedLM`, the Trainer
with its defaults.
"""

from __future__ import annotations

from itertools import chain

from _common import finish, parse, training_args


def main() -> None:
    a = parse(__doc__.splitlines()[1])
    from datasets import load_dataset
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        set_seed,
    )

    set_seed(a.seed)
    raw = load_dataset("text", data_files={"train": a.train_file})["train"]
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForMaskedLM.from_pretrained(a.model)
    block_size = a.block_size

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[next(iter(examples.keys()))])
        total_length = (total_length // block_size) * block_size
        return {k: [t[i : i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()}

    train = tokenized.map(group_texts, batched=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    trainer = Trainer(model=model, args=training_args(a), train_dataset=train, data_collator=collator)
    finish(trainer, tokenizer, a, n_blocks=len(train), block_size=block_size)


if __name__ == "__main__":
    main()
