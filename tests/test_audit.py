"""Leakage audit (issue 28): the texts a model is scored on, against every corpus and file of its
lineage: exact duplicates (the whole normalised text inside a document) and near duplicates (most of its
word shingles in one document); `nlptl audit` and evaluate's automatic warning."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import adapt_cfg, finetune_cfg, labelled_rows, write_csv


def found(texts: list[str], documents: list[str], num_proc: int = 1) -> dict:
    from nlptl import audit

    checked = audit.Checked(name="checked", texts=texts)
    return audit.summary(checked, "docs", audit.scan(checked, [documents], num_proc))


def test_a_sentence_inside_a_review_is_an_exact_duplicate_whatever_its_case_and_punctuation():
    review = "I went in with low hopes. The acting was WONDERFUL, and the plot kept me guessing! Would watch again."
    result = found(["the acting was wonderful and the plot kept me guessing", "a completely different sentence here"],
                   [review, "unrelated text about cats and dogs sleeping"])
    assert (result["exact"], result["near"]) == (1, 0)
    assert result["examples"][0]["kind"] == "exact" and "WONDERFUL" in result["examples"][0]["in"]


def test_a_sentence_with_its_last_word_changed_is_a_near_duplicate():
    doc = "one two three four five six seven eight nine ten eleven twelve"
    result = found(["one two three four five six seven eight nine ten eleven thirteen"], [doc])
    assert (result["exact"], result["near"]) == (0, 1)
    assert result["examples"][0]["containment"] == pytest.approx(7 / 8)


def test_short_texts_match_whole_documents_and_shared_phrases_are_not_duplicates():
    """Was: a short text matched inside any document, so stock phrases ("Highly recommended.", "Do not
    waste your time.") made 139 of the 3000 UCI sentences "exact duplicates" of IMDb reviews; now 3."""
    result = found(["great film", "highly recommended", "do not waste your time",
                    "this movie is one of the best i have seen"],
                   ["what a great film that was", "Highly recommended!", "Honestly, do not waste your time on it.",
                    "this movie is one of many, and not the best"])
    assert (result["exact"], result["near"]) == (1, 0)  # the whole document "Highly recommended!" only
    assert result["examples"][0]["text"] == "highly recommended"


def test_several_processes_find_the_same():
    texts = [f"sentence number {i} of the checked set about things" for i in range(50)]
    docs = [f"a document that quotes sentence number {i} of the checked set about things, and more"
            for i in range(0, 50, 3)]
    docs += [f"filler document {i} with nothing in common" for i in range(200)]
    one, two = found(texts, docs, 1), found(texts, docs, 2)
    assert one == two and one["exact"] == 17


@pytest.fixture(scope="module")
def leaky_chain(checkpoints, corpus_file, tmp_path_factory):
    """A GPT adapted on a corpus holding 6 of the 40 test sentences, then fine-tuned."""
    from nlptl.stages import adapt, finetune

    root = tmp_path_factory.mktemp("audit")
    rows = labelled_rows(400, seed=11)
    train = write_csv(root / "train.csv", rows[:300])
    write_csv(root / "test.csv", rows[300:340])
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_file.read_text(encoding="utf-8")
                      + "".join(f"A reader wrote: {text} And that was all.\n" for text, _ in rows[300:306]),
                      encoding="utf-8")
    adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus), out=str(root / "lm"), max_steps=2))
    finetune.run(finetune_cfg(from_model=str(root / "lm"), train_file=str(train), out=str(root / "ft"), max_steps=2))
    return root


def test_audit_finds_test_texts_in_the_adapt_corpus(leaky_chain):
    from nlptl.config import AuditConfig
    from nlptl.stages import audit

    result = audit.run(AuditConfig(model=str(leaky_chain / "ft"), data=[str(leaky_chain / "test.csv")]))
    by_role = {r["role"]: r for r in result["overlaps"]}
    assert set(by_role) == {"corpus", "train"}
    test, train = expected(leaky_chain)
    embedded = {t for t, _ in labelled_rows(400, seed=11)[300:306]}
    assert by_role["corpus"]["exact"] == sum(t in embedded for t in test) >= 6 and by_role["corpus"]["n_checked"] == 40
    # The generated task repeats some sentences: the test texts also in the train file, counted the same way.
    assert by_role["corpus"]["stage"] == "adapt" and by_role["train"]["exact"] == sum(t in train for t in test)
    assert result["leaked"] is True


def expected(root) -> tuple[list[str], set[str]]:
    import csv

    def texts(name: str) -> list[str]:
        with (root / name).open(encoding="utf-8", newline="") as f:
            return [row["text"] for row in csv.DictReader(f)]

    return texts("test.csv"), set(texts("train.csv"))


def test_evaluate_warns_when_test_texts_were_seen(leaky_chain, caplog):
    from nlptl.config import EvaluateConfig
    from nlptl.stages import evaluate

    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = evaluate.run(EvaluateConfig(model=str(leaky_chain / "ft"), data=str(leaky_chain / "test.csv")))
    test, train = expected(leaky_chain)
    embedded = {t for t, _ in labelled_rows(400, seed=11)[300:306]}
    # exact: summed over sources; seen: texts with an exact or near duplicate in any source (the generated
    # task's sentences differ by a word or two, so some are near duplicates of train sentences too)
    assert result["leakage"]["exact"] == sum(t in embedded for t in test) + sum(t in train for t in test)
    assert result["leakage"]["seen"] >= sum(t in embedded or t in train for t in test)
    warned = [r.getMessage() for r in caplog.records if "were seen in" in r.getMessage()]
    n = sum(t in embedded for t in test)
    assert any(f"{n} of 40" in w and "adapt" in w for w in warned)


def test_audit_cli(leaky_chain, checkpoints, tmp_path):
    from cli_helpers import assert_one_line_error, run_cli

    res = run_cli(["audit", leaky_chain / "ft", "--data", leaky_chain / "test.csv", "--json", "--num-proc", "1"],
                  tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    result = json.loads(res.stdout)
    test, train = expected(leaky_chain)
    embedded = {t for t, _ in labelled_rows(400, seed=11)[300:306]}
    assert result["leaked"] and sum(r["exact"] for r in result["overlaps"]) == \
        sum(t in embedded for t in test) + sum(t in train for t in test)
    # A checkpoint nlptl did not make (no nlptl-run.json): nothing to audit, said in one line.
    assert_one_line_error(run_cli(["audit", checkpoints["bert"], "--data", leaky_chain / "test.csv"], tmp_path), 2,
                          "no nlptl lineage")


def test_a_bad_data_file_is_named_by_its_flag(tmp_path):
    """Was: `nlptl audit M --data notext.csv` said "--corpus ...: no column 'text'" (a flag never typed)."""
    from nlptl.audit import local_source
    from nlptl.errors import UsageError

    table = tmp_path / "notext.csv"
    table.write_text("sentence,label\nfine,1\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"^--data .*notext.csv.*'text'"):
        local_source(str(table), "text", "--data")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(UsageError, match=r"^--data "):
        local_source(str(tmp_path / "notes.md"), "text", "--data")


def test_finetune_warns_when_its_eval_texts_are_in_its_train_file(checkpoints, tmp_path, caplog):
    """Eval texts seen in training inflate the score that picks the kept checkpoint: finetune says so
    before it trains (result key leakage)."""
    from nlptl.stages import finetune

    rows = [(f"the review number {i} says the film was {'great' if i % 2 else 'awful'} from start to end",
             "positive" if i % 2 else "negative") for i in range(60)]
    train = write_csv(tmp_path / "train.csv", rows[:40])
    evaluation = write_csv(tmp_path / "eval.csv", rows[30:50])  # 10 of its 20 texts are in train.csv
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = finetune.run(finetune_cfg(from_model=str(checkpoints["gpt2"]), train_file=str(train),
                                           eval_file=str(evaluation), out=str(tmp_path / "ft"), max_steps=1))
    assert result["leakage"]["seen"] >= 10 and result["leakage"]["n_checked"] == 20
    assert any("texts of --eval were seen in" in r.getMessage() and "selection score" in r.getMessage()
               for r in caplog.records)
