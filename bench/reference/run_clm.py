#!/usr/bin/env python
"""The transformers `run_clm.py` recipe, reduced to what the speed comparison needs.

    python bench/reference/run_clm.py --model GPT --train-file train.txt --output-dir OUT \
        --max-steps 10 --batch-size 8 --block-size 128

As in the example: a text file read with `datasets`, every line tokenized, `group_texts`
concatenates and cuts `block_size` blocks with `labels` = `input_ids`, `default_data_collator`,
`AutoModelForCausalLM`, the Trainer with its defaults.
"""

from __future__ import annotations

from itertools import chain

from _common import finish, parse, training_args


def main() -> None:
    a = parse(__doc__.splitlines()[1])
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator, set_seed

    set_seed(a.seed)
    raw = load_dataset("text", data_files={"train": a.train_file})["train"]
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    block_size = a.block_size

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[next(iter(examples.keys()))])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    train = tokenized.map(group_texts, batched=True)
    trainer = Trainer(model=model, args=training_args(a), train_dataset=train, data_collator=default_data_collator)
    finish(trainer, tokenizer, a, n_blocks=len(train), block_size=block_size)


if __name__ == "__main__":
    main()
