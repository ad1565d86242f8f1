"""Property tests for the data readers: arbitrary Unicode, delimiters, quotes and newlines never crash a
reader or lose a row."""

from __future__ import annotations

import csv
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Texts as users have them: any printable Unicode, commas, quotes, tabs and line breaks inside.
TEXT = st.lists(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
    | st.sampled_from([",", '"', "'", "\n", "\r\n", "\t", ";", "NA", "null"]),
    min_size=1, max_size=20,
).map("".join).filter(lambda t: t.strip() != "")

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(rows=st.lists(st.tuples(TEXT, st.sampled_from(["0", "1", "positive", "neg"])), min_size=1, max_size=12))
def test_csv_and_jsonl_keep_every_row_exactly(tmp_path_factory, rows):
    from nlptl.data.corpora import read_files
    from nlptl.data.files import check_data_file

    d = tmp_path_factory.mktemp("prop")
    with open(d / "data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    with open(d / "data.jsonl", "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    for name, fmt in (("data.csv", "csv"), ("data.jsonl", "json")):
        columns = {"text": "--text-column", "label": "--label-column"}
        files, detected, _ = check_data_file(str(d / name), "--train", columns)
        assert detected == fmt
        ds = read_files([str(f) for f in files], fmt, None)
        assert len(ds) == len(rows)
        assert [str(x) for x in ds["label"]] == [label for _, label in rows]
        assert ds["text"] == [t for t, _ in rows]  # quotes, commas, "NA" and line breaks survive as written


@SETTINGS
@given(lines=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
                                                     blacklist_characters="\x00\x85"), min_size=0, max_size=30),
                      min_size=1, max_size=15))
def test_text_corpus_keeps_every_nonblank_line(tmp_path_factory, lines):
    from nlptl.data.corpora import load_corpus, resolve_corpus
    from nlptl.errors import UsageError

    d = tmp_path_factory.mktemp("prop_txt")
    path = d / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    nonblank = [line for line in lines if line.strip()]
    try:
        src = resolve_corpus(str(path))
    except UsageError as e:
        assert not nonblank and ("blank" in str(e) or "empty" in str(e))
        return
    assert load_corpus(src)["text"] == nonblank
