"""Masking for the MLM objective, token-level or whole-word, for any fast tokenizer.

transformers' `DataCollatorForLanguageModeling` finds words from offset mappings, which packed blocks
do not carry; here word boundaries come from the tokenizer's own `word_ids()` at tokenization time
(stored per block as `word_starts`), so whole-word masking works for WordPiece, byte-level BPE and
SentencePiece alike. BERT's recipe otherwise: 15% of words (or tokens) are chosen; of their tokens
80% become [MASK], 10% a random token, 10% stay.
"""

from __future__ import annotations


class MaskingCollator:
    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word: bool = False, seed: int = 0,
                 per_example: bool = False):
        """`per_example`: each block's masks come from a generator seeded by the seed and the block's own
        tokens, so evaluation masks are the same whatever the batching or the number of processes."""
        import torch

        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.p = mlm_probability
        self.whole_word = whole_word
        self.seed = seed
        self.per_example = per_example
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
        starts = None
        if self.whole_word:
            starts = torch.tensor([e["word_starts"] for e in examples], dtype=torch.long)
        if not self.per_example:
            input_ids, labels = self.mask(ids, starts, self.generator)
        else:
            import zlib

            rows = []
            for i in range(len(ids)):
                key = zlib.crc32(ids[i].numpy().tobytes()) ^ (self.seed & 0xFFFFFFFF)
                g = torch.Generator().manual_seed(key)
                rows.append(self.mask(ids[i : i + 1], None if starts is None else starts[i : i + 1], g))
            input_ids = torch.cat([r[0] for r in rows])
            labels = torch.cat([r[1] for r in rows])
        return {"input_ids": input_ids, "labels": labels}

    @staticmethod
    def stack(examples: list[dict]) -> dict:
        """Collate blocks without masking (training masks are drawn in the loop by `transform`)."""
        import torch

        out = {"input_ids": torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)}
        if "word_starts" in examples[0]:
            out["word_starts"] = torch.tensor([e["word_starts"] for e in examples], dtype=torch.long)
        return out

    def transform(self, batch: dict) -> dict:
        """Mask a stacked batch. Used by the training loop rather than the DataLoader, because loaders
        collate ahead of time: the generator's state at a step boundary must cover exactly the batches
        trained on, or a resumed run would draw other masks."""
        input_ids, labels = self.mask(batch["input_ids"], batch.get("word_starts"), self.generator)
        return {"input_ids": input_ids, "labels": labels}

    def mask(self, ids, word_starts, g):
        """Mask `ids` (on any device) with the CPU generator `g`. The random draws are made on the CPU
        and moved to the ids' device, so a seed gives the same masks on a CPU and on a GPU, and no CPU
        tensor is combined with a device one."""
        import torch

        device = ids.device

        def draw(shape):
            return torch.rand(shape, generator=g).to(device, non_blocking=True)

        special = torch.isin(ids, self.special_ids.to(device))
        if word_starts is None:
            chosen = draw(ids.shape) < self.p
        else:
            # Every token of a chosen word is chosen: a word is the run from one start to the next.
            word_index = word_starts.to(device).cumsum(1) - 1
            n_words = int(word_index.max().item()) + 1
            chosen_words = draw((ids.shape[0], n_words)) < self.p
            chosen = chosen_words.gather(1, word_index.clamp(min=0))
        chosen &= ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        roll = draw(ids.shape)
        to_mask = chosen & (roll < 0.8)
        to_random = chosen & (roll >= 0.8) & (roll < 0.9)
        out = ids.clone()
        out[to_mask] = self.mask_id
        out[to_random] = torch.randint(self.vocab_size, (int(to_random.sum()),), generator=g).to(device)
        return out, labels
