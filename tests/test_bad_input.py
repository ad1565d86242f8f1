"""Bad input: every mistake ends in one line on stderr that names the problem and the fix.

For each must-fail case: the exit code (2 usage, 1 runtime), one stderr line starting with 'error:',
no traceback, nothing on stdout and nothing written at --out. Mistakes visible on the command line,
in file headers or in config.json are caught before torch is imported: those run in a fresh process
that reports whether torch got imported. Mistakes that need the data read (labels) run in this
process, where the heavy imports are paid once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import (
    OFFLINE_ENDPOINT,
    assert_nothing_written,
    assert_one_line_error,
    call_main,
    cli_env,
    labelled,
    run_light,
    tiny_classifier,
    tiny_lm,
    tokenizer_only,
    write_csv,
    write_lines,
)

FAST = ["--max-steps", "2", "--batch-size", "4", "--precision", "fp32"]


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """The world the cases refer to: tiny models, a finished run, good and bad data files."""
    root = tmp_path_factory.mktemp("bad-input")
    lm = tiny_lm(root / "lm")
    run = root / "old-run"  # what a finished adapt run looks like to `--out` checks
    run.mkdir()
    for f in lm.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    (run / "nlptl-run.json").write_text(
        json.dumps({"stage": "adapt", "created": "2026-01-01T00:00:00+00:00"})
    )
    notmodel = root / "notes"
    write_lines(notmodel / "readme.md", ["not a model"])
    broken = root / "broken-run" / "checkpoints" / "step-000010"  # an unfinished run whose checkpoint is torn
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"torn")
    (broken / "manifest.json").write_text(json.dumps({"model.safetensors": "0" * 64}))
    truncated = root / "truncated-run"  # a finished run whose record was cut short (a full disk, a bad copy)
    shutil.copytree(run, truncated)
    (truncated / "nlptl-run.json").write_text('{"stage": "adapt", "created": "2026-01-')
    d = root / "data"
    d.mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"\n   \n\t\n\n")
    (d / "binary.txt").write_bytes(b"text first\n\x00\x01\x02 binary\n")
    (d / "latin1.txt").write_bytes("fine\nalso fine\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    return SimpleNamespace(
        root=root,
        lm=lm,
        broken=root / "broken-run",
        run=run,
        notmodel=notmodel,
        truncated=truncated,
        clf=tiny_classifier(lm, root / "classifier"),
        tok=tokenizer_only(lm, root / "tokenizer-only"),
        good_txt=write_lines(d / "good.txt", ["a short line of text"] * 50),
        train=write_csv(d / "train.csv", labelled(40)),
        eval=write_csv(d / "eval.csv", labelled(12, skip=40)),
        missing=d / "missing.txt",
        empty=d / "empty.txt",
        blank=d / "blank.txt",
        latin1=d / "latin1.txt",
        binary=d / "binary.txt",
        no_text=write_csv(d / "no_text.csv", [("hello", "1")], header=("txt", "label")),
        no_label=write_csv(d / "no_label.csv", [("hello", "1")], header=("text", "labl")),
        bad_yaml=write_lines(d / "bad.yaml", ["lr: 0.1", "epochs: [1, 2"]),
        typo_yaml=write_lines(d / "typo.yaml", ["lr: 0.001", "max_step: 3"]),
        header_only=write_lines(d / "header_only.csv", ["text,label"]),
    )


def adapt(w, *args):
    return ["adapt", "--from", w.lm, "--corpus", w.good_txt, *args]


def finetune(w, *args):
    return ["finetune", "--from", w.lm, "--task", "classification", "--train", w.train, *args]


# id: (argv from the world, exit code, words the error line must hold)
LIGHT = {
    "missing-corpus-file": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", w.missing],
        2,
        ["missing.txt", "no such file"],
    ),
    "empty-corpus-file": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", w.empty],
        2,
        ["empty.txt", "empty"],
    ),
    "blank-lines-only": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", w.blank],
        2,
        ["blank.txt", "blank lines"],
    ),
    "not-utf8": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", w.latin1],
        2,
        ["latin1.txt", "line 3", "UTF-8", "re-encode"],
    ),
    "csv-without-text-column": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", w.no_text],
        2,
        ["no column 'text'", "did you mean 'txt'", "--text-column"],
    ),
    "csv-without-label-column": (
        lambda w: ["finetune", "--from", w.lm, "--task", "classification", "--train", w.no_label],
        2,
        ["no column 'label'", "did you mean 'labl'", "--label-column"],
    ),
    "eval-csv-without-label-column": (lambda w: finetune(w, "--eval", w.no_label), 2, ["--eval", "'label'"]),
    "unknown-corpus-name": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", "reviws"],
        2,
        ["unknown corpus 'reviws'", "did you mean 'reviews'", "nlptl corpora"],
    ),
    "unknown-task-name": (
        lambda w: ["finetune", "--from", w.lm, "--task", "sentimnt"],
        2,
        ["unknown task 'sentimnt'", "did you mean 'sentiment'", "nlptl tasks"],
    ),
    "from-not-a-model": (
        lambda w: ["adapt", "--from", w.notmodel, "--corpus", w.good_txt],
        2,
        ["--from", "config.json"],
    ),
    "from-missing-dir": (
        lambda w: ["adapt", "--from", w.root / "no" / "such" / "dir", "--corpus", w.good_txt],
        2,
        ["--from", "no such directory"],
    ),
    "from-tokenizer-only": (
        lambda w: ["adapt", "--from", w.tok, "--corpus", w.good_txt],
        2,
        ["tokenizer", "no model"],
    ),
    "adapt-from-classifier": (
        lambda w: ["adapt", "--from", w.clf, "--corpus", w.good_txt],
        2,
        ["classifier", "pass a pretrain or adapt run"],
    ),
    "predict-with-a-language-model": (
        lambda w: ["predict", "--model", w.lm, "some text"],
        2,
        ["not a classifier", "finetune"],
    ),
    "adapt-without-a-pretrain-run": (
        lambda w: ["adapt", "--corpus", w.good_txt],
        2,
        ["no completed pretrain run", "--from"],
    ),
    "out-holds-another-run": (lambda w: adapt(w, "--out", w.run), 2, ["already holds", "--overwrite"]),
    "out-is-from": (
        lambda w: ["adapt", "--from", w.run, "--corpus", w.good_txt, "--out", w.run, "--overwrite"],
        2,
        ["--out", "--from"],
    ),
    "unknown-arch": (
        lambda w: ["pretrain", "--arch", "gtp", "--corpus", w.good_txt],
        2,
        ["--arch 'gtp'", "did you mean 'gpt'", "gpt, bert"],
    ),
    "unknown-size": (
        lambda w: ["pretrain", "--size", "huge", "--corpus", w.good_txt],
        2,
        ["--size 'huge'", "tiny, mini, small, base"],
    ),
    "unknown-objective": (
        lambda w: adapt(w, "--objective", "mlmm"),
        2,
        ["--objective 'mlmm'", "did you mean 'mlm'"],
    ),
    "zero-max-steps": (lambda w: adapt(w, "--max-steps", "0"), 2, ["--max-steps", "positive"]),
    "negative-max-steps": (lambda w: adapt(w, "--max-steps", "-5"), 2, ["--max-steps", "positive"]),
    "zero-epochs": (lambda w: finetune(w, "--epochs", "0"), 2, ["--epochs", "positive"]),
    "negative-epochs": (lambda w: adapt(w, "--epochs", "-1"), 2, ["--epochs", "positive"]),
    "zero-batch-size": (lambda w: finetune(w, "--batch-size", "0"), 2, ["--batch-size", "positive"]),
    "negative-batch-size": (lambda w: adapt(w, "--batch-size", "-8"), 2, ["--batch-size", "positive"]),
    "zero-lr": (lambda w: adapt(w, "--lr", "0"), 2, ["--lr", "positive"]),
    "negative-lr": (lambda w: finetune(w, "--lr", "-1e-4"), 2, ["--lr", "positive"]),
    "block-size-over-positions": (
        lambda w: adapt(w, "--block-size", "1024"),
        2,
        ["--block-size 1024", "256 positions", "--block-size 256 or less"],
    ),
    "max-length-over-positions": (
        lambda w: finetune(w, "--max-length", "4096"),
        2,
        ["--max-length 4096", "256"],
    ),
    "malformed-yaml-config": (lambda w: adapt(w, "--config", w.bad_yaml), 2, ["bad.yaml", "malformed YAML"]),
    "unknown-config-key": (
        lambda w: adapt(w, "--config", w.typo_yaml),
        2,
        ["unknown config key 'max_step'", "did you mean 'max_steps'"],
    ),
    "unknown-set-key": (
        lambda w: adapt(w, "--set", "warmup=0.1"),
        2,
        ["'warmup'", "did you mean 'warmup_ratio'"],
    ),
    "bad-set-value": (lambda w: adapt(w, "--set", "batch_size=many"), 2, ["--batch-size", "many"]),
    "unknown-option": (lambda w: adapt(w, "--max-step", "3"), 2, ["no such option: --max-step", "--help"]),
    "option-wrong-type": (lambda w: adapt(w, "--max-steps", "three"), 2, ["--max-steps", "--help"]),
    "missing-data-for-evaluate": (lambda w: ["evaluate", "--model", w.clf], 2, ["--data"]),
    "resume-with-nothing-to-resume": (lambda w: adapt(w, "--resume"), 2, ["nothing to resume", "drop --resume"]),
    "resume-from-missing-checkpoint": (
        lambda w: adapt(w, "--resume-from", w.root / "nope"), 2, ["--resume-from", "no such checkpoint"]),
    "resume-corrupted-checkpoint": (
        lambda w: adapt(w, "--out", w.broken, "--resume"), 2, ["no intact checkpoint", "corrupted", "--overwrite"]),
    "out-holds-an-unfinished-run": (
        lambda w: adapt(w, "--out", w.broken), 2, ["unfinished run", "--resume", "--overwrite"]),
    "binary-corpus": (lambda w: ["adapt", "--from", w.lm, "--corpus", w.binary], 2, ["binary data", "line 2", "UTF-8"]),
    "negative-save-every": (lambda w: adapt(w, "--save-every", "-1"), 2, ["--save-every", ">= 0"]),
    "nan-lr": (lambda w: adapt(w, "--lr", "nan"), 2, ["--lr", "finite number", "nan"]),
    "inf-warmup": (lambda w: finetune(w, "--warmup-ratio", "inf"), 2, ["--warmup-ratio", "finite number"]),
    "nan-set-float": (lambda w: adapt(w, "--set", "max_grad_norm=nan"), 2, ["--max-grad-norm", "finite number"]),
    "local-path-typo": (
        lambda w: ["adapt", "--from", "runs/genral", "--corpus", w.good_txt],
        2,
        ["--from runs/genral", "no such directory", "did you mean 'general'"],
    ),
    "compare-path-typo": (
        lambda w: finetune(w, "--compare", "runs/genral"),
        2,
        ["--compare runs/genral", "no such directory"],
    ),
    "pretrain-from-with-arch": (
        lambda w: ["pretrain", "--from", w.lm, "--arch", "bert", "--size", "base"],
        2,
        ["--arch and --size", "drop --arch and --size"],
    ),
    "predict-max-length-over-positions": (
        lambda w: ["predict", "--model", w.clf, "--max-length", "4096", "some text"],
        2,
        ["--max-length 4096", "positions"]),
    "evaluate-max-length-over-positions": (
        lambda w: ["evaluate", "--model", w.clf, "--data", w.train, "--max-length", "4096"], 2,
        ["--max-length 4096", "positions"]),
    "predict-negative-max-length": (
        lambda w: ["predict", "--model", w.clf, "--max-length", "-5", "text"], 2, ["--max-length", "at least 2"]),
    "evaluate-zero-max-length": (
        lambda w: ["evaluate", "--model", w.clf, "--data", w.train, "--max-length", "0"],
        2,
        ["--max-length", "at least 2"]),
    "out-under-a-file": (lambda w: adapt(w, "--out", w.good_txt / "sub"), 2, ["--out", "good.txt", "is a file"]),
    "out-not-writable": (lambda w: adapt(w, "--out", "/sys/nlptl-out"), 2, ["--out /sys/nlptl-out", "not writable"]),
    "negative-seed": (lambda w: adapt(w, "--seed", "-1"), 2, ["--seed", "0 to 4294967295", "-1"]),
    "seed-past-32-bits": (lambda w: finetune(w, "--seed", "4294967296"), 2, ["--seed", "0 to 4294967295"]),
    "seeds-past-32-bits": (lambda w: finetune(w, "--seed", "4294967295", "--seeds", "2"), 2, ["--seed", "--seeds"]),
    "evaluate-negative-seed": (
        lambda w: ["evaluate", "--model", w.clf, "--data", w.train, "--seed", "-3"], 2, ["--seed", "0 to 4294967295"]),
    "config-is-a-directory": (lambda w: adapt(w, "--config", w.root), 2, ["--config", "is a directory", "YAML file"]),
    "config-empty-device-is-an-empty-config": (  # read (nothing in it), not 'no such file': the next check speaks
        lambda w: adapt(w, "--config", "/dev/null", "--max-steps", "0"), 2, ["--max-steps", "positive"]),
    "config-duplicate-key": (
        lambda w: adapt(w, "--config", write_lines(w.root / "dup.yaml", ["lr: 0.001", "max_steps: 3", "lr: 0.01"])),
        2,
        ["dup.yaml", "'lr' appears twice", "lines 1 and 3"],
    ),
    "recipe-is-a-directory": (lambda w: ["run", w.root, "--dry-run"], 2, ["recipe", "is a directory"]),
    "recipe-duplicate-key-in-a-stage": (
        lambda w: ["run", write_lines(w.root / "dup-recipe.yaml", [
            "stages:", "  - stage: adapt", f"    from: {w.lm}", f"    corpus: {w.good_txt}", "    max_steps: 2",
            "    max_steps: 20"]), "--dry-run"],
        2,
        ["dup-recipe.yaml", "'max_steps' appears twice", "lines 5 and 6"],
    ),
    "from-a-run-with-a-truncated-record": (
        lambda w: ["adapt", "--from", w.truncated, "--corpus", w.good_txt], 2, ["--from", "nlptl-run.json", "corrupt"]),
    "out-holds-a-run-with-a-truncated-record": (
        lambda w: adapt(w, "--out", w.truncated), 2, ["--out", "nlptl-run.json is corrupt", "--overwrite"]),
    "report-on-a-truncated-record": (lambda w: ["report", w.truncated], 2, ["nlptl-run.json", "corrupt"]),
    "csv-duplicate-column": (  # pandas would rename the second one 'text.1' and read the first without a word
        lambda w: finetune(w, "--train", write_csv(w.root / "dup.csv", [("a", "1", "b")],
                                                   header=("text", "label", "text"))),
        2,
        ["--train", "dup.csv", "column 'text' appears twice", "columns 1 and 3", "rename"],
    ),
    "corpus-tsv-duplicate-column": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", write_lines(w.root / "dup.tsv", ["text\tid\tid", "a\t1\t2"])],
        2,
        ["--corpus", "dup.tsv", "column 'id' appears twice"],
    ),
    "header-only-csv": (
        lambda w: ["finetune", "--from", w.lm, "--task", "classification", "--train", w.header_only],
        2,
        ["--train", "header_only.csv", "header but no rows"],
    ),
}


@pytest.mark.parametrize("case", list(LIGHT))
def test_fails_before_torch(w, tmp_path, case):
    build, code, needles = LIGHT[case]
    out = tmp_path / "out"
    argv = build(w)
    if argv[0] in ("pretrain", "adapt", "finetune") and "--out" not in argv:
        argv += ["--out", out]
    (tmp_path / "runs" / "general").mkdir(parents=True)  # for the path typo: ./runs exists, runs/genral does not
    res = run_light(argv, tmp_path)
    assert_one_line_error(res, code, *needles)
    assert not res.torch, f"{case}: torch was imported before the check failed"
    assert_nothing_written(out)
    assert res.seconds < 15, f"{case}: took {res.seconds:.1f} s"


def test_a_home_that_is_not_writable_is_one_line(w, tmp_path):
    """Runs go under $NLPTL_HOME by default: a read-only one is refused before the lock is taken."""
    res = run_light(adapt(w), tmp_path, env=cli_env(tmp_path, NLPTL_HOME="/sys/nlptl-home"))
    assert_one_line_error(res, 2, "/sys", "not writable", "--out")
    assert not res.torch


def test_refused_out_is_left_as_it_was(w, tmp_path):
    before = {f.name: f.stat().st_mtime_ns for f in w.run.iterdir()}
    res = run_light(adapt(w, "--out", w.run), tmp_path)
    assert_one_line_error(res, 2, "--overwrite")
    assert {f.name: f.stat().st_mtime_ns for f in w.run.iterdir()} == before


# --------------------------------------------------------------------------- the hub, offline


def offline_env(home: Path) -> dict[str, str]:
    """No reachable hub and an empty Hugging Face cache, whatever this machine has."""
    env = cli_env(
        home,
        HF_ENDPOINT=OFFLINE_ENDPOINT,
        HF_HOME=str(home / "hf"),
        HF_HUB_CACHE=str(home / "hf" / "hub"),
        HF_DATASETS_CACHE=str(home / "hf" / "datasets"),
    )
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    return env


HUB = {
    "corpus-name-not-registered": (
        lambda w: ["adapt", "--from", w.lm, "--corpus", "reviews"],
        ["--corpus reviews", "offline", "local file"],
    ),
    "task-name-not-registered": (
        lambda w: ["finetune", "--from", w.lm, "--task", "sentiment"],
        ["--task sentiment", "offline", "--train FILE"],
    ),
    "hub-model-id": (
        lambda w: ["adapt", "--from", "some-org/some-model", "--corpus", w.good_txt],
        ["--from some-org/some-model", "offline", "local checkpoint"],
    ),
    "hub-model-id-pretrain": (
        lambda w: ["pretrain", "--from", "some-org/some-model"],
        ["--from some-org/some-model", "local checkpoint"],
    ),
    "hub-model-id-predict": (
        lambda w: ["predict", "--model", "some-org/some-model", "text"],
        ["--model some-org/some-model", "local checkpoint"],
    ),
}


@pytest.mark.parametrize("case", list(HUB))
def test_hub_names_offline_fail_fast(w, tmp_path, case):
    build, needles = HUB[case]
    out = tmp_path / "out"
    argv = build(w)
    if argv[0] != "predict":
        argv += ["--out", out]
    res = run_light(argv, tmp_path, env=offline_env(tmp_path))
    assert_one_line_error(res, 1, *needles)
    assert res.seconds < 10, f"{case}: took {res.seconds:.1f} s to fail"
    assert not res.torch
    assert_nothing_written(out)


def test_registered_names_need_no_hub(w, tmp_path):
    """With registry.yaml, the hub names resolve to local files: the quick checks pass offline."""
    from cli_helpers import write_registry

    write_registry(tmp_path, {"reviews": w.missing}, {})
    res = run_light(
        ["adapt", "--from", w.lm, "--corpus", "reviews", "--out", tmp_path / "out"],
        tmp_path,
        env=offline_env(tmp_path),
    )
    # The registered path is checked like any --corpus file (here: it does not exist).
    assert_one_line_error(res, 2, "missing.txt", "no such file")


# --------------------------------------------------------------------------- checks that read the data


def in_process(argv: list, home: Path, capsys) -> tuple[int, str, str]:
    code = call_main(argv, home)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_fails(argv: list, tmp_path: Path, capsys, *needles: str) -> None:
    from cli_helpers import Result

    out = tmp_path / "out"
    code, stdout, stderr = in_process(argv + ["--out", out], tmp_path, capsys)
    assert_one_line_error(Result(code, stdout, stderr, 0.0), 2, *needles)
    assert_nothing_written(out)


def test_eval_label_unseen_in_train(w, tmp_path, capsys):
    ev = write_csv(tmp_path / "eval.csv", labelled(10, skip=40) + [("A neutral sentence.", "neutral")])
    run_fails(
        finetune(w, "--eval", ev, *FAST), tmp_path, capsys, "--eval", "'neutral'", "not seen in the training"
    )


def test_empty_label_values(w, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", labelled(20) + [("No label here.", ""), ("Nor here.", " ")])
    run_fails(
        ["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST],
        tmp_path,
        capsys,
        "2 row(s)",
        "empty 'label'",
        "fill them in or drop",
    )


def test_single_class(w, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", [(t, "1") for t, _ in labelled(20)])
    run_fails(
        ["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST],
        tmp_path,
        capsys,
        "single class",
        "at least two labels",
    )


def test_tokenizer_larger_than_the_embeddings(w, tmp_path, capsys):
    small = tmp_path / "small-vocab"
    shutil.copytree(w.lm, small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 10  # fewer rows than the tokenizer has tokens
    (small / "config.json").write_text(json.dumps(config))
    run_fails(["adapt", "--from", small, "--corpus", w.good_txt, *FAST], tmp_path, capsys,
              "tokenizer has", "embeddings hold 10", "tokenizer the model was trained with")


def test_labels_outside_the_task(w, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", [(t, "good" if y == "1" else "bad") for t, y in labelled(20)])
    run_fails(
        ["finetune", "--from", w.lm, "--task", "sentiment", "--train", train, *FAST],
        tmp_path,
        capsys,
        "'good'",
        "--task classification",
    )


def test_overwrite_replaces_a_run(w, tmp_path, capsys):
    out = shutil.copytree(w.run, tmp_path / "run")
    code, _, err = in_process(adapt(w, "--out", out, "--block-size", "32", *FAST), tmp_path, capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = in_process(
        adapt(w, "--out", out, "--overwrite", "--block-size", "32", "--json", *FAST), tmp_path, capsys
    )
    assert code == 0, err
    record = json.loads((out / "nlptl-run.json").read_text())
    assert record["stage"] == "adapt" and record["lineage"]["steps"] == 2
    assert not (tmp_path / ".run.partial").exists()


def test_string_labels_for_classification(w, tmp_path, capsys):
    rows = [(t, "praise" if y == "1" else "complaint") for t, y in labelled(40)]
    train = write_csv(tmp_path / "train.csv", rows[:30])
    ev = write_csv(tmp_path / "eval.csv", rows[30:])
    out = tmp_path / "out"
    code, stdout, err = in_process(
        [
            "finetune",
            "--from",
            w.lm,
            "--task",
            "classification",
            "--train",
            train,
            "--eval",
            ev,
            "--out",
            out,
            "--json",
            *FAST,
        ],
        tmp_path,
        capsys,
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["lineage"]["labels"] == ["complaint", "praise"]
    assert "complaint, praise" in err  # the label set (and so the ids) is reported
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "complaint", "1": "praise"}


def test_texts_longer_than_max_length_are_truncated(w, tmp_path, capsys):
    rows = labelled(24)
    long_rows = [(t + " " + " ".join(["and it went on"] * 40), y) for t, y in rows[:5]] + rows[5:]
    train = write_csv(tmp_path / "train.csv", long_rows)
    ev = write_csv(tmp_path / "eval.csv", labelled(8, skip=40))
    code, _, err = in_process(
        [
            "finetune",
            "--from",
            w.lm,
            "--task",
            "classification",
            "--train",
            train,
            "--eval",
            ev,
            "--max-length",
            "100",
            "--out",
            tmp_path / "out",
            *FAST,
        ],
        tmp_path,
        capsys,
    )
    assert code == 0, err
    warning = [line for line in err.splitlines() if "truncated" in line and "--train" in line]
    assert warning, err
    assert "truncated 5 of 24 texts longer than 100 tokens" in warning[0] and "--max-length" in warning[0]


def test_malformed_jsonl_line_is_one_line_from_the_command_line(w, tmp_path):
    rows = [json.dumps({"text": t, "label": y}) for t, y in labelled(60)]
    rows[50] = '{"text": "a missing comma" "label": "positive"}'  # pyarrow fails here, and datasets logs it
    train = write_lines(tmp_path / "train.jsonl", rows)
    res = run_light(["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST,
                     "--out", tmp_path / "out"], tmp_path, timeout=120)
    assert_one_line_error(res, 2, "train.jsonl", "line 51")


def test_malformed_jsonl_line_names_the_line(w, tmp_path, capsys):
    rows = [json.dumps({"text": t, "label": y}) for t, y in labelled(20)]
    rows.insert(7, '{"text": "cut short", "label": ')
    train = write_lines(tmp_path / "train.jsonl", rows)
    run_fails(["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST], tmp_path, capsys,
              "train.jsonl", "line 8", "not a JSON object")


def test_continuous_labels_are_refused(w, tmp_path, capsys):
    rows = [(t, f"{0.37 * i:.2f}") for i, (t, _) in enumerate(labelled(30))]
    train = write_csv(tmp_path / "train.csv", rows)
    run_fails(["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST], tmp_path, capsys,
              "look continuous", "30 distinct numbers", "regression", "--numeric-classes")
    code, _, err = in_process(["finetune", "--from", w.lm, "--task", "classification", "--train", train,
                               "--numeric-classes", "--out", tmp_path / "said-so", "--json", *FAST], tmp_path, capsys)
    assert code == 0, err  # the user said so


def test_nan_labels_are_refused_with_the_row(w, tmp_path, capsys):
    rows = labelled(20)
    rows[4] = (rows[4][0], "NaN")
    train = write_csv(tmp_path / "train.csv", rows)
    run_fails(["finetune", "--from", w.lm, "--task", "classification", "--train", train, *FAST], tmp_path, capsys,
              "data row 5", "'NaN'", "missing value")


def test_csv_with_a_byte_order_mark_is_read(w, tmp_path, capsys):
    """Excel's 'CSV UTF-8' starts with a BOM: the first column is still 'text'."""
    train = write_csv(tmp_path / "train.csv", labelled(24))
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("\ufeff".encode() + w.good_txt.read_bytes())
    code, _, err = in_process(["finetune", "--from", w.lm, "--task", "classification", "--train", train,
                               "--out", tmp_path / "f", *FAST], tmp_path, capsys)
    assert code == 0, err
    from nlptl.data.corpora import load_corpus, resolve_corpus

    assert not load_corpus(resolve_corpus(str(corpus)))["text"][0].startswith("\ufeff")


def test_a_failed_run_leaves_no_metrics_behind(w, tmp_path, capsys, monkeypatch):
    """A stage that fails after it started logging (here: inside the training loop) leaves no
    OUT/metrics.csv: the README's "nothing half-written"."""
    import nlptl.train
    from nlptl.errors import NlptlError

    def fail(*args, **kwargs):
        raise NlptlError("the training loss became nan at step 1")

    monkeypatch.setattr(nlptl.train, "train", fail)
    out = tmp_path / "out"
    code, _, err = in_process(adapt(w, "--out", out, "--block-size", "32", *FAST), tmp_path, capsys)
    assert code == 1 and "loss became nan" in err
    assert not (out / "metrics.csv").exists()
    assert_nothing_written(out)


def test_predict_reads_a_pipe(w, tmp_path, capsys):
    """`--input <(cmd)`: a named pipe (or any non-directory that exists) is read like a file."""
    import os
    import threading

    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("a lovely film\nand a dull one\n")

    threading.Thread(target=feed, daemon=True).start()
    code, out, err = in_process(["predict", "--model", w.clf, "--input", fifo, "--json"], tmp_path, capsys)
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["a lovely film", "and a dull one"]
