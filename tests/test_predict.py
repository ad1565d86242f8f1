"""`nlptl predict` (stages/predict.py): labels with scores for texts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nlptl.config import PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import predict

BLANK = "blank text: nothing to classify"

TEXTS = ["Everyone agreed the bakery was great by any measure.", "awful",
         "Last week the camera was awful, and the lens was awful too, and the strap was awful as well.",
         "To be fair, the jacket was great.", "In the end the podcast was awful if you ask me."]


def test_from_texts(trained_classifier):
    out, _ = trained_classifier
    results = predict.run(PredictConfig(model=str(out), texts=TEXTS))
    assert [r["text"] for r in results] == TEXTS
    for r in results:
        assert set(r["scores"]) == {"negative", "positive"}
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["score"] == max(r["scores"].values()) == r["scores"][r["label"]]
    assert [results[i]["label"] for i in (0, 3, 4)] == ["positive", "positive", "negative"]


def test_order_is_kept_while_batches_are_sorted_by_length(trained_classifier):
    """Texts are batched by length; each result must still be the one of its own text."""
    out, _ = trained_classifier
    batched = predict.run(PredictConfig(model=str(out), texts=TEXTS, batch_size=2))
    for text, result in zip(TEXTS, batched, strict=True):
        alone = predict.run(PredictConfig(model=str(out), texts=[text]))[0]
        assert result["text"] == text and result["label"] == alone["label"]
        assert result["scores"] == pytest.approx(alone["scores"], abs=1e-5)


def test_from_file_and_texts(trained_classifier, tmp_path):
    out, _ = trained_classifier
    path = tmp_path / "texts.txt"
    path.write_bytes(("\r\n".join(TEXTS[1:]) + "\r\n\r\n   \n").encode())  # CRLF, blank lines at the end
    results = predict.run(PredictConfig(model=str(out), texts=TEXTS[:1], input=str(path)))
    # Arguments first, then the file's lines in order, blank ones too (each answered as blank).
    assert [r["text"] for r in results] == [*TEXTS, "", "   "]
    reference = predict.run(PredictConfig(model=str(out), texts=TEXTS))
    assert [r["label"] for r in results[: len(TEXTS)]] == [r["label"] for r in reference]
    assert [r.get("error") for r in results[len(TEXTS) :]] == [BLANK, BLANK]


def test_stdin(trained_classifier, monkeypatch):
    import io
    import sys

    out, _ = trained_classifier
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(TEXTS).encode())))
    assert [r["text"] for r in predict.run(PredictConfig(model=str(out), input="-"))] == TEXTS


def test_max_length_truncates(trained_classifier):
    """A label word beyond --max-length tokens is not seen."""
    out, _ = trained_classifier
    filler = "the sofa and the phone and the soup and the film " * 6
    long_text = filler + "were great, great, great."
    short = predict.run(PredictConfig(model=str(out), texts=[long_text, filler], max_length=8))
    assert short[0]["scores"] == pytest.approx(short[1]["scores"], abs=1e-6)


def test_needs_texts_and_a_classifier(trained_classifier, adapted):
    out, _ = trained_classifier
    with pytest.raises(UsageError, match="no texts"):
        predict.run(PredictConfig(model=str(out)))
    with pytest.raises(UsageError, match="not a classifier"):
        predict.run(PredictConfig(model=str(adapted["gpt2"][0]), texts=["x"]))


def test_default_model_is_the_latest_finetune_run(trained_classifier, nlptl_home):
    with pytest.raises(UsageError, match="no completed finetune run"):
        predict.run(PredictConfig(texts=["x"]))
    import shutil

    shutil.copytree(trained_classifier[0], nlptl_home / "finetune-1")
    assert predict.run(PredictConfig(texts=["x"]))[0]["label"] in {"negative", "positive"}


def test_token_budget_batches(trained_classifier):
    """With max_tokens, batches hold texts of similar token length, never more than the budget (texts x
    the longest) unless one text alone is over it, every text once; results are the same as without."""
    from nlptl.inference import load_classifier

    out, _ = trained_classifier
    classifier = load_classifier(str(out))
    texts = [("great " * n).strip() for n in (1, 20, 2, 3, 25, 1, 4, 2)]
    encoded = classifier.tokenizer(texts, truncation=True, max_length=classifier.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    batches = list(classifier.batches(texts, None, 3, 16))
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 16
    plain = classifier(texts, batch_size=3)
    budget = classifier(texts, batch_size=3, max_tokens=16)
    assert [r["label"] for r in plain] == [r["label"] for r in budget]
    assert [r["score"] for r in plain] == pytest.approx([r["score"] for r in budget], abs=1e-5)


def _nlptl(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nlptl", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.parametrize("args", [["predict", "--model", "CLF", "great"],
                                  ["predict", "--model", "CLF", "--json", "great"],
                                  ["corpora"]])
def test_closed_stdout_is_one_line(args, trained_classifier):
    """`nlptl predict ... >&-`: Python leaves sys.stdout None; the results have nowhere to go: one line
    saying so, exit 2 (predict before it loads the model), for every command that writes results there."""
    args = [str(trained_classifier[0]) if a == "CLF" else a for a in args]
    proc = _nlptl(args, preexec_fn=lambda: os.close(1))  # the child's fd 1, after subprocess set it up
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == ["error: standard output is closed, so the results have nowhere to go; "
                                        "redirect it instead (> FILE, or > /dev/null)"]


def test_reader_gone_is_quiet(trained_classifier):
    """`nlptl predict ... | head -1`: the reader leaves after one line; no traceback, no error line."""
    proc = _nlptl(["predict", "--model", trained_classifier[0], "--json", *["great"] * 3000], stdout=subprocess.PIPE)
    assert proc.stdout.readline().startswith("{")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert err.strip() == "" and proc.returncode in (0, 1)


def test_blank_texts_get_their_own_answer(trained_classifier, tmp_path):
    """The one rule of predict (arguments, every line of --input) and serve: a blank text (empty or only
    whitespace) is not classified; its result, in its place, says so. So result N is line N."""
    out, _ = trained_classifier
    path = tmp_path / "texts.txt"
    path.write_text("great\n\n  \t \nawful\n", encoding="utf-8")
    results = predict.run(PredictConfig(model=str(out), texts=["", "great"], input=str(path)))
    assert [r["text"] for r in results] == ["", "great", "great", "", "  \t ", "awful"]
    for r in results:
        if r["text"].strip():
            assert r["label"] in {"negative", "positive"} and "error" not in r
        else:
            assert r == {"text": r["text"], "error": BLANK}
    alone = predict.run(PredictConfig(model=str(out), texts=["great", "awful"]))
    assert [results[i]["scores"] for i in (2, 5)] == [alone[0]["scores"], alone[1]["scores"]]


def test_blank_line_of_a_pair_model(checkpoints, tmp_path):
    from test_export import _hand_built

    run_dir = _hand_built(tmp_path, checkpoints, "single_label_classification", 2, pairs=True)
    results = predict.run(PredictConfig(model=str(run_dir), texts=["A man sleeps\tA person rests", "  "]))
    assert "label" in results[0] and results[1] == {"text": "  ", "text_pair": "", "error": BLANK}


def test_blank_texts_in_the_table(trained_classifier, tmp_path, capsys):
    from cli_helpers import call_main

    assert call_main(["predict", "--model", trained_classifier[0], "great", " "], tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(BLANK in line for line in lines), lines


def test_pipeline_on_a_pooled_head_says_nothing(checkpoints, task_files, tmp_path):
    """transformers' text-classification pipeline on a classifier with nlptl's own head (heads.py, loaded
    with trust_remote_code, as each run's model card shows) logged an error listing 100+ stock model
    classes ("The model 'NlptlForSequenceClassification' is not supported for text-classification"),
    then ran it fine: that line is gone. A fresh process, as a user's."""
    from conftest import finetune_cfg

    from nlptl.stages import finetune

    out = tmp_path / "mean"
    finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]), out=str(out),
                              pooling="mean", max_steps=1))
    script = ("import sys\nfrom transformers import pipeline\n"
              "print(pipeline('text-classification', model=sys.argv[1], trust_remote_code=True)('great')[0]['label'])")
    res = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in {"negative", "positive"}
    assert "not supported" not in res.stderr, res.stderr[-2000:]


def test_pipeline_check_drops_only_that_line():
    """The filter heads.py installs (the file a pooled run ships as its remote code): the pipeline's
    "not supported" record for nlptl's class goes, any other record of that logger stays."""
    import logging

    import nlptl.heads  # noqa: F401 - installs the filter, as loading the remote code does

    logger = logging.getLogger("transformers.pipelines.base")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    keep = Keep()
    logger.addHandler(keep)
    try:
        logger.error("The model 'NlptlForSequenceClassification' is not supported for text-classification. "
                     "Supported models are ['BertForSequenceClassification', ...].")
        logger.error("The model 'SomeOtherModel' is not supported for text-classification.")
    finally:
        logger.removeHandler(keep)
    assert seen == ["The model 'SomeOtherModel' is not supported for text-classification."]
