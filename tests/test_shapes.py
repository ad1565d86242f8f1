"""Task shapes of `nlptl finetune` (issue 13): multi-label, regression, sentence pairs, long documents,
class weights; each end to end (finetune -> evaluate -> predict) for an encoder and a decoder, with
`pipeline()` giving the same answers as `nlptl predict`, and the bad input of each shape refused in
one line. The learning-rate range test (--lr auto) is in test_lr_find.py.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from conftest import finetune_cfg, general_sentences, labelled_rows, write_csv

from nlptl.config import EvaluateConfig, FinetuneConfig, PredictConfig
from nlptl.errors import UsageError
from nlptl.stages import evaluate, finetune, predict

FAMILIES = ["bert", "gpt2"]


def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Files of every shape, written here (easy tasks: the label is in the words)."""
    root = tmp_path_factory.mktemp("shapes")
    rows = labelled_rows(160, seed=3)
    rng = random.Random(0)
    out = {}
    # Multi-label: sentiment, plus 'food' where the text says so; one cell and 0/1 columns.
    cells = [(t + (" the food" if i % 3 == 0 else ""), lab + (";food" if i % 3 == 0 else "")) for i, (t, lab) in
             enumerate(rows)]
    out["multi"] = write_csv(root / "multi.csv", cells, header=("text", "tags"))
    out["multi_cols"] = write_rows(root / "multi_cols.csv", ["text", "positive", "negative", "food"],
                                   [[t, int("positive" in c), int("negative" in c), int("food" in c)]
                                    for t, c in cells])
    # Regression: a score from the sentiment word, with noise.
    out["reg"] = write_csv(root / "reg.csv", [(t, f"{(4.0 if lab == 'positive' else 1.0) + rng.random():.3f}")
                                              for t, lab in rows], header=("text", "score"))
    # Pairs: do the two sentences share their sentiment?
    pairs = [[a, b, "same" if la == lb else "different"]
             for i, ((a, la), (b, lb)) in enumerate(zip(rows, rows[7:] + rows[:7], strict=True))]
    out["pair"] = write_rows(root / "pair.csv", ["premise", "hypothesis", "label"], pairs)
    # Long documents: filler first, the sentence that carries the label last (past the first window).
    filler = general_sentences(1200, seed=5)
    out["long"] = write_csv(root / "long.csv", [(" ".join(filler[i * 5:(i + 1) * 5]) + " " + t, lab)
                                                for i, (t, lab) in enumerate(rows)])
    out["long_eval"] = write_csv(root / "long_eval.csv",
                                 [(" ".join(filler[800 + i * 5:800 + (i + 1) * 5]) + " " + t, lab)
                                  for i, (t, lab) in enumerate(labelled_rows(48, seed=9))])
    return out


SHAPES = {
    "multi": {"task": "multilabel", "label_column": "tags"},
    "multi_cols": {"task": "multilabel", "label_column": "positive,negative,food"},
    "reg": {"task": "regression", "label_column": "score"},
    "pair": {"task": "classification", "text_column": "premise,hypothesis", "max_length": 64},
    "long": {"task": "classification", "long_docs": "chunk", "window": 24, "stride": 4, "max_length": 128},
}


@pytest.fixture(scope="module")
def trained(checkpoints, data, tmp_path_factory):
    """(family, shape) -> (run dir, result), trained on first use."""
    root = tmp_path_factory.mktemp("shape-runs")

    class Lazy(dict):
        def __missing__(self, key):
            family, shape = key
            out = root / f"{family}-{shape}"
            result = finetune.run(finetune_cfg(from_model=str(checkpoints[family]), train_file=str(data[shape]),
                                               out=str(out), **SHAPES[shape]))
            self[key] = (out, result)
            return self[key]

    return Lazy()


def pipe(out: Path, **kw):
    from transformers import pipeline

    return pipeline("text-classification", model=str(out), trust_remote_code=True, device="cpu", **kw)


def texts_of(path: Path, n: int = 3, pair: bool = False) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:n + 1]
    return [(r[0], r[1]) for r in rows] if pair else [r[0] for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_multilabel_end_to_end(family, trained, data):
    out, result = trained[family, "multi"]
    assert {"f1_micro", "f1_macro", "subset_accuracy", "f1_per_label", "threshold"} <= set(result)
    assert len(result["f1_per_label"]) == 3 and result["threshold"] == 0.5
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["food", "negative", "positive"]
    assert result["lineage"]["label_separator"] == ";"
    assert "Micro/macro-F1" in (out / "README.md").read_text()
    scored = evaluate.run(EvaluateConfig(model=str(out), data=str(data["multi"]), label_column="tags"))
    assert {"f1_micro", "subset_accuracy", "f1_per_label"} <= set(scored)
    assert scored["threshold"] == 0.5 and len(scored["labels"]) == len(scored["f1_per_label"]) == 3
    texts = texts_of(data["multi"])
    # pipeline() knows nothing of the temperature finetune fitted: compared with the raw scores.
    results = predict.run(PredictConfig(model=str(out), texts=texts, raw_scores=True))
    piped = pipe(out, top_k=None)(texts)
    for res, p in zip(results, piped, strict=True):
        assert set(res) >= {"labels", "scores", "threshold"}
        assert res["labels"] == [n for n, s in res["scores"].items() if s >= res["threshold"]]
        assert {d["label"]: d["score"] for d in p} == pytest.approx(res["scores"], abs=1e-5)


def test_multilabel_from_label_columns(trained, data):
    out, result = trained["gpt2", "multi_cols"]
    assert result["lineage"]["labels"] == ["positive", "negative", "food"]  # the columns, in their order
    scored = evaluate.run(EvaluateConfig(model=str(out), data=str(data["multi_cols"]),
                                         label_column="positive,negative,food"))
    assert 0 <= scored["f1_micro"] <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_regression_end_to_end(family, trained, data):
    out, result = trained[family, "reg"]
    assert {"rmse", "mae", "pearson", "spearman"} <= set(result) and "accuracy" not in result
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    assert 'function_to_apply="none"' in (out / "README.md").read_text()
    scored = evaluate.run(EvaluateConfig(model=str(out), data=str(data["reg"]), label_column="score"))
    assert scored["rmse"] >= 0 and -1 <= scored["pearson"] <= 1
    texts = texts_of(data["reg"])
    results = predict.run(PredictConfig(model=str(out), texts=texts))
    piped = pipe(out, function_to_apply="none")(texts)
    assert [r["value"] for r in results] == pytest.approx([p["score"] for p in piped], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_end_to_end(family, trained, data):
    out, result = trained[family, "pair"]
    assert result["lineage"]["text_pair"] is True
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok("first text", "second text")
    seq = enc.sequence_ids()
    between = seq[max(i for i, s in enumerate(seq) if s == 0) + 1:min(i for i, s in enumerate(seq) if s == 1)]
    assert between and all(s is None for s in between), "a pair needs a separator between its texts"
    scored = evaluate.run(EvaluateConfig(model=str(out), data=str(data["pair"]), text_column="premise,hypothesis"))
    assert 0 <= scored["accuracy"] <= 1
    pairs = texts_of(data["pair"], pair=True)
    results = predict.run(PredictConfig(model=str(out), texts=[f"{a}\t{b}" for a, b in pairs], raw_scores=True))
    assert [(r["text"], r["text_pair"]) for r in results] == pairs
    piped = pipe(out, top_k=None)([{"text": a, "text_pair": b} for a, b in pairs])
    for res, p in zip(results, piped, strict=True):
        assert {d["label"]: d["score"] for d in p} == pytest.approx(res["scores"], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_long_documents_end_to_end(family, trained, data):
    out, result = trained[family, "long"]
    lineage = result["lineage"]
    assert (lineage["window"], lineage["stride"], lineage["doc_pooling"]) == (24, 4, "mean")
    config = json.loads((out / "config.json").read_text())
    assert config["nlptl_window"] == 24 and config["architectures"] == ["NlptlForSequenceClassification"]
    docs = texts_of(data["long"])
    results = predict.run(PredictConfig(model=str(out), texts=docs, raw_scores=True))  # as pipeline() scores
    assert not any(r.get("truncated") for r in results)
    # Past the model's positions is fine for a model that cuts windows (not for the others).
    assert predict.run(PredictConfig(model=str(out), texts=docs, max_length=512, raw_scores=True)) == results
    # A document longer than the training cut (128 tokens) is read whole, as pipeline() reads it.
    longest = " ".join(docs) + " " + docs[0]
    whole = predict.run(PredictConfig(model=str(out), texts=[longest], raw_scores=True))[0]
    assert "truncated" not in whole
    piped_longest = {d["label"]: d["score"] for d in pipe(out, top_k=None)([longest])[0]}
    assert piped_longest == pytest.approx(whole["scores"], abs=1e-5)
    piped = pipe(out, top_k=None)(docs)  # whole documents: the model cuts the windows itself
    for res, p in zip(results, piped, strict=True):
        assert {d["label"]: d["score"] for d in p} == pytest.approx(res["scores"], abs=1e-5)


@pytest.mark.parametrize("doc_pooling", ["mean", "max", "attention"])
def test_windows_cover_the_document_and_pool(checkpoints, doc_pooling):
    """A text within one window is encoded as it is; a longer one is cut into windows, each framed by
    the special tokens, covering every token, and pooled over its windows."""
    import torch

    from nlptl.heads import NlptlForSequenceClassification, pool
    from nlptl.models import load_config, load_tokenizer
    from nlptl.models.refs import inspect_model

    ref = inspect_model(str(checkpoints["bert"]), "--from")
    config = load_config(ref)
    tok = load_tokenizer(ref, config)
    config.num_labels, config.nlptl_pooling = 2, "cls"
    config.nlptl_window, config.nlptl_stride, config.nlptl_doc_pooling = 10, 2, doc_pooling
    config.nlptl_window_specials = [1, 1]
    torch.manual_seed(0)
    model = NlptlForSequenceClassification(config).eval()
    short = tok(["the cat sat"], return_tensors="pt")
    assert short["input_ids"].shape[1] <= 10
    plain = model.classifier(pool(model.backbone(**short).last_hidden_state, short["attention_mask"], "cls"))
    assert torch.allclose(model(**short).logits, plain, atol=1e-6)

    seen = []
    real = model.backbone.forward

    def spy(input_ids=None, attention_mask=None, **kw):
        seen.append((input_ids.clone(), attention_mask.clone()))
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.backbone.forward = spy
    text = " ".join(general_sentences(3))
    enc = tok([text, "a short one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    ids, mask = seen[-1]
    content = enc["input_ids"][0][1:int(enc["attention_mask"][0].sum()) - 1].tolist()
    windows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    n_doc = len(windows) - 1  # the short text is one window
    assert n_doc > 2
    for w in windows:
        assert w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 10
    covered = []
    for w in windows[:n_doc]:
        body = w[1:-1]
        assert covered[-2:] == body[:2] or not covered  # consecutive windows share the stride
        covered += body[2:] if covered else body
    assert covered == content
    reps = pool(model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "cls")[:n_doc]
    doc = {"mean": reps.mean(0), "max": reps.max(0).values}.get(doc_pooling)
    if doc is None:
        doc = (model.window_attention(reps).softmax(0) * reps).sum(0)
    assert torch.allclose(logits[0], model.classifier(doc), atol=1e-5)


def test_chunking_finds_a_label_past_the_first_window(checkpoints, data, tmp_path):
    """The label-bearing sentence sits after the first window: truncation cannot see it, chunking can."""
    common = {"from_model": str(checkpoints["bert"]), "train_file": str(data["long"]), "max_steps": 120,
              "eval_file": str(data["long_eval"]), "batch_size": 8, "eval_every": 40, "lr": 2e-3, "pooling": "mean"}
    cut = finetune.run(finetune_cfg(out=str(tmp_path / "cut"), **common, max_length=24))
    # Max over windows: the one window that holds the label's sentence decides (a mean dilutes it).
    chunked = finetune.run(finetune_cfg(out=str(tmp_path / "chunk"), **common, long_docs="chunk", window=24,
                                        max_length=128, doc_pooling="max"))
    assert chunked["accuracy"] >= 0.85
    assert cut["accuracy"] <= 0.7


def test_class_weights(checkpoints, data, tmp_path):
    """auto: inverse frequency (1 for a balanced set); the loss trained on is the weighted one."""
    import torch

    from nlptl.data.task_data import TaskData, class_weights
    from nlptl.stages.classifier import weighted_loss

    rows = [("x", "a")] * 30 + [("y", "b")] * 10
    cfg = FinetuneConfig(class_weights="auto")
    ds = {"labels": [0] * 30 + [1] * 10}
    task = TaskData(None, None, ["a", "b"], None, None, {}, 8)
    assert class_weights(cfg, task, ds) == pytest.approx([40 / 60, 40 / 20])
    assert class_weights(FinetuneConfig(class_weights="1,3"), task, ds) == [1.0, 3.0]
    with pytest.raises(UsageError, match="gives 3 weight"):
        class_weights(FinetuneConfig(class_weights="1,2,3"), task, ds)
    loss_fn = weighted_loss(FinetuneConfig(class_weights="1,3"), task, ds)

    class Model(torch.nn.Module):
        config = type("C", (), {"problem_type": "single_label_classification", "num_labels": 2})()

        def forward(self, input_ids):
            return type("O", (), {"logits": input_ids.float()})()

    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))
    assert loss_fn(Model(), {"input_ids": logits, "labels": labels}).item() == pytest.approx(expected.item())
    # multi-label auto: negatives / positives per label
    multi = TaskData(None, None, ["p", "q"], None, None, {}, 8, "multi_label_classification")
    assert class_weights(cfg, multi, {"labels": [[1, 0], [1, 1], [0, 0], [1, 0]]}) == [1 / 3, 3.0]
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(write_csv(
        tmp_path / "skew.csv", labelled_rows(40) + rows)), class_weights="auto", out=str(tmp_path / "w")))
    assert "accuracy" in result


def test_majority_class_trap_is_reported(checkpoints, tmp_path, caplog):
    rows = [(t, "positive") for t, _ in labelled_rows(60)] + [(t, "negative") for t, _ in labelled_rows(4, seed=2)]
    with caplog.at_level("WARNING", logger="nlptl"):
        result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), out=str(tmp_path / "r"),
                                           train_file=str(write_csv(tmp_path / "skew.csv", rows)), max_steps=2,
                                           lr=1e-6))
    assert result["top_prediction_share"] > 0.95
    assert "predicts one class" in caplog.text and "--class-weights auto" in caplog.text


def test_degenerate_multilabel_threshold_is_reported(checkpoints, data, tmp_path, caplog):
    import torch

    from nlptl.evaluation import label_set_shares

    logits = torch.logit(torch.tensor([[0.6, 0.7], [0.55, 0.2], [0.1, 0.2]]))
    assert label_set_shares(logits, 0.5) == (1 / 3, 1 / 3)
    assert label_set_shares(logits, 0.05) == (1.0, 0.0) and label_set_shares(logits, 0.95) == (0.0, 1.0)
    # A threshold so low that every label is predicted for every text: micro-F1 can still look fine
    # (recall 1), so the user is told what the classifier does.
    with caplog.at_level("WARNING", logger="nlptl"):
        finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(data["multi"]), task="multilabel",
                                  label_column="tags", threshold=0.001, max_steps=2, out=str(tmp_path / "all")))
    assert ("at threshold 0.001 (--threshold) the classifier predicts every label for 100% of the eval set"
            in caplog.text)


def test_threshold_tuning(checkpoints, data, tmp_path):
    import torch

    from nlptl.evaluation import tune_threshold

    # Label 0 is set where its probability is 0.3 or more: the best threshold is 0.3.
    logits = torch.logit(torch.tensor([[0.35, 0.9], [0.31, 0.1], [0.2, 0.8], [0.1, 0.2]]))
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    t, scores = tune_threshold(logits, labels)
    assert scores["f1_micro"] == 1.0 and 0.2 < t <= 0.3
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(data["multi"]),
                                       task="multilabel", label_column="tags", tune_threshold=True,
                                       out=str(tmp_path / "t")))
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["nlptl_threshold"] == result["threshold"] == result["lineage"]["threshold"]


def test_shapes_in_learning_curve_and_recipe(checkpoints, data, tmp_path, capsys):
    import yaml
    from cli_helpers import call_main

    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(data["reg"]),
                                       task="regression", label_column="score", n_labels="20,all",
                                       out=str(tmp_path / "curve")))
    assert [r["n_labels"] for r in result["learning_curve"]] == [20, "all"]
    assert {"rmse_mean", "pearson_mean"} <= set(result["learning_curve"][0])
    recipe = {"out": str(tmp_path / "runs"), "defaults": {"batch_size": 4, "precision": "fp32", "max_steps": 2},
              "stages": [{"name": "tags", "stage": "finetune", "from": str(checkpoints["gpt2"]), "task": "multilabel",
                          "train": str(data["multi"]), "label_column": "tags", "max_length": 32},
                         {"name": "test", "stage": "evaluate", "data": str(data["multi"]), "label_column": "tags"}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    capsys.readouterr()
    assert call_main(["run", str(tmp_path / "recipe.yaml"), "--json", "--quiet"], tmp_path) == 0
    out = json.loads(capsys.readouterr().out)
    assert "f1_micro" in out["stages"][-1]["result"]


def test_predict_table_for_every_shape(trained, data, capsys, tmp_path):
    from cli_helpers import call_main

    for shape, text in (("multi", "x was great the food"), ("reg", "it was awful"),
                        ("pair", "a was great\tb was great")):
        out, _ = trained["bert", shape]
        capsys.readouterr()
        assert call_main(["predict", "--model", str(out), text], tmp_path) == 0
        shown = capsys.readouterr().out
        assert "prediction" in shown and text.split("\t")[0][:10] in shown


# --------------------------------------------------------------------------- bad input, one line each


@pytest.mark.parametrize(("kw", "message"), [
    ({"window": 64}, "--window needs --long-docs chunk"),
    ({"long_docs": "chunk", "window": 16, "stride": 16}, "--stride must be smaller than --window"),
    ({"text_column": "a,b,c"}, "--text-column takes one column, or two"),
    ({"class_weights": "1,x"}, "--class-weights expects none, auto or numbers"),
    ({"class_weights": "1,-2"}, "every weight must be a positive number"),
    ({"threshold": 1.5}, "--threshold must be in (0, 1)"),
    ({"lr": "fast"}, "--lr expects a number or auto"),
])
def test_bad_options(kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FinetuneConfig(**kw)


def test_bad_data_of_each_shape(checkpoints, data, tmp_path):
    bert = str(checkpoints["bert"])

    def run(**kw):
        return finetune.run(finetune_cfg(from_model=bert, out=str(tmp_path / "x"), overwrite=True, **kw))

    with pytest.raises(UsageError, match="hold several labels separated by ';'.*--task multilabel"):
        run(train_file=str(data["multi"]), label_column="tags")
    with pytest.raises(UsageError, match="hold several labels.*--task multilabel"):
        run(task="sentiment", train_file=str(data["multi"]), label_column="tags")
    bad = write_csv(tmp_path / "bad_reg.csv", [("a b", "1.5"), ("c d", "high"), ("e f", "2")], header=("text", "y"))
    with pytest.raises(UsageError, match="data row 2 has the label 'high', not a finite number"):
        run(task="regression", train_file=str(bad), label_column="y")
    nan = write_csv(tmp_path / "nan_reg.csv", [("a b", "1.5"), ("c d", "nan"), ("e f", "2")], header=("text", "y"))
    with pytest.raises(UsageError, match="data row 2 has the label 'nan'"):
        run(task="regression", train_file=str(nan), label_column="y")
    half = write_rows(tmp_path / "half.csv", ["premise", "hypothesis", "label"],
                      [["a b", "c d", "x"], ["e f", "", "y"], ["g h", "i j", "x"]])
    with pytest.raises(UsageError, match="1 row\\(s\\) have no 'hypothesis' text \\(first at data row 2\\)"):
        run(train_file=str(half), text_column="premise,hypothesis")
    with pytest.raises(UsageError, match="--window 200 is larger than the model's 128 positions"):
        run(train_file=str(data["long"]), long_docs="chunk", window=200)
    with pytest.raises(UsageError, match="--long-docs chunk cuts one text into windows"):
        run(train_file=str(data["pair"]), text_column="premise,hypothesis", long_docs="chunk")
    with pytest.raises(UsageError, match="several label columns make a multi-label task"):
        run(train_file=str(data["multi_cols"]), label_column="positive,negative")
    with pytest.raises(UsageError, match="--task regression has none"):
        run(task="regression", train_file=str(data["reg"]), label_column="score", class_weights="auto")
    cols = write_rows(tmp_path / "cols.csv", ["text", "a", "b"], [["x y", 1, 0], ["z w", 2, 1]])
    with pytest.raises(UsageError, match="column 'a' holds '2'; label columns of --task multilabel hold 0 or 1"):
        run(task="multilabel", train_file=str(cols), label_column="a,b")
    with pytest.raises(UsageError, match="--text-column text,text names 'text' twice"):
        run(train_file=str(data["multi"]), text_column="text,text", label_column="tags")
    with pytest.raises(UsageError, match="--tune-threshold sets the decision threshold of --task multilabel"):
        run(task="regression", train_file=str(data["reg"]), label_column="score", tune_threshold=True)
    with pytest.raises(UsageError, match="--doc-pooling pools the windows of --long-docs chunk"):
        run(train_file=str(data["long"]), doc_pooling="max")


def test_bad_input_at_use_time(trained, data):
    out, _ = trained["bert", "pair"]
    with pytest.raises(UsageError, match="trained on text pairs; text 1 has no tab"):
        predict.run(PredictConfig(model=str(out), texts=["only one text"]))
    with pytest.raises(UsageError, match="trained on text pairs: pass their two columns"):
        evaluate.run(EvaluateConfig(model=str(out), data=str(data["pair"]), text_column="premise"))
    cols, _ = trained["gpt2", "multi_cols"]
    with pytest.raises(UsageError, match="name a 0/1 column for each \\(missing: food\\)"):
        evaluate.run(EvaluateConfig(model=str(cols), data=str(data["multi_cols"]), label_column="positive,negative"))
    single, _ = trained["bert", "reg"]
    with pytest.raises(UsageError, match="not a finite number"):
        evaluate.run(EvaluateConfig(model=str(single), data=str(data["multi"]), label_column="tags"))


def plotted_labels(run_dir: Path, tmp_path: Path, monkeypatch) -> list[str]:
    """The y-axis labels of `nlptl report`'s plots of a copy of `run_dir`."""
    import shutil

    from matplotlib.axes import Axes

    from nlptl.config import ReportConfig
    from nlptl.stages import report

    labels = []
    original = Axes.set_ylabel

    def set_ylabel(ax, label, *args, **kwargs):
        labels.append(label)
        return original(ax, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_ylabel", set_ylabel)
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    report.run(ReportConfig(run_dir=str(copy)))
    return labels


@pytest.mark.parametrize("shape,loss,scores", [
    ("reg", "mean squared error", ("eval_pearson", "eval_rmse")),
    ("multi", "binary cross-entropy", ("eval_f1_micro", "eval_subset_accuracy")),
])
def test_metrics_csv_and_report_follow_the_task_shape(trained, shape, loss, scores, tmp_path, monkeypatch):
    """metrics.csv keeps every score the shape is evaluated by (it once kept only accuracy and
    macro-F1), and the report names the loss the head minimised (it once said cross-entropy for all)."""
    from nlptl.tracking import COLUMNS

    out, result = trained["bert", shape]
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames[:len(COLUMNS)]) == COLUMNS
    for key in scores:
        logged = [float(r[key]) for r in rows if r[key]]
        assert logged and logged == pytest.approx([r[key] for r in json.loads((out / "nlptl-run.json").read_text())
                                                   ["history"] if key in r])
    labels = plotted_labels(out, tmp_path, monkeypatch)
    assert labels[0] == loss and "score on eval data" in labels
