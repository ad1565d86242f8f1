"""The stages compose (issue 24): what a later stage's `auto` choices read is handed on by every stage,
each choice is logged and recorded with its reason; adapt warms a new LM head up alone and can be
guarded by a probe; finetune's default and `auto` rates fit the body's origin."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import FAST, adapt_cfg, finetune_cfg, pretrain_cfg


@pytest.fixture(scope="module")
def sentence_encoder(checkpoints, tmp_path_factory):
    """The tiny bare BERT with sentence-transformers' files saying it pools by the mean (as
    all-MiniLM-L6-v2's 1_Pooling does)."""
    from nlptl.models import save_sentence_pooling

    out = tmp_path_factory.mktemp("st") / "encoder"
    shutil.copytree(checkpoints["bert"], out)
    save_sentence_pooling(out, "mean", 32, 128)
    return out


def record_of(run) -> dict:
    return json.loads((run / "nlptl-run.json").read_text())


def test_pooling_survives_adapt_and_every_choice_says_why(sentence_encoder, corpus_file, task_files, tmp_path, caplog):
    """Was: adapt wrote no pooling, so finetune of the adapted run silently pooled the first token."""
    from nlptl.stages import adapt, finetune

    lm = tmp_path / "lm"
    adapt.run(adapt_cfg(from_model=str(sentence_encoder), corpus=str(corpus_file), out=str(lm), lr=None))
    handed = record_of(lm)["lineage"]["handoff"]
    assert handed["pooling"]["value"] == "mean" and "1_Pooling" in handed["pooling"]["why"]
    assert handed["origin"] == "pretrained" and handed["objective"] == "mlm"
    choices = record_of(lm)["lineage"]["choices"]
    assert choices["objective"]["value"] == "mlm" and choices["lr"]["value"] == 1e-4
    with caplog.at_level(logging.INFO, logger="nlptl"):
        finetune.run(finetune_cfg(from_model=str(lm), train_file=str(task_files["train"]),
                                  eval_file=str(task_files["eval"]), out=str(tmp_path / "ft"), lr=None))
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config.get("nlptl_pooling") == "mean"
    lineage = record_of(tmp_path / "ft")["lineage"]
    assert lineage["pooling"] == "mean"
    assert lineage["choices"]["pooling"]["value"] == "mean" and "handed on by" in lineage["choices"]["pooling"]["why"]
    assert lineage["choices"]["lr"] == {"value": 1e-4, "why": lineage["choices"]["lr"]["why"]}
    assert "pretrained" in lineage["choices"]["lr"]["why"]
    assert any(r.getMessage().startswith("pooling mean: handed on by") for r in caplog.records)
    card = (tmp_path / "ft" / "README.md").read_text()
    assert "Choices nlptl made" in card and "pooling: mean" in card


def test_a_model_taken_as_it_is_keeps_its_pooling(sentence_encoder, task_files, tmp_path):
    """`pretrain --from CHECKPOINT` (no corpus) copies the model's files, but not 1_Pooling/."""
    from nlptl.config import PretrainConfig
    from nlptl.models import inspect_model
    from nlptl.stages import pretrain

    pretrain.run(PretrainConfig(from_model=str(sentence_encoder), out=str(tmp_path / "general")))
    from nlptl import handoff

    ref = inspect_model(str(tmp_path / "general"))
    assert handoff.pooling(ref, None).value == "mean"


def test_a_new_lm_head_trains_alone_first(checkpoints, corpus_file, tmp_path):
    """--head-warmup: while it lasts the body does not move; without it (or with the head there) it does."""
    import torch
    from safetensors.torch import load_file

    from nlptl.stages import adapt

    def body_weight(path):
        weights = load_file(str(path / "model.safetensors"))
        return next(v for k, v in weights.items() if "encoder.layer.0.attention.self.query.weight" in k)

    base = body_weight(checkpoints["bert"])
    warm = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(tmp_path / "warm"),
                               head_warmup=0.9))
    assert warm["lm_head_added"] and warm["head_warmup_steps"] == 4
    assert torch.equal(body_weight(tmp_path / "warm"), base)  # only the head trained
    assert record_of(tmp_path / "warm")["lineage"]["choices"]["head_warmup"]["value"] == 0.9
    cold = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(tmp_path / "cold"),
                               head_warmup=0.0))
    assert "head_warmup_steps" not in cold and not torch.equal(body_weight(tmp_path / "cold"), base)
    # A checkpoint with its own MLM head needs no warm-up: none is applied, whatever --head-warmup says.
    kept = adapt.run(adapt_cfg(from_model=str(checkpoints["distilbert"]), corpus=str(corpus_file),
                               out=str(tmp_path / "kept"), head_warmup=0.9))
    assert "head_warmup_steps" not in kept and "head_warmup" not in record_of(tmp_path / "kept")["lineage"]["choices"]


def test_probe_guards_adaptation(checkpoints, corpus_file, task_files, tmp_path, monkeypatch, caplog):
    """The checkpoint kept is the best by probe; a run that ends below its start says so."""
    from nlptl import probe
    from nlptl.stages import adapt

    falling = iter([0.9, 0.8, 0.7])
    monkeypatch.setattr(probe.Probe, "score", lambda self, model, device: next(falling))
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                     out=str(tmp_path / "lm"), probe=str(task_files["train"]), eval_every=2))
    # before 0.9; evaluations at steps 2 (0.8) and 4 (0.7); the kept checkpoint is step 2's, as scored then
    assert [p["step"] for p in result["probe_curve"]] == [0, 2, 4]
    assert [p["probe_accuracy"] for p in result["probe_curve"]] == [0.9, 0.8, 0.7]
    assert result["best_step"] == 2 and result["probe_accuracy_before"] == 0.9 and result["probe_accuracy"] == 0.8
    assert all(p["perplexity"] is not None for p in result["probe_curve"])
    assert any("lowered the probe's accuracy" in r.getMessage() for r in caplog.records)
    rows = (tmp_path / "lm" / "metrics.csv").read_text().splitlines()
    assert "eval_probe_accuracy" in rows[0]
    # One evaluation row per step: the kept checkpoint's scores are not written again under the last step.
    evaluated = [r.split(",")[0] for r in rows[1:] if r.split(",")[-1]]
    assert evaluated == ["0", "2", "4"]
    record = record_of(tmp_path / "lm")
    assert record["lineage"]["kept_step"] == 2 and record["lineage"]["probe"]["spec"] == str(task_files["train"])
    card = (tmp_path / "lm" / "README.md").read_text()
    assert "the weights are step 2's" in card and "probe (checkpoint selection)" in card


def test_probe_scores_real_features(checkpoints, task_files, tmp_path):
    """Unmocked: the probe reads the task's --train by default with --corpus task:NAME, and its score is
    a cross-validated accuracy."""
    from nlptl.stages import adapt

    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus="task:classification",
                                 train_file=str(task_files["train"]), out=str(tmp_path / "tapt"), block_size=16))
    assert 0.0 <= result["probe_accuracy_before"] <= 1.0 and len(result["probe_curve"]) >= 2
    assert record_of(tmp_path / "tapt")["lineage"]["choices"]["probe"]["value"] == str(task_files["train"])


@pytest.mark.parametrize("content, message", [
    (None, "--probe .*missing.csv"),
    ("text,label\na good film,pos\nanother good one,pos\n", "--probe .*needs at least two labels"),
    ("text,stars\na good film,5\n", "--probe .*'label'"),
    ("text,label\na good film,pos;fun\nbad,neg\n", "--probe .*one label per text"),
])
def test_bad_probe_is_one_line_before_any_work(checkpoints, corpus_file, tmp_path, monkeypatch, content, message):
    """Named as --probe (it said --train), refused before the model loads or the corpus is read."""
    from nlptl import models
    from nlptl.errors import UsageError
    from nlptl.stages import adapt

    path = tmp_path / ("missing.csv" if content is None else "probe.csv")
    if content is not None:
        path.write_text(content)
    if content is None or "stars" in content:  # the file and its columns are checked before anything loads
        monkeypatch.setattr(models, "load_lm", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(UsageError, match=message):
        adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file), out=str(tmp_path / "lm"),
                            probe=str(path)))


def test_probe_is_refused_with_the_contrastive_objective(task_files):
    from nlptl.errors import UsageError

    with pytest.raises(UsageError, match="--probe"):
        adapt_cfg(objective="contrastive", corpus="task:classification", train_file=str(task_files["train"]),
                  probe=str(task_files["train"]))


@pytest.fixture(scope="module")
def scratch_gpt(corpus_file, tmp_path_factory):
    from nlptl.stages import pretrain

    out = tmp_path_factory.mktemp("scratch") / "gpt"
    pretrain.run(pretrain_cfg(arch="gpt", size="tiny", corpus=str(corpus_file), out=str(out)))
    return out


def test_default_rate_follows_the_origin(scratch_gpt, checkpoints, corpus_file, task_files, tmp_path):
    """Was: 1e-4 for every body, at which a from-scratch GPT's classifier stays at chance."""
    from nlptl.stages import adapt, finetune

    adapt.run(adapt_cfg(from_model=str(scratch_gpt), corpus=str(corpus_file), out=str(tmp_path / "lm")))
    assert record_of(tmp_path / "lm")["lineage"]["handoff"]["origin"] == "scratch"
    files = {"train_file": str(task_files["train"]), "eval_file": str(task_files["eval"]), "lr": None}
    scratch = finetune.run(finetune_cfg(from_model=str(tmp_path / "lm"), out=str(tmp_path / "a"), **files))
    pretrained = finetune.run(finetune_cfg(from_model=str(checkpoints["gpt2"]), out=str(tmp_path / "b"), **files))
    assert scratch["lr"] == 1e-3 and pretrained["lr"] == 1e-4
    assert "scratch" in record_of(tmp_path / "a")["lineage"]["choices"]["lr"]["why"]


def test_a_contrastive_run_on_a_scratch_body_finetunes_at_the_scratch_rate(scratch_gpt, task_files, tmp_path):
    """Was: after a contrastive adapt run, finetune took SetFit's rates (body 1e-5, head 1e-2) whatever the
    body; on a GPT pretrained from scratch the classifier stayed at chance (-6 to -18 points against
    finetuning directly, docs/results.md). The contrastive run hands on its body's origin, and finetune
    reads it."""
    from nlptl.stages import adapt, finetune

    adapt.run(adapt_cfg(from_model=str(scratch_gpt), objective="contrastive", corpus="task:classification",
                        train_file=str(task_files["train"]), out=str(tmp_path / "c"), max_steps=2, batch_size=8,
                        pairs_per_example=2, lr=None))
    handed = record_of(tmp_path / "c")["lineage"]["handoff"]
    assert handed["origin"] == "contrastive" and handed["body"] == "scratch"
    result = finetune.run(finetune_cfg(from_model=str(tmp_path / "c"), out=str(tmp_path / "ft"), lr=None,
                                       train_file=str(task_files["train"]), eval_file=str(task_files["eval"])))
    assert result["lr"] == 1e-3 and "head_lr" not in result
    why = record_of(tmp_path / "ft")["lineage"]["choices"]["lr"]["why"]
    assert "contrastive" in why and "from scratch" in why


def test_lr_auto_is_capped_for_a_pretrained_body(checkpoints, task_files, tmp_path, monkeypatch):
    """Was: the range test's 3.5e-3 taken as it is, which collapses all-MiniLM-L6-v2 to one class."""
    from nlptl import evaluation, lr_find
    from nlptl.stages import finetune

    monkeypatch.setattr(lr_find, "range_test", lambda *a, **k: {"lr": 3.5e-3, "rule": "divergence/100"})
    real = evaluation.classification_metrics  # a tiny random model predicts one class at first: no retry here
    monkeypatch.setattr(evaluation, "classification_metrics",
                        lambda *a, **k: {**real(*a, **k), "top_prediction_share": 0.5})
    result = finetune.run(finetune_cfg(from_model=str(checkpoints["bert"]), train_file=str(task_files["train"]),
                                       eval_file=str(task_files["eval"]), out=str(tmp_path / "ft"), lr="auto"))
    assert result["lr"] == result["lr_found"] == 3e-4 and result["lr_range_test"] == 3.5e-3
    saved = json.loads((tmp_path / "ft" / "lr_find.json").read_text())
    assert saved["found"] == 3.5e-3 and saved["lr"] == 3e-4
    choice = record_of(tmp_path / "ft")["lineage"]["choices"]["lr"]
    assert choice["value"] == 3e-4 and "capped" in choice["why"]


def test_lr_auto_retries_lower_after_a_one_class_start(scratch_gpt, task_files, tmp_path, monkeypatch, caplog):
    """A run whose first evaluation under --lr auto predicts one class starts again at a tenth of the
    rate; the warning after a collapse never suggests --lr auto."""
    from nlptl import evaluation, lr_find
    from nlptl.stages import finetune

    monkeypatch.setattr(lr_find, "range_test", lambda *a, **k: {"lr": 5e-3, "rule": "divergence/100"})
    real = evaluation.classification_metrics
    monkeypatch.setattr(evaluation, "classification_metrics",
                        lambda *a, **k: {**real(*a, **k), "top_prediction_share": 1.0})  # every evaluation: one class
    with caplog.at_level(logging.INFO, logger="nlptl"):
        result = finetune.run(finetune_cfg(from_model=str(scratch_gpt), train_file=str(task_files["train"]),
                                           eval_file=str(task_files["eval"]), out=str(tmp_path / "ft"), lr="auto",
                                           eval_every=20, max_steps=22))
    assert result["lr"] == pytest.approx(5e-5) and result["steps"] == 22  # two retries, the last one unguarded
    saved = json.loads((tmp_path / "ft" / "lr_find.json").read_text())
    assert [r["lr"] for r in saved["retries"]] == pytest.approx([5e-3, 5e-4]) and saved["lr"] == pytest.approx(5e-5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("starting again at" in m for m in messages) == 2
    one_class = [m for m in messages if "predicts one class for" in m and "majority" in m]
    assert one_class and "--lr auto" not in one_class[-1] and "range test chose" in one_class[-1]
    # Judged from step 20 on only (classifier.GUARD_FROM_STEP): before, any classifier is its random head.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nlptl"):
        early = finetune.run(finetune_cfg(from_model=str(scratch_gpt), train_file=str(task_files["train"]),
                                          eval_file=str(task_files["eval"]), out=str(tmp_path / "early"), lr="auto",
                                          eval_every=2, max_steps=FAST["max_steps"]))
    assert early["lr"] == pytest.approx(5e-3) and not any("starting again" in r.getMessage() for r in caplog.records)


def test_probe_ties_keep_the_later_checkpoint(checkpoints, corpus_file, task_files, tmp_path, monkeypatch):
    """The probe's accuracy moves in steps of 1/n: of equal scores, the more adapted checkpoint is kept."""
    from nlptl import probe
    from nlptl.stages import adapt

    monkeypatch.setattr(probe.Probe, "score", lambda self, model, device: 0.75)
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["distilbert"]), corpus=str(corpus_file),
                                 out=str(tmp_path / "lm"), probe=str(task_files["train"]), eval_every=2))
    assert result["best_step"] == 4


def test_the_probe_scores_the_end_of_the_head_warmup(checkpoints, corpus_file, task_files, tmp_path, caplog):
    """After a head warm-up the first evaluation is at its end: the starting body with its trained head,
    which the probe keeps when no later checkpoint does better."""
    from nlptl.stages import adapt

    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                     out=str(tmp_path / "lm"), probe=str(task_files["train"]), head_warmup=0.5))
    curve = result["probe_curve"]
    assert [p["step"] for p in curve] == [0, 2, 4] and result["head_warmup_steps"] == 2
    assert curve[1]["probe_accuracy"] == curve[0]["probe_accuracy"]  # the body has not moved yet


def test_a_probe_that_adapting_does_not_improve_keeps_the_starting_body(checkpoints, corpus_file, task_files,
                                                                          tmp_path, monkeypatch, caplog):
    from safetensors.torch import load_file

    from nlptl import probe
    from nlptl.stages import adapt

    scores = iter([0.8, 0.8, 0.7])  # before, warm-up end (step 2), step 4
    monkeypatch.setattr(probe.Probe, "score", lambda self, model, device: next(scores))
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                     out=str(tmp_path / "lm"), probe=str(task_files["train"]), head_warmup=0.5))
    assert result["best_step"] == 2
    assert any("end of the head's warm-up" in r.getMessage() for r in caplog.records)
    base = load_file(str(checkpoints["bert"] / "model.safetensors"))
    kept = load_file(str(tmp_path / "lm" / "model.safetensors"))
    name = next(k for k in base if "encoder.layer.0.attention.self.query.weight" in k)
    assert (kept.get(name, kept.get(f"bert.{name}")) == base[name]).all()  # the body as it was


def test_a_probe_at_chance_does_not_select(checkpoints, corpus_file, task_files, tmp_path, monkeypatch, caplog):
    """Was: a probe scoring at chance on the starting body (a tiny from-scratch GPT: 0.43-0.58 on 100 texts)
    still chose the kept checkpoint, a random pick among noise, silently. Now it says it cannot guard the
    run, selection falls back to held-out perplexity, and the probe is scored for the record only."""
    from nlptl import probe
    from nlptl.stages import adapt

    scores = iter([0.5, 0.9, 0.5])  # before (chance for 240 balanced texts), step 2, step 4
    monkeypatch.setattr(probe.Probe, "score", lambda self, model, device: next(scores))
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                     out=str(tmp_path / "lm"), probe=str(task_files["train"]), eval_every=2))
    warned = [r.getMessage() for r in caplog.records if "cannot guard" in r.getMessage()]
    assert len(warned) == 1 and "0.500 on 240 texts" in warned[0]
    assert not any("lowered the probe's accuracy" in r.getMessage() for r in caplog.records)
    assert result["probe_guarded"] is False and 0.54 < result["probe_chance"] < 0.62
    curve = result["probe_curve"]
    by_perplexity = min((p for p in curve[1:]), key=lambda p: (p["perplexity"], -p["step"]))["step"]
    assert result["best_step"] == by_perplexity  # not step 2, the probe's best
    assert [p["probe_accuracy"] for p in curve] == [0.5, 0.9, 0.5]
    lineage = record_of(tmp_path / "lm")["lineage"]
    assert lineage["kept_by"] == "held-out perplexity"
    assert "the best by held-out perplexity" in (tmp_path / "lm" / "README.md").read_text()


def test_a_warmup_that_rounds_to_no_step_is_not_recorded_as_a_choice(checkpoints, corpus_file, tmp_path, caplog):
    """Was: 2 steps with --head-warmup 0.2 (0.4 of a step: none) still recorded the choice "head_warmup
    0.2: the new head trains alone", which did not happen."""
    from nlptl.stages import adapt

    with caplog.at_level(logging.INFO, logger="nlptl"):
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["bert"]), corpus=str(corpus_file),
                                     out=str(tmp_path / "lm"), max_steps=2, head_warmup=0.2))
    assert result["lm_head_added"] and "head_warmup_steps" not in result
    assert "head_warmup" not in record_of(tmp_path / "lm")["lineage"]["choices"]
    assert any("rounds to no step" in r.getMessage() for r in caplog.records)
