"""Shared test assets, all written by the tests into temporary directories.

- texts: a small generated corpus (a few hundred original sentences) and labelled CSVs of an easy task
  ('great' vs 'awful');
- tiny random-init checkpoints of five families (hidden 32, 2 layers), each saved with
  `save_pretrained` next to a fast tokenizer trained on the spot with `tokenizers`:
  a bare BertModel with pooler (like all-MiniLM-L6-v2), RoBERTa (514 positions, padding offset,
  tokenizer with a huge model_max_length), DistilBERT (no token_type_ids), GPT-2 (no pad token) and a
  Llama-style decoder (tokenizer without model_max_length);
- NLPTL_HOME and the `datasets` cache point into temporary directories, so nothing is written into
  the repository or the user's cache.

Trained runs that several test modules read (adapt, finetune) are session fixtures: built once.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "llama")
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 2, 64

_HF_CACHE: str | None = None


def pytest_configure(config) -> None:
    # Must happen before `datasets` is imported (it reads the variable at import time): every Arrow
    # cache file of this test session goes into a temporary directory, removed at the end.
    global _HF_CACHE
    if "HF_DATASETS_CACHE" not in os.environ:
        _HF_CACHE = tempfile.mkdtemp(prefix="nlptl-tests-datasets-")
        os.environ["HF_DATASETS_CACHE"] = _HF_CACHE
    # Evaluate loads our metric modules from local paths; keep its module cache out of ~/.cache too.
    os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_HF_CACHE or tempfile.gettempdir(), "modules"))


def pytest_unconfigure(config) -> None:
    if _HF_CACHE:
        shutil.rmtree(_HF_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """NLPTL_HOME for session fixtures (runs built once and shared)."""
    import torch

    # One thread: models this small gain nothing from more, and on a busy 2-core machine the spinning
    # of a second thread makes the tests several times slower.
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("nlptl-home-session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLPTL_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def nlptl_home(tmp_path, monkeypatch):
    """Each test gets its own empty NLPTL_HOME (default run directories, registry.yaml, caches)."""
    home = tmp_path / "nlptl-home"
    home.mkdir()
    monkeypatch.setenv("NLPTL_HOME", str(home))
    return home


@pytest.fixture
def no_bf16(monkeypatch):
    """Make precision 'auto' mean fp32 (as it does on every CPU; a GPU would pick bf16 or fp16): for tests
    that compare numbers from a stage with a fixed precision against `evaluate`, which always uses 'auto'."""
    from nlptl import runtime

    real = runtime.mixed_precision
    monkeypatch.setattr(runtime, "mixed_precision",
                        lambda precision: real("fp32" if precision == "auto" else precision))


# --------------------------------------------------------------------------- texts

_PEOPLE = ["Mara", "the old baker", "a tired pilot", "my cousin", "the night nurse", "Tomas", "the gardener",
           "a quiet student", "the ferry captain", "our neighbour"]
_VERBS = ["painted", "repaired", "carried", "sold", "found", "described", "borrowed", "cleaned", "measured",
          "photographed"]
_THINGS = ["a blue kettle", "the wooden gate", "three copper lamps", "an old radio", "the garden bench",
           "a map of the harbour", "the broken clock", "two linen shirts", "a basket of pears", "the red bicycle"]
_PLACES = ["near the river", "before breakfast", "in the village hall", "after the storm", "on a windy hill",
           "behind the station", "during the festival", "at the market", "under the bridge", "by candlelight"]

_ITEMS = ["film", "soup", "hotel room", "phone", "novel", "concert", "laptop", "museum tour", "bakery",
          "train ride", "sofa", "podcast", "jacket", "board game", "camera"]
_OPENERS = ["Honestly, the", "I thought the", "Everyone agreed the", "To be fair, the", "My friend said the",
            "In the end the", "Frankly, the", "Last week the"]
_ENDINGS = ["from start to finish.", "and I would say so again.", "for the price.", "by any measure.",
            "if you ask me.", "on every count."]


def general_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(_PEOPLE).capitalize()} {rng.choice(_VERBS)} {rng.choice(_THINGS)} {rng.choice(_PLACES)}."
            for _ in range(n)]


def labelled_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """An easy task: the label is whether the sentence says 'great' or 'awful'."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = "great" if label == "positive" else "awful"
        rows.append((f"{rng.choice(_OPENERS)} {rng.choice(_ITEMS)} was {word} {rng.choice(_ENDINGS)}", label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def corpus_file(assets) -> Path:
    """About 400 generated sentences, one per line (the domain corpus of the family tests)."""
    path = assets / "corpus.txt"
    path.write_text("\n".join(general_sentences(400)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def repetitive_corpus(assets) -> Path:
    """A handful of sentences repeated many times: a model can memorize it, so perplexity must fall."""
    lines = ["the cat sat on the mat and looked at the door .",
             "one two three four five six seven eight nine ten .",
             "red green blue yellow red green blue yellow ."] * 60
    path = assets / "repetitive.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def task_files(assets) -> dict[str, Path]:
    """train.csv (240 rows), eval.csv and test.csv (40 rows each), labels 'positive'/'negative'."""
    rows = labelled_rows(320, seed=1)
    return {
        "train": write_csv(assets / "train.csv", rows[:240]),
        "eval": write_csv(assets / "eval.csv", rows[240:280]),
        "test": write_csv(assets / "test.csv", rows[280:]),
    }


def tokenizer_texts() -> list[str]:
    return general_sentences(400) + [t for t, _ in labelled_rows(400, seed=7)] + [
        "the cat sat on the mat and looked at the door .",
        "one two three four five six seven eight nine ten .",
        "red green blue yellow red green blue yellow .",
    ] * 5


# --------------------------------------------------------------------------- tiny checkpoints


def _wordpiece(texts: list[str], model_input_names=None):
    from tokenizers import BertWordPieceTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tk = BertWordPieceTokenizer(lowercase=True)
    tk.train_from_iterator(texts, vocab_size=400, min_frequency=1, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tk._tokenizer.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))  # [CLS] ... [SEP]
    kwargs = {"model_input_names": model_input_names} if model_input_names else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                   model_max_length=128, **kwargs)


def _byte_bpe(texts: list[str], specials: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    tk = ByteLevelBPETokenizer(add_prefix_space=False)
    tk.train_from_iterator(texts, vocab_size=500, min_frequency=2, special_tokens=specials, show_progress=False)
    return tk._tokenizer


def build_checkpoint(family: str, out: Path) -> Path:
    """A tiny random-init checkpoint of `family` with its own fast tokenizer, saved in `out`."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    texts = tokenizer_texts()
    if family == "bert":
        from transformers import BertConfig, BertModel

        tok = _wordpiece(texts)
        config = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=128,
                            pad_token_id=tok.pad_token_id)
        model = BertModel(config, add_pooling_layer=True)  # bare encoder + pooler, like all-MiniLM-L6-v2
    elif family == "roberta":
        from transformers import RobertaConfig, RobertaForMaskedLM

        backend = _byte_bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        # A huge placeholder, as many hub checkpoints store: nlptl must fall back to 514 - 2 positions.
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                      cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                      model_max_length=int(1e30))
        config = RobertaConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                               max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2)
        model = RobertaForMaskedLM(config)
    elif family == "distilbert":
        from transformers import DistilBertConfig, DistilBertForMaskedLM

        tok = _wordpiece(texts, model_input_names=["input_ids", "attention_mask"])
        config = DistilBertConfig(vocab_size=len(tok), dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                  hidden_dim=INTERMEDIATE, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        model = DistilBertForMaskedLM(config)
    elif family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        backend = _byte_bpe(texts, ["<|endoftext|>"])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      unk_token="<|endoftext|>", model_max_length=128)  # no pad token
        config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        backend = _byte_bpe(texts, ["<unk>", "<s>", "</s>"])
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                               special_tokens=[("<s>", 1)])
        # No model_max_length at all (transformers then stores a huge placeholder), no pad token.
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        config = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, num_key_value_heads=HEADS, intermediate_size=INTERMEDIATE,
                             max_position_embeddings=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(family)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """family -> directory of a tiny random-init checkpoint (built once per session, on first use)."""
    root = tmp_path_factory.mktemp("checkpoints")

    class Lazy(dict):
        def __missing__(self, family: str) -> Path:
            self[family] = build_checkpoint(family, root / family)
            return self[family]

    return Lazy()


# --------------------------------------------------------------------------- stage helpers

# Small, fast settings shared by the in-process stage tests. fp32: bf16 autocast on a CPU that has it
# (precision 'auto') is ~3x slower for models this small.
FAST = {"batch_size": 4, "max_steps": 4, "log_every": 2, "precision": "fp32"}


def adapt_cfg(**kw):
    from nlptl.config import AdaptConfig

    return AdaptConfig(**{"block_size": 32, "validation_percentage": 10.0, "lr": 1e-3, **FAST, **kw})


def finetune_cfg(**kw):
    from nlptl.config import FinetuneConfig

    return FinetuneConfig(**{"task": "classification", "max_length": 32, "lr": 1e-3, **FAST, **kw})


def pretrain_cfg(**kw):
    from nlptl.config import PretrainConfig

    # A tokenizer of 300 tokens for models built from scratch; a checkpoint (--from) brings its own.
    scratch = {} if kw.get("from_model") else {"vocab_size": 300}
    return PretrainConfig(**{"block_size": 32, "validation_percentage": 10.0, **scratch, **FAST, **kw})


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A directory for runs that session fixtures share."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def adapted(checkpoints, corpus_file, runs) -> dict[str, tuple[Path, dict]]:
    """family -> (adapt run dir, result dict): each family adapted once, on first use."""
    from nlptl.stages import adapt

    class Lazy(dict):
        def __missing__(self, family: str):
            out = runs / f"adapt-{family}"
            result = adapt.run(adapt_cfg(from_model=str(checkpoints[family]), corpus=str(corpus_file), out=str(out)))
            self[family] = (out, result)
            return self[family]

    return Lazy()


@pytest.fixture(scope="session")
def finetuned(adapted, task_files, runs) -> dict[str, tuple[Path, dict]]:
    """family -> (finetune run dir, result dict), fine-tuned from the adapted run on the easy task."""
    from nlptl.stages import finetune

    class Lazy(dict):
        def __missing__(self, family: str):
            out = runs / f"finetune-{family}"
            result = finetune.run(finetune_cfg(from_model=str(adapted[family][0]), train_file=str(task_files["train"]),
                                               eval_file=str(task_files["eval"]), out=str(out)))
            self[family] = (out, result)
            return self[family]

    return Lazy()


@pytest.fixture(scope="session")
def trained_classifier(checkpoints, task_files, runs) -> tuple[Path, dict]:
    """A GPT-2 classifier trained until it separates the easy task ('great' vs 'awful')."""
    from nlptl.stages import finetune

    out = runs / "finetune-trained"
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["gpt2"]), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(out), max_steps=100,
                                       batch_size=16, lr=2e-3, log_every=5))
    return out, result


# A process that takes --out's lock (as a run does) and holds it until killed: another run in flight.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from nlptl.rundir import OutLock
lock = OutLock(Path(sys.argv[1]))
assert lock.acquire() is None
print("locked", flush=True)
time.sleep(60)
"""


def hold_lock(out: Path):
    """A subprocess holding the lock of `out`; the caller kills it."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
