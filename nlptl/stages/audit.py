"""Leakage audit: the texts a model is scored on, against everything in its lineage (nlptl/audit.py).

    nlptl audit runs/finetune-... --data test.csv       # the test file against every corpus and train file
    nlptl audit runs/finetune-...                        # the run's own --eval file against its sources
    nlptl audit runs/finetune-... --data test.csv --json # counts and examples as JSON

Sources: every pretrain and adapt corpus of the lineage (each corpus of a mixture), and every train and
probe file. Checked: the --data files, and each finetune's --eval file (against the sources before it
that are not itself). A hub corpus is read as a stream when the hub is reachable, else listed as not
checked. `evaluate` runs the same check on its --data (nlptl/audit.py, evaluate_check).
"""

from __future__ import annotations

import logging
import time

from nlptl.audit import Checked, compare, eval_files, lineage_sources, local_source, texts
from nlptl.config import AuditConfig
from nlptl.errors import NlptlError, UsageError

log = logging.getLogger("nlptl")


def run(cfg: AuditConfig) -> dict:
    from nlptl.models import inspect_model

    ref = inspect_model(cfg.model, "MODEL")
    if not ref.lineage:
        raise UsageError(f"MODEL {cfg.model}: has no nlptl lineage (nlptl-run.json) to audit; the audit compares "
                         "a model's training data with the data it is scored on")
    sources = lineage_sources(ref.lineage, (ref.run or {}).get("config") or {})
    checked = [(spec, "data", local_source(spec, cfg.text_column, "--data")) for spec in cfg.data]
    checked += [(s["spec"], "eval", s) for s in eval_files(ref.lineage)]
    if not checked:
        raise UsageError(f"MODEL {cfg.model}: nothing to check: pass --data FILE (the data you evaluate on); the "
                         "run has no --eval file")
    started = time.perf_counter()
    rows, skipped = [], []
    for spec, role, src in checked:
        index = Checked(name=spec, texts=list(texts(src)))
        for source in sources:
            if source.get("sha256") and source.get("sha256") == src.get("sha256"):
                continue  # the file itself (an eval file that is also a train file is flagged by finetune)
            try:
                rows.append({**compare(index, source, cfg.num_proc), "role": source["role"],
                             "stage": source["stage"], "checked_role": role})
            except NlptlError as e:
                skipped.append({"source": source["spec"], "why": str(e)})
    for row in rows:
        row.pop("flagged")
        if row["exact"] or row["near"]:
            log.warning("%s: %d of %d texts seen in %s (%s of %s): %d exact, %d near duplicates",
                        row["checked"], row["exact"] + row["near"], row["n_checked"], row["source"], row["role"],
                        row["stage"], row["exact"], row["near"])
    leaked = any(r["exact"] or r["near"] for r in rows)
    return {"model": cfg.model, "overlaps": rows, "not_checked": skipped, "leaked": leaked,
            "seconds": round(time.perf_counter() - started, 3)}
