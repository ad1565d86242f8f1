"""Leakage audit: do the texts a model is scored on appear in what it was trained on?

Adapting on a corpus that holds the test set's texts inflates every later score (nlptl's `reviews`
corpus is unlabeled IMDb: a user testing on IMDb sentences may adapt on their reviews). The audit
compares the texts checked (the data being evaluated, a run's eval file) with every source in the
model's lineage (pretrain and adapt corpora, mixtures included; train and probe files):

- texts are normalised (Unicode NFKC, lower case, runs of non-word characters -> one space);
- a checked text is cut into word shingles of SHINGLE words (a text under INSIDE words is one shingle,
  found only as a whole document: a stock phrase inside a review is no duplicate); each source
  document is cut the same way, and a text is a **near duplicate** of a document when at least NEAR of
  its shingles occur in that document (containment, not Jaccard: a test sentence taken from a review is
  contained in it, whatever the review's length), and an **exact** duplicate when its whole normalised
  text occurs in the normalised document.

The checked texts are indexed (they are the small side); sources are read once, as a stream, on
`num_proc` processes (forked), so memory does not grow with a corpus.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nlptl.errors import NlptlError, UsageError

log = logging.getLogger("nlptl")

SHINGLE = 5  # words: long enough that common phrases ("this movie is one of") rarely make a whole text
# A checked text of fewer words is a duplicate only of a document that is exactly it, never of a phrase
# inside a longer one: stock phrases ("Highly recommended.", "Do not waste your time.") occur in many
# reviews. The UCI sentences against 4k IMDb reviews: 139 of 3000 "found" when any text could match
# inside a review, 19 with 5 words as the floor, every one a stock phrase (docs/results.md).
INSIDE = 8
NEAR = 0.8  # share of a text's shingles found in one document
EXAMPLES = 3  # duplicates shown per source
BATCH = 1000  # documents per unit of work
# evaluate's automatic check reads sources up to this size (bytes), on one process; beyond it, it says
# to run `nlptl audit` (docs/performance.md, "Leakage audit", has the speed).
AUTO_LIMIT = 50 * 1024 * 1024
PROGRESS_SECONDS = 10

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def _whole(words: list[str]) -> int:
    """The hash of a whole short text, apart from any shingle's (a 5-word text is also a 5-word window)."""
    return hash(("\x01", *words))


def shingles(words: list[str], n: int = SHINGLE) -> set[int]:
    """The hashes of every window of `n` words (tuples hashed in C: the audit's inner loop); a text of fewer
    words is one shingle of all of them. Python's string hashes are salted per interpreter, and a pool's
    processes are forked from the one that indexed the checked texts, so every hash here agrees."""
    if len(words) < n:
        return {hash(tuple(words))} if words else set()
    return set(map(hash, zip(*(words[i:] for i in range(n)), strict=False)))


@dataclass
class Checked:
    """The texts checked for leakage, indexed by shingle."""

    name: str
    texts: list[str]
    norms: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # shingles per text
    index: dict[int, list[int]] = field(default_factory=dict)  # shingle -> the texts that have it
    keys: frozenset = frozenset()

    def __post_init__(self) -> None:
        for i, text in enumerate(self.texts):
            norm = normalise(text)
            words = norm.split()
            own = shingles(words) if len(words) >= INSIDE else ({_whole(words)} if words else set())
            self.norms.append(norm)
            self.sizes.append(len(own))
            for h in own:
                self.index.setdefault(h, []).append(i)
        self.keys = frozenset(self.index)


def _document_shingles(words: list[str]) -> set[int]:
    """A source document's shingles, and for a short document its whole text (what a short checked text
    is matched against: see Checked)."""
    out = shingles(words)
    if len(words) < INSIDE:
        out.add(_whole(words))
    return out


def scan_batch(checked: Checked, documents: list[str]) -> dict[int, tuple[float, bool, str]]:
    """text id -> (best containment in one document, exact, that document) over `documents`."""
    found: dict[int, tuple[float, bool, str]] = {}
    for doc in documents:
        norm = normalise(doc)
        # A set intersection (in C) first: most documents share no shingle with the checked texts.
        matched = _document_shingles(norm.split()) & checked.keys
        if not matched:
            continue
        hits = Counter(i for h in matched for i in checked.index[h])
        for i, k in hits.items():
            share = k / checked.sizes[i]
            exact = share == 1.0 and f" {checked.norms[i]} " in f" {norm} "
            best = found.get(i)
            if best is None or (share, exact) > best[:2]:
                found[i] = (share, exact, doc)
    return found


_worker: Checked | None = None  # the index in a pool's processes (inherited at fork, never pickled)


def _scan_in_worker(documents: list[str]):
    return scan_batch(_worker, documents), len(documents)


def scan(checked: Checked, batches: Iterable[list[str]], num_proc: int = 1, progress=None) -> dict:
    """Every text of `checked` against a source read as batches of documents: its best match.
    `progress(n)`: called with the number of documents of each batch done."""
    global _worker
    merged: dict[int, tuple[float, bool, str]] = {}

    def merge(found: dict, n_docs: int) -> None:
        for i, hit in found.items():
            if i not in merged or hit[:2] > merged[i][:2]:
                merged[i] = hit
        if progress is not None:
            progress(n_docs)

    if num_proc <= 1:
        for batch in batches:
            merge(scan_batch(checked, batch), len(batch))
        return merged
    import multiprocessing

    _worker = checked
    try:
        with multiprocessing.get_context("fork").Pool(num_proc) as pool:
            for found, n_docs in pool.imap(_scan_in_worker, batches):
                merge(found, n_docs)
    finally:
        _worker = None
    return merged


def _around(document: str, text: str, width: int = 200) -> str:
    """The part of `document` where `text` starts (its first words, case-insensitive), else its start."""
    head = " ".join(text.split()[:3]).lower()
    at = document.lower().find(head) if head else -1
    start = max(0, at - 40) if at >= 0 else 0
    return ("..." if start else "") + document[start:start + width]


def summary(checked: Checked, source: str, merged: dict) -> dict:
    """Counts and examples of one source against the checked texts."""
    exact = [i for i, (_, is_exact, _) in merged.items() if is_exact]
    near = [i for i, (share, is_exact, _) in merged.items() if share >= NEAR and not is_exact]
    examples = [{"text": checked.texts[i][:200], "kind": "exact" if merged[i][1] else "near",
                 "containment": round(merged[i][0], 3), "in": _around(merged[i][2], checked.texts[i])}
                for i in sorted(exact)[:EXAMPLES] + sorted(near)[:max(0, EXAMPLES - len(exact))]]
    n = len(checked.texts)
    return {"checked": checked.name, "source": source, "n_checked": n, "exact": len(exact), "near": len(near),
            "share": round((len(exact) + len(near)) / n, 4) if n else 0.0, "examples": examples}


# --------------------------------------------------------------------------- sources and checked files


def compare(index, source: dict, num_proc: int | None) -> dict:
    """One source read as a stream against the indexed texts; a progress line every PROGRESS_SECONDS."""
    started = last = time.perf_counter()
    done = 0

    def seen(n: int) -> None:
        nonlocal done, last
        done += n
        if time.perf_counter() - last >= PROGRESS_SECONDS:
            last = time.perf_counter()
            log.info("audit: %d documents of %s read (%.0f/s)", done, source["spec"], done / (last - started))

    from nlptl.data.lm import usable_cores

    merged = scan(index, batches(source), num_proc or usable_cores(), progress=seen)
    flagged = {i for i, (share, exact, _) in merged.items() if exact or share >= NEAR}
    return {**summary(index, source["spec"], merged), "documents": done, "flagged": flagged}


def lineage_sources(lineage: dict, config: dict) -> list[dict]:
    """Every corpus, train and probe file of the lineage, oldest stage first, each once (by content)."""
    out, seen = [], set()
    node, chain = lineage, []
    while isinstance(node, dict):
        chain.append(node)
        node = node.get("parent")
    for depth, node in enumerate(reversed(chain)):
        top = depth == len(chain) - 1
        corpora = node.get("mixture") or ([node["corpus"]] if isinstance(node.get("corpus"), dict) else [])
        records = [("corpus", rec) for rec in corpora]
        records += [(role, node[role]) for role in ("train", "probe") if isinstance(node.get(role), dict)]
        for role, rec in records:
            if not rec.get("spec"):  # a held-out slice, not a file
                continue
            key = rec.get("sha256") or rec.get("spec")
            if key in seen:
                continue
            seen.add(key)
            # The run's own --text-column names the columns of its train and probe files.
            own = config.get("text_column") if top and role != "corpus" else None
            column = rec.get("text_column") or own or "text"
            out.append({**rec, "role": role, "stage": node.get("stage"), "text_column": column})
    return out


def eval_files(lineage: dict) -> list[dict]:
    node, out = lineage, []
    while isinstance(node, dict):
        if isinstance(node.get("eval"), dict) and node["eval"].get("files"):  # a file, not a held-out slice
            out.append({**node["eval"], "text_column": "text"})
        node = node.get("parent")
    return out


def local_source(spec: str, text_column: str, flag: str) -> dict:
    """A file the user names (`--data`), checked under that flag: it exists, has a supported format and
    the text column(s)."""
    from nlptl.data.files import check_data_file

    if not Path(spec).exists():
        raise UsageError(f"{flag} {spec}: no such file")
    columns = {c: "--text-column" for c in text_column.split(",")}
    files, fmt, sha = check_data_file(spec, flag, columns if not spec.endswith(".txt") else None)
    return {"spec": spec, "files": [str(f) for f in files], "format": fmt, "sha256": sha, "text_column": text_column}


def _source(rec: dict):
    """A lineage record as a CorpusSource the corpus reader takes."""
    from nlptl.data.corpora import CorpusSource

    fields = {k: rec[k] for k in ("spec", "name", "files", "format", "hub", "hub_config", "sha256") if rec.get(k)}
    if rec.get("hub_splits"):
        fields["hub_splits"] = tuple(rec["hub_splits"])
    return CorpusSource(**fields, text_column=rec.get("text_column") or "text")


def batches(rec: dict):
    """The documents of a source, in batches; a pair task's two text columns joined by a space."""
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


def texts(rec: dict):
    for batch in batches(rec):
        yield from batch


def finetune_check(ref, train: dict, eval_: dict | None, text_column: str) -> dict | None:
    """finetune's automatic check: its --eval file against the model's lineage and its own --train (eval
    texts seen in training inflate the score that selects the kept checkpoint). None without an eval file."""
    if eval_ is None or not eval_.get("files"):
        return None
    sources = lineage_sources(ref.lineage, {}) if ref.lineage else []
    sources.append({**train, "role": "train", "stage": "finetune", "text_column": text_column})
    return check(ref, sources, {**eval_, "text_column": text_column}, "--eval", "the selection score is")


def evaluate_check(ref, data: str, text_column: str) -> dict | None:
    """evaluate's automatic check: its --data against the model's lineage, with a warning (counts, where,
    an example) when texts were seen in adaptation or training. None for a model without a lineage."""
    if not ref.lineage:
        return None
    sources = lineage_sources(ref.lineage, (ref.run or {}).get("config") or {})
    return check(ref, sources, local_source(data, text_column, "--data"), data, "scores on them are")


def check(ref, sources: list[dict], checked: dict, name: str, inflated: str) -> dict:
    """`checked` against the local `sources` on one process, each overlap a warning; `name`: how the
    warning names the checked file; `inflated`: what the overlap inflates, with its verb."""
    local = [s for s in sources if not s.get("hub")]
    size = sum(Path(f).stat().st_size for s in local for f in s.get("files") or [] if Path(f).is_file())
    if size > AUTO_LIMIT or len(local) < len(sources):
        why = (f"the lineage's sources hold {size / 2**20:.0f} MB" if size > AUTO_LIMIT
               else "a hub corpus is in the lineage")
        log.info("leakage check not run: %s; run `nlptl audit %s`", why, ref.spec)
        return {"checked": False, "why": why}
    index = Checked(name=name, texts=list(texts(checked)))
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
                        "e.g. %r; %s inflated (details: nlptl audit)", row["exact"] + row["near"],
                        row["n_checked"], name, source["spec"], source["role"], source["stage"], row["exact"],
                        row["near"], example, inflated)
    return {"checked": True, "seen": len(seen), "n_checked": len(index.texts),
            "exact": sum(r["exact"] for r in rows), "near": sum(r["near"] for r in rows),
            "sources": [{k: r[k] for k in ("source", "exact", "near")} for r in rows]}
