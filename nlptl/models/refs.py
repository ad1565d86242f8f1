"""What a `--from` / `--model` is: a local checkpoint directory or a hub id, checked from config.json alone
(no torch), so that a wrong reference fails before anything heavy loads; and a model's positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nlptl.errors import NlptlError, UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
# Families whose position ids start after the padding index (max length = positions - 2).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod",
                    "roberta-prelayernorm"}
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


@dataclass
class ModelRef:
    spec: str  # as typed
    path: str  # local dir or hub id
    local: bool
    config: dict | None  # config.json when local
    run: dict | None  # nlptl-run.json when it is an nlptl run dir

    @property
    def lineage(self) -> dict:
        """What the nlptl run that made this checkpoint records of how it was made ({} for any other)."""
        return (self.run or {}).get("lineage") or {}

    @property
    def is_classifier(self) -> bool:
        c = self.config or {}
        archs = c.get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in archs) or (
            self.run is not None and self.run.get("stage") == "finetune")


def inspect_model(spec: str, flag: str = "--from") -> ModelRef:
    """Check a model reference without importing torch: a local checkpoint dir, or a hub id."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{flag} {spec}: is a file, not a model directory (expected a directory with config.json)")
        cfg_path = p / "config.json"
        adapter = next((a for a in (p / "adapter", p) if (a / "adapter_config.json").is_file()), None)
        if not cfg_path.is_file() and adapter is not None:
            raise UsageError(
                f"{flag} {spec}: is a LoRA adapter without a merged model; "
                f"merge it first: nlptl merge {spec} --out DIR "
                f"(or load it with peft: PeftModel.from_pretrained(base_model, '{adapter}'))"
            )
        if not cfg_path.is_file():
            if any((p / f).is_file() for f in TOKENIZER_FILES):
                raise UsageError(f"{flag} {spec}: holds a tokenizer but no model (no config.json); "
                                 "pass a model checkpoint directory")
            if (p / "checkpoints").is_dir():
                raise UsageError(f"{flag} {spec}: is an unfinished run (no final model); "
                                 "resume it or pass a finished run")
            raise UsageError(f"{flag} {spec}: not a model directory (no config.json); "
                             "pass a run directory, a checkpoint or a hub id")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{flag} {spec}: config.json is not valid JSON") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise UsageError(f"{flag} {spec}: config.json has no model_type; not a Hugging Face model checkpoint")
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise UsageError(f"{flag} {spec}: holds a config but no weights (*.safetensors or *.bin)")
        from nlptl.rundir import read_record, record_problem

        if problem := record_problem(p):  # not a plain checkpoint: its lineage would be lost without a word
            raise UsageError(f"{flag} {spec}: its {problem}; restore it from a copy of the run, or delete it to use "
                             "the directory as a plain checkpoint (without its lineage)")
        return ModelRef(spec, str(p), True, config, read_record(p))
    # Not on disk: a hub id has the form name or org/name.
    if spec.count("/") > 1 or spec.startswith((".", "~")) or "\\" in spec or not spec.strip():
        raise UsageError(f"{flag} {spec}: no such directory")
    if "/" in spec and p.parent.is_dir():
        # 'runs/genral' where ./runs exists: a typo in a local path, not a hub id.
        from nlptl.errors import did_you_mean

        siblings = [c.name for c in p.parent.iterdir() if c.is_dir()]
        raise UsageError(f"{flag} {spec}: no such directory{did_you_mean(p.name, siblings)}")
    from nlptl import hub

    hub.require(spec, "model", f"{flag} {spec}", "pass a local checkpoint directory")
    return ModelRef(spec, spec, False, None, None)


def hub_guard(ref: ModelRef) -> None:
    """For a hub id: fail fast offline, unless it is already in the local cache."""
    if ref.local:
        return
    from nlptl import hub

    hub.prepare(ref.path)


def load_error(ref: ModelRef, e: Exception, flag: str = "--from") -> NlptlError:
    from nlptl import hub

    if not ref.local and not hub.reachable():
        return NlptlError(
            f"{flag} {ref.spec}: the Hugging Face Hub is unreachable (offline) "
            "and the model is not in the local cache; pass a local checkpoint directory"
        )
    if not ref.local:
        return NlptlError(f"{flag} {ref.spec}: not a local directory and not loadable from the hub "
                          f"({str(e).splitlines()[0][:160]})")
    return NlptlError(f"{flag} {ref.spec}: could not load the model: {str(e).splitlines()[0][:200]}")


def positions_of(config) -> int | None:
    """The longest sequence the model takes, from its config: a transformers config or the dict of a
    config.json (light: no transformers import). None when the config does not say."""
    if isinstance(config, dict):
        get = config.get
    else:
        def get(name):
            return getattr(config, name, None)
    for name in POSITION_KEYS:
        value = get(name)
        if isinstance(value, int) and value > 0:
            # nlptl's head has a model type of its own; its backbone's says where positions start
            family = get("backbone_model_type") or get("model_type")
            return value - 2 if family in OFFSET_POSITIONS else value
    return None
