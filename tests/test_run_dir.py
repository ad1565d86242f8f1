"""A run directory belongs to one run, and a resumed run is the run it continues.

- `--resume` refuses another config or other data (naming each change, old -> new), and records the
  options that may change (--max-steps...) in the history, at the step where they took effect;
- one run per --out: a second run fails at once naming the holder's pid; a dead run's lock is taken
  over; runs started in the same second without --out get different directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import adapt_cfg, hold_lock

from nlptl.errors import UsageError
from nlptl.stages import adapt


@pytest.fixture
def interrupted(checkpoints, corpus_file, tmp_path, monkeypatch):
    """An adapt run with a checkpoint at step 2 and no final model (it failed while writing)."""
    import nlptl.stages.lm

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(corpus_file.read_bytes())
    out = tmp_path / "run"
    kw = {"from_model": str(checkpoints["gpt2"]), "corpus": str(corpus), "out": str(out), "max_steps": 4,
          "save_every": 2, "log_every": 1}

    def fail(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(nlptl.stages.lm, "write_stage", fail)
        with pytest.raises(OSError):
            adapt.run(adapt_cfg(**kw))
    assert (out / "checkpoints" / "step-000002").is_dir() and not (out / "nlptl-run.json").exists()
    return out, corpus, kw


def test_resume_refuses_another_learning_rate(interrupted):
    out, _, kw = interrupted
    with pytest.raises(UsageError) as e:
        adapt.run(adapt_cfg(**{**kw, "lr": 2e-3, "resume": True}))
    assert "--lr 0.001 -> 0.002" in str(e.value) and "--overwrite" in str(e.value)


def test_resume_refuses_another_corpus_content(interrupted):
    out, corpus, kw = interrupted
    with corpus.open("a", encoding="utf-8") as f:
        f.write("one more line that changes what the run would train on .\n")
    with pytest.raises(UsageError, match=r"--corpus content [0-9a-f]{12} -> [0-9a-f]{12}"):
        adapt.run(adapt_cfg(**{**kw, "resume": True}))


def test_resume_may_extend_the_run_and_records_it(interrupted):
    out, _, kw = interrupted
    result = adapt.run(adapt_cfg(**{**kw, "max_steps": 6, "resume": True}))
    assert result["steps"] == 6
    history = json.loads((out / "nlptl-run.json").read_text())["history"]
    assert {"step": 2, "resumed_with": "--max-steps 4 -> 6"} in history
    assert result["config"]["max_steps"] == 6


def test_resume_accepts_the_same_files_named_another_way(interrupted, monkeypatch):
    """The corpus and the model named by relative paths first, absolute ones on resume: the same run."""
    out, corpus, kw = interrupted
    monkeypatch.chdir(corpus.parent)
    result = adapt.run(adapt_cfg(**{**kw, "corpus": corpus.name, "resume": True}))
    assert result["steps"] == 4


def test_resume_refuses_fewer_steps_than_it_has_done(interrupted):
    out, _, kw = interrupted
    with pytest.raises(UsageError, match=r"is at step 2, past the 1 steps this run would train; raise --max-steps"):
        adapt.run(adapt_cfg(**{**kw, "max_steps": 1, "resume": True}))


def test_a_second_run_on_the_same_out_fails_at_once(checkpoints, corpus_file, tmp_path):
    out = tmp_path / "shared"
    holder = hold_lock(out)
    try:
        with pytest.raises(UsageError, match=rf"--out {out} is in use by another nlptl run \(pid {holder.pid}\)"):
            adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out)))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead: its lock went with it, and the lock file it left is taken over.
    assert (tmp_path / ".shared.lock").exists()
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out)))
    assert result["steps"] == 4 and not (tmp_path / ".shared.lock").exists()  # released, and removed


def test_runs_started_in_the_same_second_get_their_own_directory(checkpoints, corpus_file, nlptl_home, monkeypatch):
    from datetime import datetime

    import nlptl.rundir

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 30, 12, 0, 0)

    monkeypatch.setattr(nlptl.rundir, "datetime", Frozen)
    first = nlptl.rundir.default_out("adapt")
    holder = hold_lock(first)  # a run that chose this name in this second and has not created it yet
    try:
        result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file)))
    finally:
        holder.kill()
        holder.wait()
    assert Path(result["output_dir"]).name == "adapt-20261130-120000-2"


def test_a_failed_run_releases_its_lock(interrupted):
    """The fixture's run failed after it had locked --out: the lock is gone with it (another run takes it)."""
    from nlptl.rundir import OutLock

    out, _, _ = interrupted
    assert not (out.parent / ".run.lock").exists()
    lock = OutLock(out)
    assert lock.acquire() is None
    lock.release()


def test_what_a_run_stopped_before_its_first_checkpoint_leaves_may_be_written_over(tmp_path):
    """A run stopped before its first checkpoint leaves metrics.csv alone; the next run may replace it,
    whatever metrics it had (a contrastive run logs eval_pair_loss at step 0), but not a stranger's CSV."""
    from nlptl.rundir import check_out
    from nlptl.tracking import COLUMNS

    out = tmp_path / "run"
    out.mkdir()
    for header in (",".join(COLUMNS), ",".join(COLUMNS) + ",eval_pair_loss"):
        (out / "metrics.csv").write_text(header + "\n0,,,,,,,,0.3\n")
        assert check_out(out, overwrite=False) is None
    (out / "metrics.csv").write_text("date,sales\n")
    with pytest.raises(UsageError, match="non-empty directory"):
        check_out(out, overwrite=False)


def test_weights_are_as_readable_as_the_other_files(interrupted, checkpoints, corpus_file, tmp_path):
    # safetensors >= 0.8 writes through a 0600 temporary file whatever the umask (safetensors issue
    # 782): a model trained by one user and served by another (a container) could not be read.
    def modes(root):
        return {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in root.rglob("*.safetensors")}

    out = tmp_path / "finished"
    adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(out)))
    readable = oct((out / "config.json").stat().st_mode & 0o777)
    assert modes(out) == {"model.safetensors": readable}
    step = interrupted[0] / "checkpoints" / "step-000002"
    assert modes(step) == {"model.safetensors": readable}


# --------------------------------------------------------------------------- --out named as `.` or by a link


def test_out_dot_overwrites_the_finished_run_it_is_run_from(adapted, checkpoints, corpus_file, tmp_path, monkeypatch):
    """`--out . --overwrite` inside a finished run: the new run replaces the old one, and nothing of
    its staging or lock is left inside (they lie next to the directory, never in it)."""
    run = tmp_path / "run"
    shutil.copytree(adapted["gpt2"][0], run)
    monkeypatch.chdir(run)
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=".", overwrite=True,
                                 max_steps=2))
    assert result["output_dir"] == str(run) and result["steps"] == 2
    assert json.loads((run / "nlptl-run.json").read_text())["metrics"]["steps"] == 2
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nlptl-home", "run"]
    # Written into the directory the user is in, not into a new one of the same name: a shell in `.`
    # (this process's working directory here) sees the new run, not a deleted directory.
    assert "nlptl-run.json" in os.listdir(".")


def test_out_dot_in_an_empty_directory_is_written(checkpoints, corpus_file, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=".", max_steps=2))
    assert result["output_dir"] == str(tmp_path / "empty")
    assert (tmp_path / "empty" / "nlptl-run.json").is_file() and "nlptl-run.json" in os.listdir(".")


def test_out_through_a_symlink_writes_the_directory_it_points_to(checkpoints, corpus_file, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    holder = hold_lock(real)  # a run on the directory itself excludes one on the link
    try:
        with pytest.raises(UsageError, match=r"is in use by another nlptl run"):
            adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(link)))
    finally:
        holder.kill()
        holder.wait()
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(link),
                                 max_steps=2))
    assert result["steps"] == 2 and (real / "nlptl-run.json").is_file()
    assert link.is_symlink() and link.resolve() == real


def test_the_default_from_skips_a_run_with_a_corrupt_record_and_says_so(nlptl_home, caplog):
    """--from left out: the latest completed run; one whose record is truncated is passed over with a
    warning, not in silence."""
    import logging

    from nlptl.rundir import default_from

    for name, record in (("adapt-old", '{"stage": "adapt", "created": "2026-01-01T00:00:00+00:00"}'),
                         ("adapt-new", '{"stage": "adapt", "crea')):
        (nlptl_home / name).mkdir()
        (nlptl_home / name / "nlptl-run.json").write_text(record)
    with caplog.at_level(logging.WARNING, logger="nlptl"):
        assert default_from("finetune") == str(nlptl_home / "adapt-old")
    assert f"skipped {nlptl_home / 'adapt-new'}: its nlptl-run.json is corrupt" in caplog.text


def test_the_record_quotes_the_command_line_the_cli_passed(checkpoints, corpus_file, tmp_path):
    """The CLI passes what the user typed to the stage's Run (no console state): the record quotes it; a
    stage called from Python records none."""
    from cli_helpers import call_main

    out = tmp_path / "typed"
    args = ["adapt", "--from", str(checkpoints["gpt2"]), "--corpus", str(corpus_file), "--out", str(out),
            "--max-steps", "2", "--quiet"]
    assert call_main(args, tmp_path) == 0
    assert json.loads((out / "nlptl-run.json").read_text())["command"] == "nlptl " + " ".join(args)
    result = adapt.run(adapt_cfg(from_model=str(checkpoints["gpt2"]), corpus=str(corpus_file), out=str(tmp_path / "py"),
                                 max_steps=2))
    assert json.loads((Path(result["output_dir"]) / "nlptl-run.json").read_text())["command"] is None
