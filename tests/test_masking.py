"""MLM masking: token-level and whole-word, for WordPiece and byte-level BPE tokenizers alike."""

from __future__ import annotations

import pytest
import torch

from nlptl.data.masking import MaskingCollator

WORDS = ("unbelievably charming storytelling, extraordinarily disappointing cinematography and "
         "a wonderfully understated performance from everybody involved").split()
TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 8


@pytest.fixture(scope="module", params=["gpt", "bert"])
def packed(request):
    import datasets

    from nlptl.data.lm import pack_blocks
    from nlptl.models import train_tokenizer

    # A small vocabulary forces long words into several sub-word tokens.
    tok = train_tokenizer(request.param, iter([TEXTS]), vocab_size=120, positions=64)
    if tok.mask_token is None:
        tok.add_special_tokens({"mask_token": "<mask>"})
    ds = datasets.Dataset.from_dict({"text": TEXTS})
    blocks = pack_blocks(ds, tok, 32, corpus_key=f"masking-{request.param}", word_starts=True)
    return request.param, tok, blocks


def test_word_starts_follow_the_tokenizer(packed):
    arch, tok, blocks = packed
    row = blocks[3]
    assert len(row["input_ids"]) == len(row["word_starts"]) == 32
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    specials = set(tok.all_special_tokens)
    for j, (piece, start) in enumerate(zip(pieces, row["word_starts"], strict=True)):
        if j == 0 or piece in specials or pieces[j - 1] in specials:
            continue
        if arch == "bert":  # WordPiece: continuation pieces start with ##
            assert start == (0 if piece.startswith("##") else 1), (j, piece)
        elif piece[0].isalpha() and pieces[j - 1][-1].isalpha():  # BPE: a new word carries the space marker
            assert start == (1 if piece.startswith("Ġ") else 0), (j, piece)
    assert 0 in row["word_starts"]  # some words really are split


def test_whole_word_masking_masks_all_pieces_of_a_word(packed):
    _, tok, blocks = packed
    rows = [blocks[i] for i in range(len(blocks))]
    collate = MaskingCollator(tok, mlm_probability=0.3, whole_word=True, seed=1)
    batch = collate(rows)
    masked = batch["labels"] != -100
    starts = torch.tensor([r["word_starts"] for r in rows])
    ids = torch.tensor([r["input_ids"] for r in rows])
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert masked.any()
    for b in range(len(rows)):
        word = starts[b].cumsum(0)
        for w in word.unique():
            in_word = (word == w) & ~special[b]
            assert masked[b][in_word].all() or not masked[b][in_word].any()
    assert not masked[special].any()
    assert torch.equal(batch["labels"][masked], ids[masked])


def test_token_masking_rate_and_determinism(packed):
    _, tok, blocks = packed
    rows = [blocks[i] for i in range(len(blocks))]
    a = MaskingCollator(tok, 0.15, seed=7)(rows)
    b = MaskingCollator(tok, 0.15, seed=7)(rows)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    ids = torch.tensor([r["input_ids"] for r in rows])
    maskable = ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    rate = (a["labels"] != -100).sum() / maskable.sum()
    assert 0.10 < rate < 0.20
    chosen = a["labels"] != -100
    replaced = (a["input_ids"] == tok.mask_token_id) & chosen
    assert 0.65 < replaced.sum() / chosen.sum() < 0.95  # about 80% of the chosen tokens become the mask token
