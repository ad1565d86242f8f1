"""Leakage audit: do the texts a model is scored on appear in what it was trained on?

Adapting on a corpus that holds the test set's texts inflates every later score (nlptl's `reviews`
corpus is unlabeled IMDb: a user testing on IMDb sentences may adapt on their reviews). The audit
compares the texts checked (the data being evaluated, a run's eval file) with every source in the
model's lineage (pretrain and adapt corpora, mixtures included; train and probe files):

- texts are normalised (Unicode NFKC, lower case, runs of non-word characters -> one space);
- a checked text is cut into word shingles of SHINGLE words (a shorter text is one shingle); each source
  document is cut the same way, and a text is a **near duplicate** of a document when at least NEAR of
  its shingles occur in that document (containment, not Jaccard: a test sentence taken from a review is
  contained in it, whatever the review's length), and an **exact** duplicate when its whole normalised
  text occurs in the normalised document.

The checked texts are indexed (they are the small side); sources are read once, as a stream, on
`num_proc` processes, so memory does not grow with a corpus. Hashes: xxhash (a `datasets` dependency).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

SHINGLE = 5  # words: long enough that common phrases ("this movie is one of") rarely make a whole text
NEAR = 0.8  # share of a text's shingles found in one document
EXAMPLES = 3  # duplicates shown per source
BATCH = 1000  # documents per unit of work

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def _hash(words: list[str]) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(" ".join(words).encode())


def shingles(words: list[str], n: int = SHINGLE) -> set[int]:
    """The hashes of every window of `n` words; a text of fewer words is one shingle of all of them."""
    if len(words) < n:
        return {_hash(words)} if words else set()
    return {_hash(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class Checked:
    """The texts checked for leakage, indexed by shingle."""

    name: str
    texts: list[str]
    norms: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # shingles per text
    index: dict[int, list[int]] = field(default_factory=dict)  # shingle -> the texts that have it
    short: set[int] = field(default_factory=set)  # word counts of texts shorter than SHINGLE

    def __post_init__(self) -> None:
        for i, text in enumerate(self.texts):
            norm = normalise(text)
            words = norm.split()
            own = shingles(words)
            self.norms.append(norm)
            self.sizes.append(len(own))
            if 0 < len(words) < SHINGLE:
                self.short.add(len(words))
            for h in own:
                self.index.setdefault(h, []).append(i)


def _document_shingles(words: list[str], short: set[int]) -> set[int]:
    """A source document's shingles, and the windows as long as each short checked text (which is one
    shingle of all its words, and must be looked for as such)."""
    out = shingles(words)
    for n in short:
        if n < len(words):
            out |= {_hash(words[i:i + n]) for i in range(len(words) - n + 1)}
    return out


def scan_batch(checked: Checked, documents: list[str]) -> dict[int, tuple[float, bool, str]]:
    """text id -> (best containment in one document, exact, that document) over `documents`."""
    found: dict[int, tuple[float, bool, str]] = {}
    for doc in documents:
        norm = normalise(doc)
        hits = Counter(i for h in _document_shingles(norm.split(), checked.short) for i in checked.index.get(h, ()))
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


def summary(checked: Checked, source: str, merged: dict) -> dict:
    """Counts and examples of one source against the checked texts."""
    exact = [i for i, (_, is_exact, _) in merged.items() if is_exact]
    near = [i for i, (share, is_exact, _) in merged.items() if share >= NEAR and not is_exact]
    examples = [{"text": checked.texts[i][:200], "kind": "exact" if merged[i][1] else "near",
                 "containment": round(merged[i][0], 3), "in": merged[i][2][:200]}
                for i in sorted(exact)[:EXAMPLES] + sorted(near)[:max(0, EXAMPLES - len(exact))]]
    n = len(checked.texts)
    return {"checked": checked.name, "source": source, "n_checked": n, "exact": len(exact), "near": len(near),
            "share": round((len(exact) + len(near)) / n, 4) if n else 0.0, "examples": examples}
