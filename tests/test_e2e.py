"""The whole chain through the real command line.

Once per model family, with --json:

    nlptl pretrain --arch {gpt,bert} --size tiny --corpus general.txt --out P
    nlptl adapt    --from P --corpus reviews.txt --out A
    nlptl finetune --from A --task sentiment --train train.csv --eval eval.csv --out F
    nlptl evaluate --model F --data test.csv
    nlptl predict  --model F TEXT TEXT --input -

and once with the defaults only (hub names registered as local copies in $NLPTL_HOME/registry.yaml;
each --from is the latest completed run of the stage before, outputs go under $NLPTL_HOME):

    nlptl pretrain --arch gpt --size tiny --corpus wikitext-2
    nlptl adapt --corpus reviews
    nlptl finetune --task sentiment

A command costs ~10 s, nearly all of it imports (single-threaded), so the three chains run side by
side in background threads, started when the first test of this module needs them; each test checks
its own chain.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import Result, labelled, run_cli, tiny_data, write_csv, write_registry

ARCHS = ("gpt", "bert")
STAGES = ("pretrain", "adapt", "finetune")
FAST = ["--max-steps", "3", "--batch-size", "8", "--precision", "fp32"]
TEXTS = ["What a lovely, well made film.", "Dull, broken and far too long."]
STDIN = "Arrived late and smelled odd.\n\nWorth every penny.\n"

TRAIN_KEYS = {"steps", "n_train", "train_tokens", "train_seconds", "output_dir", "config", "lineage"}
LM_KEYS = {"perplexity", "perplexity_before", "loss"}
CLS_KEYS = {"accuracy", "f1_macro", "loss", "n_eval"}


def explicit_chain(arch: str, home: Path, data: dict[str, Path]) -> dict[str, Result]:
    out = {stage: home / f"{stage}-{arch}" for stage in STAGES}
    commands = {
        "pretrain": [
            "pretrain",
            "--arch",
            arch,
            "--size",
            "tiny",
            "--corpus",
            data["general"],
            "--vocab-size",
            "600",
            "--block-size",
            "64",
            "--out",
            out["pretrain"],
            *FAST,
            "--json",
        ],
        "adapt": [
            "adapt",
            "--from",
            out["pretrain"],
            "--corpus",
            data["reviews"],
            "--block-size",
            "64",
            "--out",
            out["adapt"],
            *FAST,
            "--json",
        ],
        "finetune": [
            "finetune",
            "--from",
            out["adapt"],
            "--task",
            "sentiment",
            "--train",
            data["train"],
            "--eval",
            data["eval"],
            "--max-length",
            "48",
            "--out",
            out["finetune"],
            *FAST,
            "--json",
        ],
        "evaluate": ["evaluate", "--model", out["finetune"], "--data", data["test"], "--json"],
        "predict": ["predict", "--model", out["finetune"], *TEXTS, "--input", "-", "--quiet", "--json"],
    }
    results = {}
    for stage, args in commands.items():
        results[stage] = run_cli(args, home, input=STDIN if stage == "predict" else None)
        if results[stage].code != 0:
            break
    return results


def default_chain(home: Path, data: dict[str, Path]) -> dict[str, Result]:
    # Default settings (block 128, batch 16/32, 1/3 epochs, auto precision): the tiny data keeps it quick.
    train = write_csv(data["train"].with_name("train64.csv"), labelled(64))
    write_registry(
        home,
        {"wikitext-2": data["general"], "reviews": data["reviews"]},
        {"sentiment": {"train": train, "eval": data["eval"]}},
    )
    commands = {
        "pretrain": ["pretrain", "--arch", "gpt", "--size", "tiny", "--corpus", "wikitext-2"],
        "adapt": ["adapt", "--corpus", "reviews"],
        "finetune": ["finetune", "--task", "sentiment"],
    }
    results = {}
    for stage, args in commands.items():
        results[stage] = run_cli(args, home)
        if results[stage].code != 0:
            break
    return results


@pytest.fixture(scope="module")
def chains(request, tmp_path_factory):
    """name -> (home, data, future of {stage: Result}) for the chains this session's tests need."""
    root = tmp_path_factory.mktemp("e2e")
    data = tiny_data(root / "data")
    wanted = set()
    for item in request.session.items:
        if item.module is request.module:
            wanted.add(item.callspec.params["arch"] if hasattr(item, "callspec") else "default")
    pool = ThreadPoolExecutor(max_workers=3)
    out: dict[str, tuple[Path, dict, Future]] = {}
    for name in [n for n in (*ARCHS, "default") if n in wanted]:
        home = root / name
        home.mkdir()
        job = (
            (lambda h=home: default_chain(h, data))
            if name == "default"
            else (lambda h=home, a=name: explicit_chain(a, h, data))
        )
        out[name] = (home, data, pool.submit(job))
    yield out
    pool.shutdown(wait=True, cancel_futures=True)


def finished(results: dict[str, Result], stage: str) -> Result:
    assert stage in results, f"an earlier stage failed: {list(results)}"
    res = results[stage]
    assert res.code == 0, f"nlptl {stage} failed (exit {res.code}):\n{res.stderr[-4000:]}"
    assert "Traceback" not in res.stderr
    return res


def check_flat(result: dict) -> None:
    """Metrics flat at the top level; only `config` and `lineage` nest, and a classifier's results per class
    (`per_class`, `confusion_matrix`: a list and a matrix by nature)."""
    nested = {k for k, v in result.items() if isinstance(v, dict | list)}
    assert nested - {"per_class", "confusion_matrix", "calibration", "leakage"} == {"config", "lineage"}, nested
    assert isinstance(result["config"], dict) and isinstance(result["lineage"], dict)


@pytest.mark.parametrize("arch", ARCHS)
def test_chain(chains, arch):
    home, data, future = chains[arch]
    results = future.result(timeout=900)
    timing = ", ".join(f"{stage} {r.seconds:.0f}s" for stage, r in results.items())
    print(f"{arch} chain: {timing}")
    res = {stage: finished(results, stage) for stage in (*STAGES, "evaluate")}
    pre, ada, fin, ev = (res[s].json() for s in (*STAGES, "evaluate"))  # exactly one line, one object
    for stage in STAGES:  # logs go to stderr, never into the JSON on stdout
        assert f"{stage} step 3/3" in res[stage].stderr, res[stage].stderr[-2000:]
    for result in (pre, ada, fin, ev):
        check_flat(result)

    assert LM_KEYS | TRAIN_KEYS <= set(pre), sorted(pre)
    assert pre["steps"] == 3 and pre["n_train"] > 0 and pre["train_tokens"] > 0 and pre["train_seconds"] > 0
    assert pre["perplexity"] > 1 and pre["perplexity_before"] > 1
    assert pre["output_dir"] == str(home / f"pretrain-{arch}")
    assert pre["config"]["arch"] == arch and pre["config"]["max_steps"] == 3
    assert pre["lineage"]["stage"] == "pretrain"
    assert pre["lineage"]["objective"] == ("clm" if arch == "gpt" else "mlm")

    assert LM_KEYS | TRAIN_KEYS <= set(ada), sorted(ada)
    assert ada["config"]["from_model"] == pre["output_dir"]  # each stage's directory is the next one's --from
    assert ada["output_dir"] == str(home / f"adapt-{arch}")
    assert ada["lineage"]["base_model"] == str(Path(pre["output_dir"]).resolve())
    assert ada["lineage"]["parent"]["stage"] == "pretrain"

    assert CLS_KEYS | TRAIN_KEYS <= set(fin), sorted(fin)
    assert 0 <= fin["accuracy"] <= 1 and 0 <= fin["f1_macro"] <= 1 and fin["n_eval"] == 40
    assert fin["config"]["from_model"] == ada["output_dir"]
    assert fin["output_dir"] == str(home / f"finetune-{arch}")
    lineage = fin["lineage"]
    assert lineage["stage"] == "finetune" and lineage["base_model"] == str(Path(ada["output_dir"]).resolve())
    assert lineage["parent"]["stage"] == "adapt"
    assert lineage["parent"]["parent"]["stage"] == "pretrain"
    assert lineage["labels"] == ["negative", "positive"]

    assert CLS_KEYS <= set(ev), sorted(ev)
    assert ev["n_eval"] == 40 and 0 <= ev["accuracy"] <= 1 and 0 <= ev["f1_macro"] <= 1
    assert ev["config"]["model"] == fin["output_dir"]
    assert ev["lineage"]["parent"]["parent"]["stage"] == "pretrain"

    rows = finished(results, "predict").jsonl()  # JSON Lines: one object per text, in input order
    # A blank input line keeps its place (result N is line N) and says it was not classified.
    assert [r["text"] for r in rows] == TEXTS + ["Arrived late and smelled odd.", "", "Worth every penny."]
    blank = rows.pop(3)
    assert "label" not in blank and blank["error"].startswith("blank text")
    for r in rows:
        assert r["label"] in ("negative", "positive")
        assert set(r["scores"]) == {"negative", "positive"}
        assert abs(sum(r["scores"].values()) - 1) < 1e-4 and r["score"] == max(r["scores"].values())

    # Each stage directory: a loadable checkpoint and nlptl's record of how it was made; no leftovers.
    for stage, result in (("pretrain", pre), ("adapt", ada), ("finetune", fin)):
        path = Path(result["output_dir"])
        assert json.loads((path / "nlptl-run.json").read_text())["stage"] == stage
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == [
        f"{s}-{arch}" for s in ("adapt", "finetune", "pretrain")
    ]
    assert not [p.name for p in home.iterdir() if p.name.endswith(".partial")]


def test_default_chaining(chains):
    """pretrain -> adapt --corpus reviews -> finetune --task sentiment, with no other flags."""
    home, data, future = chains["default"]
    results = future.result(timeout=900)
    print("default chain: " + ", ".join(f"{stage} {r.seconds:.0f}s" for stage, r in results.items()))
    for stage in STAGES:
        res = finished(results, stage)
        assert res.stdout == ""  # without --json, results are logged on stderr
        assert f"{stage} results" in res.stderr

    runs = {p.name.split("-")[0]: p for p in home.iterdir() if (p / "nlptl-run.json").is_file()}
    assert set(runs) == set(STAGES), sorted(p.name for p in home.iterdir())
    rec = {k: json.loads((p / "nlptl-run.json").read_text()) for k, p in runs.items()}
    assert rec["pretrain"]["lineage"]["corpus"]["name"] == "wikitext-2"
    assert rec["pretrain"]["lineage"]["corpus"]["files"] == [str(data["general"])]
    assert rec["adapt"]["config"]["from_model"] is None  # not given: the latest pretrain run
    assert rec["adapt"]["lineage"]["base_model"] == str(runs["pretrain"].resolve())
    assert rec["adapt"]["lineage"]["corpus"]["files"] == [str(data["reviews"])]
    assert rec["finetune"]["config"]["from_model"] is None  # not given: the latest adapt run
    assert rec["finetune"]["lineage"]["base_model"] == str(runs["adapt"].resolve())
    assert rec["finetune"]["lineage"]["labels"] == ["negative", "positive"]
    assert rec["finetune"]["lineage"]["parent"]["stage"] == "adapt"
    assert rec["finetune"]["lineage"]["parent"]["parent"]["stage"] == "pretrain"
    assert 0 <= rec["finetune"]["metrics"]["accuracy"] <= 1
    for p in runs.values():
        assert (
            (p / "config.json").is_file()
            and (p / "model.safetensors").is_file()
            and (p / "config.yaml").is_file()
        )
