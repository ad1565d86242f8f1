"""Leakage audit: the texts a model is scored on, against everything in its lineage (nlptl/audit.py).

    nlptl audit runs/finetune-... --data test.csv       # the test file against every corpus and train file
    nlptl audit runs/finetune-...                        # the run's own --eval file against its sources
    nlptl audit runs/finetune-... --data test.csv --json # counts and examples as JSON

Sources: every pretrain and adapt corpus of the lineage (each corpus of a mixture), and every train and
probe file. Checked: the --data files, and each finetune's --eval file (against the sources before it
that are not itself). A hub corpus is read as a stream when the hub is reachable, else listed as not
checked. `evaluate` runs the same check on its --data (evaluate_check below).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from nlptl.config import AuditConfig
from nlptl.errors import NlptlError, UsageError

log = logging.getLogger("nlptl")

ROLES = ("corpus", "train", "probe")  # what a lineage node trained on (or selected with)
# evaluate's automatic check reads sources up to this size (bytes), on one process; beyond it, it says
# to run `nlptl audit` (docs/performance.md, "Leakage audit", has the speed).
AUTO_LIMIT = 50 * 1024 * 1024
PROGRESS_SECONDS = 10


def run(cfg: AuditConfig) -> dict:
    from nlptl.models import inspect_model

    ref = inspect_model(cfg.model, "MODEL")
    if not ref.lineage:
        raise UsageError(f"MODEL {cfg.model}: has no nlptl lineage (nlptl-run.json) to audit; the audit compares "
                         "a model's training data with the data it is scored on")
    sources = lineage_sources(ref.lineage, (ref.run or {}).get("config") or {})
    checked = [(spec, "data", _local(spec, cfg.text_column, "--data")) for spec in cfg.data]
    checked += [(s["spec"], "eval", s) for s in eval_files(ref.lineage)]
    if not checked:
        raise UsageError(f"MODEL {cfg.model}: nothing to check: pass --data FILE (the data you evaluate on); the "
                         "run has no --eval file")
    started = time.perf_counter()
    rows, skipped = [], []
    for spec, role, src in checked:
        texts = list(_texts(src))
        from nlptl.audit import Checked

        index = Checked(name=spec, texts=texts)
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
    return {"model": cfg.model, "overlaps": rows, "not_checked": skipped, "leaked": any(r["exact"] or r["near"] for r in rows),
            "seconds": round(time.perf_counter() - started, 3)}


def compare(index, source: dict, num_proc: int | None) -> dict:
    """One source read as a stream against the indexed texts; a progress line every PROGRESS_SECONDS."""
    from nlptl import audit

    started = last = time.perf_counter()
    done = 0

    def seen(n: int) -> None:
        nonlocal done, last
        done += n
        if time.perf_counter() - last >= PROGRESS_SECONDS:
            last = time.perf_counter()
            log.info("audit: %d documents of %s read (%.0f/s)", done, source["spec"], done / (last - started))

    merged = audit.scan(index, _batches(source), num_proc or _cores(), progress=seen)
    flagged = {i for i, (share, exact, _) in merged.items() if exact or share >= audit.NEAR}
    return {**audit.summary(index, source["spec"], merged), "documents": done, "flagged": flagged}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def lineage_sources(lineage: dict, config: dict) -> list[dict]:
    """Every corpus, train and probe file of the lineage, oldest stage first, each once (by content)."""
    out, seen = [], set()
    node, chain = lineage, []
    while isinstance(node, dict):
        chain.append(node)
        node = node.get("parent")
    for depth, node in enumerate(reversed(chain)):
        top = depth == len(chain) - 1
        records = list(node.get("mixture") or ([node["corpus"]] if isinstance(node.get("corpus"), dict) else []))
        records += [node[r] for r in ("train", "probe") if isinstance(node.get(r), dict)]
        for rec in (r for r in records if r.get("spec")):
            role = "corpus" if rec in (node.get("mixture") or []) or rec is node.get("corpus") else \
                ("train" if rec is node.get("train") else "probe")
            key = rec.get("sha256") or rec.get("spec")
            if key in seen:
                continue
            seen.add(key)
            column = rec.get("text_column") or (config.get("text_column") if top and role != "corpus" else None) or "text"
            out.append({**rec, "role": role, "stage": node.get("stage"), "text_column": column})
    return out


def eval_files(lineage: dict) -> list[dict]:
    node, out = lineage, []
    while isinstance(node, dict):
        if isinstance(node.get("eval"), dict) and node["eval"].get("files"):  # a file, not a held-out slice
            out.append({**node["eval"], "text_column": "text"})
        node = node.get("parent")
    return out


def _local(spec: str, text_column: str, flag: str) -> dict:
    from nlptl.data.corpora import resolve_corpus

    if not Path(spec).exists():
        raise UsageError(f"{flag} {spec}: no such file")
    src = resolve_corpus(spec, text_column.split(",")[0])
    return {**src.record(), "text_column": text_column}


def _source(rec: dict):
    """A lineage record as a CorpusSource the corpus reader takes."""
    from nlptl.data.corpora import CorpusSource

    fields = {k: rec[k] for k in ("spec", "name", "files", "format", "hub", "hub_config", "sha256") if rec.get(k)}
    if rec.get("hub_splits"):
        fields["hub_splits"] = tuple(rec["hub_splits"])
    return CorpusSource(**fields, text_column=rec.get("text_column") or "text")


def _batches(rec: dict):
    """The documents of a source, in batches; a pair task's two text columns joined by a space."""
    from nlptl.audit import BATCH
    from nlptl.data.corpora import stream_corpus

    columns = (rec.get("text_column") or "text").split(",")
    src = _source({**rec, "text_column": columns[0]})
    if not src.hub:
        missing = [f for f in src.files if not Path(f).is_file()]
        if missing:
            raise NlptlError(f"{missing[0]} is gone (recorded by the run); not checked")
    if len(columns) == 1:
        ds = stream_corpus(src)
        for batch in ds.iter(batch_size=BATCH):
            yield batch["text"]
        return
    ds = _read_table(src)
    for start in range(0, len(ds), BATCH):
        part = ds[start:start + BATCH]
        yield [" ".join(str(part[c][i]) for c in columns) for i in range(len(part[columns[0]]))]


def _read_table(src):
    from nlptl.data.corpora import read_files

    return read_files(src.files, src.format, src.sha256)


def _texts(rec: dict):
    for batch in _batches(rec):
        yield from batch


def evaluate_check(ref, data: str, text_column: str) -> dict | None:
    """evaluate's automatic check: its --data against the model's lineage, with a warning (counts, where,
    an example) when texts were seen in adaptation or training. None for a model without a lineage."""
    from nlptl.audit import Checked

    if not ref.lineage:
        return None
    sources = lineage_sources(ref.lineage, (ref.run or {}).get("config") or {})
    local = [s for s in sources if not s.get("hub")]
    size = sum(Path(f).stat().st_size for s in local for f in s.get("files") or [] if Path(f).is_file())
    if size > AUTO_LIMIT or len(local) < len(sources):
        why = (f"the lineage's sources hold {size / 2**20:.0f} MB" if size > AUTO_LIMIT
               else "a hub corpus is in the lineage")
        log.info("leakage check not run: %s; run `nlptl audit %s --data %s`", why, ref.spec, data)
        return {"checked": False, "why": why}
    checked = _local(data, text_column, "--data")
    index = Checked(name=data, texts=list(_texts(checked)))
    seen: set[int] = set()
    rows = []
    for source in local:
        if source.get("sha256") and source["sha256"] == checked.get("sha256"):
            continue
        try:
            row = compare(index, source, 1)
        except NlptlError as e:
            log.info("leakage check: %s not read (%s)", source["spec"], e)
            continue
        seen |= row.pop("flagged")
        rows.append(row)
        if row["exact"] or row["near"]:
            example = row["examples"][0]["text"][:80]
            log.warning("%d of %d texts of %s were seen in %s (%s of the %s stage): %d exact, %d near duplicates, "
                        "e.g. %r; scores on them are inflated (details: nlptl audit)", row["exact"] + row["near"],
                        row["n_checked"], data, source["spec"], source["role"], source["stage"], row["exact"],
                        row["near"], example)
    return {"checked": True, "seen": len(seen), "n_checked": len(index.texts),
            "exact": sum(r["exact"] for r in rows), "near": sum(r["near"] for r in rows),
            "sources": [{k: r[k] for k in ("source", "exact", "near")} for r in rows]}
