"""Merge the LoRA adapter of a run trained with --lora (and no --merge) into one plain checkpoint.

    nlptl merge runs/finetune-... --out runs/finetune-merged
    nlptl serve runs/finetune-merged        # or export, predict, evaluate, finetune --from ...

The run's adapter (OUT/adapter/) goes back onto the model it was trained from (the adapter's
base_model_name_or_path): for a finetune run the classifier is rebuilt with the run's labels and
pooling and the adapter's trained head (peft's modules_to_save); then peft's merge_and_unload. --out
is a copy of the run (record, config, card, the adapter) with the merged model beside it, as
`--lora --merge` would have written it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from nlptl.config import MergeConfig
from nlptl.errors import NlptlError, UsageError
from nlptl.rundir import RUN_FILE, Product, StageWriter, read_record
from nlptl.stages.common import open_product

log = logging.getLogger("nlptl")


def is_merged_run(path: Path) -> bool:
    """A directory `nlptl merge` wrote (its record says so): what a merge may replace with --overwrite."""
    record = read_record(path)
    return record is not None and bool((record.get("lora") or {}).get("merged_by"))


MERGED = Product("MODEL", "the merged run", "a merged run", is_merged_run)


def run(cfg: MergeConfig) -> dict:
    from nlptl.models import require_peft

    src = Path(cfg.model)
    record = check_source(src)
    with open_product("merge", cfg.out, cfg.overwrite, src, MERGED) as opened:
        require_peft()
        return merge(src, record, opened.out)


def merge(src: Path, record: dict, out: Path) -> dict:
    """The run `src` with its adapter merged in, written to `out` (a copy of the run beside the merged model)."""
    from nlptl import runtime

    runtime.quiet_libraries()
    adapter = json.loads((src / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    base_path = adapter.get("base_model_name_or_path") or record["lineage"].get("base_model")
    merged, tokenizer = merged_model(src, record, base_path)
    with StageWriter(out) as w:
        stage = w.path
        shutil.copytree(src, stage, ignore=shutil.ignore_patterns(".*", "checkpoints"), dirs_exist_ok=True)
        merged.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        from nlptl import card, models

        models.save_head_code(merged, stage)
        record["lora"] = {**record.get("lora", {}), "merged": True, "merged_by": "nlptl merge", "merged_from": str(src)}
        (stage / RUN_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        card.write(stage, record, out)
        w.finish()
    log.info("merged the adapter of %s into %s (base %s)", src, out, base_path)
    return {"output_dir": str(out), "base_model": base_path, "stage": record["stage"]}


def merged_model(src: Path, record: dict, base_path: str):
    """The run's model with its adapter merged in, and its tokenizer."""
    from peft import PeftModel

    from nlptl import models

    base_ref = models.inspect_model(base_path, "the adapter's base model")
    run_ref = models.ModelRef(str(src), str(src), True, None, None)  # the tokenizer is saved with the adapter
    config, tokenizer = models.load_config_and_tokenizer(base_ref, run_ref)
    lineage = record["lineage"]
    if record["stage"] == "finetune":
        from nlptl.data.task_data import shape_from_lineage

        # The task shape (multi-label, regression, pairs, windows) lives in the classifier's config.
        for key, value in shape_from_lineage(lineage).items():
            setattr(config, key, value)
        base = models.load_classifier(base_ref, config, lineage["labels"], tokenizer, lineage.get("pooling") or "auto")
    else:
        base, _, _ = models.load_lm(base_ref, config, lineage.get("objective") or models.default_objective(config))
    try:
        peft_model = PeftModel.from_pretrained(base, src / "adapter")
    except Exception as e:  # noqa: BLE001 - one line
        raise NlptlError(f"MODEL {src}: the adapter does not fit its base model {base_path}: "
                         f"{str(e).splitlines()[0][:200]}") from e
    return peft_model.merge_and_unload().eval(), tokenizer


def check_source(src: Path) -> dict:
    if not src.is_dir():
        raise UsageError(f"MODEL {src}: no such directory")
    record = read_record(src)
    if not (src / "adapter" / "adapter_config.json").is_file() or record is None:
        raise UsageError(f"MODEL {src}: not a run trained with --lora (no adapter/ and {RUN_FILE}); nothing to merge")
    if (record.get("lora") or {}).get("merged") or (src / "config.json").is_file():
        raise UsageError(f"MODEL {src}: its adapter is merged already (trained with --merge); use the run as it is")
    return record
