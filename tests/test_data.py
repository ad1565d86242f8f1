"""Data: file checks (data/files.py), corpus readers (data/corpora.py), packing (data/lm.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from nlptl.data import files
from nlptl.data.corpora import load_corpus, resolve_corpus
from nlptl.data.files import check_data_file, expand, read_lines
from nlptl.errors import UsageError

# --------------------------------------------------------------------------- file checks


def check(path, **kw):
    return check_data_file(str(path), "--corpus", kw.get("columns"))


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(UsageError, match=r"--corpus .*e\.txt: the file is empty"):
        check(tmp_path / "e.txt")


def test_only_blank_lines(tmp_path):
    (tmp_path / "b.txt").write_text("\n   \n\t\n\r\n")
    with pytest.raises(UsageError, match="holds only blank lines"):
        check(tmp_path / "b.txt")


def test_non_utf8_names_the_line(tmp_path):
    (tmp_path / "latin.txt").write_bytes("one\ntwo\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"line 3 is not valid UTF-8 \(byte 0xe9\); re-encode"):
        check(tmp_path / "latin.txt")


def test_nul_bytes_name_the_line(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"text\nmore text\n\x00\x01\x02binary\n")
    with pytest.raises(UsageError, match="line 3 holds binary data"):
        check(tmp_path / "bin.txt")


def test_line_numbers_across_read_chunks(tmp_path, monkeypatch):
    """The file is read in chunks: a multi-byte character split between two chunks is fine, and a bad
    byte far into the file gets its true line number."""
    monkeypatch.setattr(files, "CHUNK", 7)
    good = "".join(f"ligne {i} café naïve\n" for i in range(50))
    (tmp_path / "ok.txt").write_text(good, encoding="utf-8")
    _, fmt, sha = check(tmp_path / "ok.txt")
    assert fmt == "text" and sha == hashlib.sha256(good.encode()).hexdigest()
    (tmp_path / "bad.txt").write_bytes(good.encode() + b"fine\nbad \xff\n")
    with pytest.raises(UsageError, match="line 52 is not valid UTF-8"):
        check(tmp_path / "bad.txt")
    assert files.scan_text(tmp_path / "ok.txt", "--corpus") == 50


def test_missing_column_suggests_the_closest(tmp_path):
    (tmp_path / "t.csv").write_text("txt,label\nhello,1\n")
    with pytest.raises(UsageError) as e:
        check(tmp_path / "t.csv", columns={"text": "--text-column"})
    msg = str(e.value)
    assert "no column 'text' (did you mean 'txt'?)" in msg and "columns are txt, label" in msg
    assert "pass --text-column NAME" in msg
    (tmp_path / "t.jsonl").write_text(json.dumps({"sentence": "a", "label": 1}) + "\n")
    with pytest.raises(UsageError, match="no column 'text'.*columns are sentence, label"):
        check(tmp_path / "t.jsonl", columns={"text": "--text-column"})
    # Every missing column at once: one run to learn them all, not one run per column.
    (tmp_path / "both.csv").write_text("sentence,sentiment\nhello,1\n")
    with pytest.raises(UsageError, match="no column 'text'; no column 'label'; columns are sentence, sentiment; "
                                         "pass --text-column NAME and --label-column NAME"):
        check(tmp_path / "both.csv", columns={"text": "--text-column", "label": "--label-column"})


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "a.docx").write_text("x")
    with pytest.raises(UsageError, match=r"unsupported file type '\.docx'"):
        check(tmp_path / "a.docx")
    with pytest.raises(UsageError, match="no such file or directory"):
        check(tmp_path / "nope.txt")


def test_directory_and_glob_expansion(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bee\n")
    (d / "a.txt").write_text("ay\n")
    (d / "sub" / "c.txt").write_text("sea\n")
    (d / "README").write_text("not data\n")  # no data suffix: ignored
    assert [p.name for p in expand(str(d), "--corpus")] == ["a.txt", "b.txt", "c.txt"]
    assert [p.name for p in expand(str(d / "*.txt"), "--corpus")] == ["a.txt", "b.txt"]
    assert [p.name for p in expand(str(d / "**" / "*.txt"), "--corpus")] == ["a.txt", "b.txt", "c.txt"]
    files_, fmt, sha = check(d)
    assert len(files_) == 3 and fmt == "text"
    assert sha == hashlib.sha256(b"ay\nbee\nsea\n").hexdigest()  # one hash over the files, in order
    texts = load_corpus(resolve_corpus(str(d)))["text"]
    assert sorted(texts) == ["ay", "bee", "sea"]

    with pytest.raises(UsageError, match="matches no file"):
        expand(str(d / "*.csv"), "--corpus")
    (d / "x.csv").write_text("text\nhi\n")
    with pytest.raises(UsageError, match="mixes file formats"):
        expand(str(d), "--corpus")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no .txt/.csv/.jsonl/.parquet file"):
        expand(str(empty), "--corpus")


def test_read_lines_for_predict(tmp_path, caplog):
    (tmp_path / "in.txt").write_bytes(b"one\r\n\r\ntwo\n  \nthree")
    # Blank lines are kept (predict answers each as blank): output row i is input line i.
    assert read_lines(str(tmp_path / "in.txt")) == ["one", "", "two", "  ", "three"]
    (tmp_path / "end.txt").write_bytes(b"one\ntwo\n")
    with caplog.at_level("WARNING", logger="nlptl"):
        assert read_lines(str(tmp_path / "end.txt")) == ["one", "two"]
    assert caplog.text == ""  # the newline that ends the last line is no blank line
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(UsageError, match="line 2 is not valid UTF-8"):
        read_lines(str(tmp_path / "bad.txt"))


# --------------------------------------------------------------------------- corpus readers

TRICKY = ["NA", "null", "None", "1e5", "a, b, and c", 'she said "hi"', "line one\nline two", "  padded  ", "0"]


def read(path, column="text"):
    return load_corpus(resolve_corpus(str(path), column))["text"]


def test_csv_keeps_every_text_as_written(tmp_path):
    import csv

    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[i, t] for i, t in enumerate(TRICKY)])
    assert read(tmp_path / "c.csv") == TRICKY


def test_tsv(tmp_path):
    (tmp_path / "c.tsv").write_text("text\tlabel\nNA\t1\na, b\t0\n")
    assert read(tmp_path / "c.tsv") == ["NA", "a, b"]


def test_jsonl_keeps_every_text(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in TRICKY))
    assert read(tmp_path / "c.jsonl", "body") == TRICKY


def test_parquet_keeps_every_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": TRICKY, "label": list(range(len(TRICKY)))}), tmp_path / "c.parquet")
    assert read(tmp_path / "c.parquet") == TRICKY


def test_txt_one_document_per_line(tmp_path):
    lines = [t for t in TRICKY if "\n" not in t]
    (tmp_path / "c.txt").write_text("\n".join(lines[:3]) + "\n\n\n" + "\n".join(lines[3:]) + "\n")
    assert read(tmp_path / "c.txt") == lines  # blank lines dropped, nothing else


def test_registered_sample_corpus():
    src = resolve_corpus("sample-general")
    assert src.name == "sample-general" and src.format == "text" and len(src.sha256) == 64
    assert len(load_corpus(src)) == 3000


def test_task_corpus_reads_the_training_texts(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    src = resolve_corpus("task:classification", train_file=str(tmp_path / "t.csv"))
    assert src.name == "task:classification"
    assert load_corpus(src)["text"] == ["good film", "bad film"]


# --------------------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def toks(checkpoints):
    from transformers import AutoTokenizer

    return {f: AutoTokenizer.from_pretrained(checkpoints[f]) for f in ("bert", "roberta", "gpt2", "llama")}


@pytest.fixture(scope="module")
def texts(corpus_file):
    return load_corpus(resolve_corpus(str(corpus_file)))


@pytest.mark.parametrize("family,first,last", [("bert", "[CLS]", "[SEP]"), ("roberta", "<s>", "</s>"),
                                               ("llama", "<s>", None), ("gpt2", None, None)])
def test_blocks_are_full_and_wrapped_in_special_tokens(toks, texts, family, first, last):
    from nlptl.data.lm import pack_blocks

    tok = toks[family]
    blocks = pack_blocks(texts, tok, 32, corpus_key="k")
    assert len(blocks) > 10
    ids = blocks["input_ids"]
    assert all(len(b) == 32 for b in ids)
    if tok.pad_token_id is not None and tok.pad_token_id not in (tok.eos_token_id, tok.sep_token_id):
        assert not any(tok.pad_token_id in b for b in ids)  # no padding anywhere
    for b in ids:
        if first:
            assert b[0] == tok.convert_tokens_to_ids(first) and b[1:].count(b[0]) == 0
        if last:
            assert b[-1] == tok.convert_tokens_to_ids(last)
    # The body is the corpus stream in order: documents joined by the separator.
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    body = [t for b in ids for t in b[(1 if first else 0): (len(b) - 1 if last else len(b))]]
    stream = [t for text in texts["text"] for t in tok(text, add_special_tokens=False)["input_ids"] + [sep]]
    assert body == stream[: len(body)] and len(stream) - len(body) < 32


def test_block_size_too_small(toks, texts):
    from nlptl.data.lm import pack_blocks

    with pytest.raises(UsageError, match="--block-size 9 is too small for this tokenizer; use at least 10"):
        pack_blocks(texts, toks["bert"], 9, corpus_key="k")


def test_cache_fingerprint(toks, texts):
    """Blocks are cached under a key of corpus, tokenizer and block size: a change of either gives new
    blocks, an unchanged call reuses the cache file."""
    from nlptl.data.lm import pack_blocks, tokenizer_fingerprint

    base = pack_blocks(texts, toks["gpt2"], 32, corpus_key="k")
    same = pack_blocks(texts, toks["gpt2"], 32, corpus_key="k")
    assert same._fingerprint == base._fingerprint
    assert same.cache_files and same.cache_files == base.cache_files  # read back, not recomputed
    others = [pack_blocks(texts, toks["gpt2"], 48, corpus_key="k"),
              pack_blocks(texts, toks["llama"], 32, corpus_key="k"),
              pack_blocks(texts, toks["gpt2"], 32, corpus_key="other")]
    prints = {base._fingerprint} | {o._fingerprint for o in others}
    assert len(prints) == 4
    assert len(others[0][0]["input_ids"]) == 48
    assert others[1]["input_ids"][:3] != base["input_ids"][:3]
    assert tokenizer_fingerprint(toks["gpt2"]) != tokenizer_fingerprint(toks["llama"])
    assert tokenizer_fingerprint(toks["gpt2"]) == tokenizer_fingerprint(toks["gpt2"])


def test_tokenizer_fingerprint_sees_added_tokens(toks):
    import copy

    from nlptl.data.lm import tokenizer_fingerprint

    tok = copy.deepcopy(toks["gpt2"])
    before = tokenizer_fingerprint(tok)
    tok.add_tokens(["<new-word>"])
    assert tokenizer_fingerprint(tok) != before


def test_split_blocks_is_fixed(toks, texts):
    from nlptl.data.lm import pack_blocks, split_blocks

    blocks = pack_blocks(texts, toks["gpt2"], 32, corpus_key="k")
    blocks = blocks.add_column("idx", list(range(len(blocks))))
    train, held = split_blocks(blocks, 10.0, 2000)
    assert len(held) == round(len(blocks) * 0.1) and len(train) + len(held) == len(blocks)
    assert set(train["idx"]).isdisjoint(held["idx"])
    train2, held2 = split_blocks(blocks, 10.0, 2000)
    assert held2["idx"] == held["idx"] and train2["idx"] == train["idx"]
    assert sorted(held["idx"]) != list(range(len(held)))  # a shuffled sample, not the first blocks
    _, capped = split_blocks(blocks, 10.0, 3)
    assert capped["idx"] == held["idx"][:3]
    with pytest.raises(UsageError, match="only 1 block"):
        split_blocks(blocks.select([0]), 10.0, 2000)


def test_a_datasets_cache_that_is_not_writable_is_named(tmp_path, monkeypatch):
    """The data file is fine; the cache `datasets` writes it into is not: say so, not 'could not read'."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", "/sys/nlptl-datasets-cache")
    (tmp_path / "c.txt").write_text("one line\nanother line\n", encoding="utf-8")
    with pytest.raises(UsageError) as e:
        read(tmp_path / "c.txt")
    message = str(e.value)
    assert "could not read" not in message and "c.txt" not in message
    assert "datasets cache /sys/nlptl-datasets-cache" in message and "HF_DATASETS_CACHE" in message
