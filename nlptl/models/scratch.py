"""Models trained from scratch (`nlptl pretrain --arch --size`): a GPT-2 or BERT of a preset size, and
its tokenizer (byte-level BPE or WordPiece) trained on the corpus.
"""

from __future__ import annotations

# name: (layers, hidden, heads, positions)
PRESETS = {
    "tiny": (2, 64, 2, 256),
    "mini": (4, 256, 4, 512),
    "small": (6, 512, 8, 1024),
    "base": (12, 768, 12, 1024),
}
DEFAULT_VOCAB = {"tiny": 4000, "mini": 8000, "small": 16000, "base": 32000}
BERT_MAX_POSITIONS = 512  # BERT's position embeddings stop at 512 whatever the preset
GPT_EOS = "<|endoftext|>"


def scratch_positions(arch: str, size: str) -> int:
    """The positions of a from-scratch model: the preset's, capped at BERT's 512 for bert."""
    positions = PRESETS[size][3]
    return positions if arch == "gpt" else min(positions, BERT_MAX_POSITIONS)


def train_tokenizer(arch: str, texts, vocab_size: int, positions: int):
    """Byte-level BPE (gpt) or WordPiece (bert) trained on `texts` (an iterator of lists of str)."""
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if arch == "gpt":
        tk = ByteLevelBPETokenizer(add_prefix_space=False)
        tk.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[GPT_EOS],
                               show_progress=False)
        return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, bos_token=GPT_EOS, eos_token=GPT_EOS,
                                       unk_token=GPT_EOS, model_max_length=positions)
    tk = BertWordPieceTokenizer(lowercase=True)
    tk.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # BertWordPieceTokenizer sets its [CLS] ... [SEP] template only when the vocabulary exists at
    # construction, so a tokenizer trained from nothing has none: set it now.
    from tokenizers.processors import BertProcessing

    tk._tokenizer.post_processor = BertProcessing(("[SEP]", tk.token_to_id("[SEP]")),
                                                  ("[CLS]", tk.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                   model_max_length=positions)


def build_scratch(arch: str, size: str, tokenizer):
    """A randomly initialised GPT-2 or BERT of a preset size, sized to the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config

    layers, hidden, heads, _ = PRESETS[size]
    positions = scratch_positions(arch, size)
    vocab = len(tokenizer)
    if arch == "gpt":
        config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return AutoModelForCausalLM.from_config(config)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=positions,
                        pad_token_id=tokenizer.pad_token_id)
    return AutoModelForMaskedLM.from_config(config)
