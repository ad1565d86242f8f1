"""Configs (config.py): defaults < YAML file < flags < --set, coercion, validation messages."""

from __future__ import annotations

import dataclasses

import pytest

from nlptl.config import (
    STAGE_CONFIGS,
    AdaptConfig,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    flag_name,
    help_of,
    resolve,
    to_dict,
)
from nlptl.errors import UsageError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_precedence_defaults_file_flags_sets(tmp_path):
    path = write(tmp_path, "corpus: a.txt\nlr: 0.01\nbatch_size: 8\nepochs: 2\nseed: 5\n")
    cfg = resolve(AdaptConfig, config_file=path, flags={"batch_size": 16, "seed": 6, "block_size": None},
                  sets=["seed=7"])
    assert cfg.corpus == "a.txt"  # file
    assert cfg.lr == 0.01 and cfg.epochs == 2.0  # file over defaults
    assert cfg.batch_size == 16  # flag over file
    assert cfg.seed == 7  # --set over flag
    assert cfg.block_size == 128  # a flag given as None is "not given": the default stays
    assert cfg.warmup_ratio == AdaptConfig.__dataclass_fields__["warmup_ratio"].default


def test_stage_defaults_differ_where_the_recipe_does():
    assert PretrainConfig(corpus="x").lr == 5e-4
    assert AdaptConfig(corpus="x").warmup_ratio == 0.05
    assert FinetuneConfig().batch_size == 32 and FinetuneConfig().epochs == 3.0
    # --lr, not given, is chosen by the checkpoint in finetune and by the objective in adapt (nlptl/rates.py);
    # only there (tests/test_rates.py).
    assert FinetuneConfig().lr is None and resolve(FinetuneConfig, sets=["lr=null"]).lr is None
    assert AdaptConfig(corpus="x").lr is None
    with pytest.raises(UsageError, match="--lr expects a number"):
        PretrainConfig(corpus="x", lr=None)


@pytest.mark.parametrize("raw,key,value", [
    ("lr=1e-3", "lr", 1e-3),  # YAML 1.1 reads 1e-3 as a string: still a float here
    ("lr=2", "lr", 2.0),
    ("max_steps=10", "max_steps", 10),
    ("max-steps=10", "max_steps", 10),  # the flag's spelling
    ("max_steps=null", "max_steps", None),
    ("max_steps=None", "max_steps", None),
    ("epochs=0.5", "epochs", 0.5),
    ("overwrite=true", "overwrite", True),
    ("overwrite=no", "overwrite", False),
    ("corpus=123", "corpus", "123"),  # a string field keeps a numeric-looking value as text
    ("text_column=NA", "text_column", "NA"),
    ("eval_every=5", "eval_every", 5),
])
def test_set_values_are_coerced_to_the_field_type(raw, key, value):
    cfg = resolve(AdaptConfig, flags={"corpus": "c.txt"}, sets=[raw])
    got = getattr(cfg, key)
    assert got == value and type(got) is type(value)


def test_yaml_values_are_coerced(tmp_path):
    cfg = resolve(FinetuneConfig, config_file=write(tmp_path, "lr: 3e-5\nepochs: 1\nmax_length: 64\noverwrite: yes\n"))
    assert (cfg.lr, cfg.epochs, cfg.max_length, cfg.overwrite) == (3e-5, 1.0, 64, True)
    assert isinstance(cfg.epochs, float)


def test_list_field():
    assert resolve(PredictConfig, sets=["texts=[a, b]"]).texts == ["a", "b"]
    assert resolve(PredictConfig, sets=["texts=one"]).texts == ["one"]


@pytest.mark.parametrize("raw,message", [
    ("max_steps=1.5", "--max-steps: '1.5' is not a valid int"),
    ("batch_size=abc", "--batch-size: 'abc' is not a valid int"),
    ("overwrite=maybe", "--overwrite: 'maybe' is not a valid bool"),
    ("lr=fast", "--lr expects a number or auto (got 'fast')"),
    ("lr", "--set expects key=value"),
])
def test_bad_values_name_the_flag(raw, message):
    with pytest.raises(UsageError) as e:
        resolve(AdaptConfig, flags={"corpus": "c.txt"}, sets=[raw])
    assert message in str(e.value)


@pytest.mark.parametrize("where", ["set", "yaml"])
def test_unknown_key_suggests_the_closest(where, tmp_path):
    with pytest.raises(UsageError) as e:
        if where == "set":
            resolve(FinetuneConfig, sets=["batchsize=8"])
        else:
            resolve(FinetuneConfig, config_file=write(tmp_path, "lable_column: y\n"))
    msg = str(e.value)
    assert "unknown config key" in msg
    assert "(did you mean 'batch_size'?)" in msg if where == "set" else "(did you mean 'label_column'?)" in msg
    if where == "yaml":
        assert "c.yaml" in msg


def test_unknown_key_far_from_everything_has_no_suggestion():
    with pytest.raises(UsageError) as e:
        resolve(FinetuneConfig, sets=["zzzzqqq=1"])
    assert "did you mean" not in str(e.value)


def test_aliases_from_train_eval(tmp_path):
    path = write(tmp_path, "from: runs/adapted\ntrain: t.csv\neval: e.csv\n")
    cfg = resolve(FinetuneConfig, config_file=path)
    assert (cfg.from_model, cfg.train_file, cfg.eval_file) == ("runs/adapted", "t.csv", "e.csv")
    cfg = resolve(FinetuneConfig, config_file=path, sets=["from=other", "eval=e2.csv"])
    assert (cfg.from_model, cfg.eval_file) == ("other", "e2.csv")
    assert resolve(AdaptConfig, sets=["corpus=x", "train=t.csv"]).train_file == "t.csv"
    assert flag_name("from_model") == "--from" and flag_name("train_file") == "--train"
    assert flag_name("eval_file") == "--eval" and flag_name("block_size") == "--block-size"


@pytest.mark.parametrize("make,message", [
    (lambda: AdaptConfig(corpus="x", block_size=0), "--block-size must be positive (got 0)"),
    (lambda: AdaptConfig(corpus="x", batch_size=-1), "--batch-size must be positive"),
    (lambda: AdaptConfig(corpus="x", max_steps=0), "--max-steps must be a positive integer"),
    (lambda: AdaptConfig(corpus="x", validation_percentage=60), "--validation-percentage must be in (0, 50)"),
    (lambda: AdaptConfig(corpus="x", mlm_probability=1.0), "--mlm-probability must be in (0, 1)"),
    (lambda: AdaptConfig(corpus="x", objective="mlmm"), "unknown --objective 'mlmm' (did you mean 'mlm'?)"),
    (lambda: AdaptConfig(corpus="x", warmup_ratio=1.0), "--warmup-ratio must be in [0, 1)"),
    (lambda: AdaptConfig(corpus="x", precision="fp64"), "unknown --precision 'fp64'"),
    (lambda: AdaptConfig(), "adapt needs --corpus"),
    (lambda: PretrainConfig(), "pretrain needs --corpus CORPUS to train from scratch, or --from MODEL"),
    (lambda: PretrainConfig(corpus="x", arch="gtp"), "unknown --arch 'gtp' (did you mean 'gpt'?)"),
    (lambda: PretrainConfig(corpus="x", size="huge"), "unknown --size 'huge'"),
    (lambda: PretrainConfig(corpus="x", vocab_size=10), "--vocab-size must be at least 64"),
    (lambda: FinetuneConfig(eval_fraction=1.5), "--eval-fraction must be in (0, 1)"),
    (lambda: FinetuneConfig(max_length=1), "--max-length must be at least 2"),
    (lambda: FinetuneConfig(eval_every=0), "--eval-every must be a positive integer"),
    (lambda: EvaluateConfig(), "evaluate needs --data FILE"),
    (lambda: PredictConfig(batch_size=0), "--batch-size must be positive"),
])
def test_validation_messages_name_the_flag(make, message):
    with pytest.raises(UsageError) as e:
        make()
    assert message in str(e.value)


def test_validation_runs_on_resolved_values(tmp_path):
    """A bad value from the file is reported like a bad flag, and a later layer can fix it."""
    path = write(tmp_path, "corpus: x\nblock_size: -4\n")
    with pytest.raises(UsageError, match="--block-size must be positive"):
        resolve(AdaptConfig, config_file=path)
    assert resolve(AdaptConfig, config_file=path, sets=["block_size=64"]).block_size == 64


@pytest.mark.parametrize("text,message", [
    ("a: [1, 2\n", "malformed YAML (line"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve(FinetuneConfig, config_file=write(tmp_path, text))
    with pytest.raises(UsageError, match="no such file"):
        resolve(FinetuneConfig, config_file=str(tmp_path / "missing.yaml"))


def test_empty_config_file_means_defaults(tmp_path):
    assert resolve(FinetuneConfig, config_file=write(tmp_path, "# nothing\n")) == FinetuneConfig()


def test_every_field_has_help_and_round_trips(tmp_path):
    """Each field documents itself (the CLI's help), and to_dict -> YAML -> resolve gives the same config."""
    import yaml

    for name, cls in STAGE_CONFIGS.items():
        for f in dataclasses.fields(cls):
            assert help_of(cls, f.name), f"{name}.{f.name} has no help"
    cfg = FinetuneConfig(from_model="m", train_file="t.csv", lr=3e-5, max_steps=7, overwrite=True)
    path = write(tmp_path, yaml.safe_dump(to_dict(cfg)))
    assert resolve(FinetuneConfig, config_file=path) == cfg


@pytest.mark.parametrize("command", ["pretrain", "adapt", "finetune", "evaluate"])
def test_every_stage_command_honours_the_whole_precedence_chain(command, tmp_path, monkeypatch):
    """Through the real command line: defaults < preset (pretrain's --size sets the vocabulary) < --config
    FILE < flags < --set. Each layer sets the key the layer before it set, so each must win."""
    import importlib

    from cli_helpers import call_main

    from nlptl.models import DEFAULT_VOCAB

    seen = {}
    module = importlib.import_module(f"nlptl.stages.{command}")

    def capture(cfg, command=None):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(module, "run", capture)
    required = {"pretrain": ["--corpus", "c.txt"], "adapt": ["--corpus", "c.txt"], "finetune": [],
                "evaluate": ["--data", "d.csv"]}[command]
    # batch_size: file; seed: file < flag; max_length/block_size/lr: file < flag < --set.
    key = "max_length" if command in ("finetune", "evaluate") else "block_size"
    flag = "--" + key.replace("_", "-")
    path = write(tmp_path, f"batch_size: 8\nseed: 5\n{key}: 40\n"
                 + ("compare: [m2]\n" if command == "finetune" else ""))
    args = [command, *required, "--config", path, "--seed", "6", flag, "48", "--set", f"{key}=56"]
    assert call_main(args, tmp_path) == 0
    cfg = seen["cfg"]
    default = STAGE_CONFIGS[command].__dataclass_fields__["batch_size"].default
    assert cfg.batch_size == 8 != default  # file over default
    assert cfg.seed == 6  # flag over file
    assert getattr(cfg, key) == 56  # --set over flag over file
    if command == "finetune":
        assert cfg.compare == ["m2"]  # a list flag not given does not blank the file's list

    if command == "pretrain":
        def vocab(*extra: str) -> int:
            seen.clear()
            assert call_main(["pretrain", "--corpus", "c.txt", "--size", "mini", *extra], tmp_path) == 0
            return seen["cfg"].vocab_size or DEFAULT_VOCAB[seen["cfg"].size]

        assert vocab() == DEFAULT_VOCAB["mini"]  # the preset over the default (tiny's)
        assert vocab("--config", write(tmp_path, "vocab_size: 500\n")) == 500  # file over preset
        assert vocab("--config", write(tmp_path, "vocab_size: 500\n"), "--vocab-size", "600") == 600  # flag over file
        assert vocab("--vocab-size", "600", "--set", "vocab_size=700") == 700  # --set over flag


def test_every_key_a_message_names_can_be_set_as_named():
    """Messages name keys with flag_name(): a flag that the stage's command has, or `--set key`."""
    import dataclasses

    from nlptl.config import COMMAND_FLAGS, POSITIONAL, STAGE_CONFIGS, flag_name, flags

    for stage in COMMAND_FLAGS:
        names = {n for f in flags(stage).values() for n in f.names}
        for f in dataclasses.fields(STAGE_CONFIGS[stage]):
            if f.name in POSITIONAL.get(stage, {}):  # `nlptl serve MODEL`: its messages say MODEL
                continue
            named = flag_name(f.name)
            assert named == f"--set {f.name}" or named in names, (stage, f.name, named)
    assert flag_name("cut_frac") == "--cut-frac" and flag_name("max_eval_blocks") == "--max-eval-blocks"


def test_a_registry_with_a_name_twice_is_refused(nlptl_home):
    """registry.yaml naming a corpus twice: PyYAML would keep the last one without a word."""
    from nlptl.data import registry

    (nlptl_home / "registry.yaml").write_text("corpora:\n  reviews: a.txt\n  reviews: b.txt\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"registry.yaml: 'reviews' appears twice \(lines 2 and 3\)"):
        registry.corpora()
