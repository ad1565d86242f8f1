"""Corpora: a name or a path -> a `datasets.Dataset` with one column, `text`.

`resolve_corpus` is light (runs before torch is imported) and does every check that needs only the
files; `load_corpus` reads them with `datasets` (Arrow, memory-mapped, cached), `stream_corpus` as they
go (`datasets.IterableDataset`). `resolve_corpora` reads a mixture, `reviews:0.8,wikitext-103:0.2`.
A hub dataset is named `hf:NAME[:CONFIG][@SPLIT]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from nlptl import hub
from nlptl.data import registry
from nlptl.data.files import check_data_file
from nlptl.errors import NlptlError, UsageError


@dataclass
class CorpusSource:
    spec: str  # what the user typed
    name: str | None = None  # registered name, if any
    files: list[str] = field(default_factory=list)
    format: str | None = None  # text/csv/tsv/json/parquet
    text_column: str = "text"
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[str, ...] = ()
    sha256: str | None = None
    weight: float | None = None  # its share of the blocks in a mixture

    def record(self) -> dict:
        """What lineage keeps about the corpus."""
        d = {k: v for k, v in asdict(self).items() if v not in (None, [], ())}
        d["hub_splits"] = list(self.hub_splits) if self.hub_splits else None
        return {k: v for k, v in d.items() if v is not None}


def resolve_corpora(spec: str, text_column: str = "text", train_file: str | None = None) -> list[CorpusSource]:
    """`--corpus A:0.8,B:0.2` -> one CorpusSource per corpus, each with its share of the blocks (weights
    normalised to sum to 1); one corpus without a weight is a list of one."""
    parts = [p.strip() for p in spec.split(",")] if "," in spec and not Path(spec).exists() else [spec]
    named = [_weighted(p) for p in parts]
    if len(named) == 1:
        return [resolve_corpus(named[0][0], text_column, train_file)]
    if any(w is None for _, w in named):
        raise UsageError(f"--corpus {spec}: give each corpus of a mixture its share, e.g. reviews:0.8,wikitext-103:0.2")
    total = sum(w for _, w in named)
    sources = []
    for name, weight in named:
        src = resolve_corpus(name, text_column, train_file)
        src.weight = weight / total
        sources.append(src)
    return sources


def _weighted(part: str) -> tuple[str, float | None]:
    name, _, tail = part.rpartition(":")
    try:
        weight = float(tail)
    except ValueError:
        return part, None
    if not name or not weight > 0 or weight == float("inf"):
        raise UsageError(f"--corpus {part}: a share must be a positive number (e.g. reviews:0.8)")
    return name, weight


def mixture_key(sources: list[CorpusSource]) -> str:
    """What a run's data is, for resume: each corpus's content (or name) and share."""
    if len(sources) == 1:
        return sources[0].sha256 or sources[0].spec
    return ",".join(f"{s.sha256 or s.spec}:{s.weight:.6g}" for s in sources)


def resolve_corpus(spec: str, text_column: str = "text", train_file: str | None = None) -> CorpusSource:
    """Name or path -> CorpusSource, with the files checked (exists, non-empty, UTF-8, column)."""
    if spec.startswith("hf:"):
        return _hub_corpus(spec, text_column)
    if spec.startswith("task:"):
        return _task_corpus(spec, text_column, train_file)
    if registry.looks_like_path(spec) and spec not in registry.corpora():
        return _files(spec, None, text_column)
    entry = registry.corpus_entry(spec)
    if entry.path:
        return _files(entry.path, entry.name, text_column)
    hub.require(entry.hub, "dataset", f"--corpus {spec}",
                "pass a local file, directory or glob instead (or register one in $NLPTL_HOME/registry.yaml)")
    return CorpusSource(spec=spec, name=entry.name, hub=entry.hub, hub_config=entry.hub_config,
                        hub_splits=entry.hub_splits, text_column=entry.text_column)


def _files(spec: str, name: str | None, text_column: str, flag: str = "--corpus") -> CorpusSource:
    files, fmt, sha = check_data_file(spec, flag, {text_column: "--text-column"})
    return CorpusSource(spec=spec, name=name, files=[str(f) for f in files], format=fmt,
                        text_column=text_column if fmt != "text" else "text", sha256=sha)


def _hub_corpus(spec: str, text_column: str) -> CorpusSource:
    """`hf:NAME[:CONFIG][@SPLIT]`: a dataset of the hub by name (split "train" by default)."""
    rest, _, split = spec[3:].partition("@")
    repo, _, config = rest.partition(":")
    if not repo or (_ and not config) or (spec[3:].count("@") and not split):
        raise UsageError(f"--corpus {spec}: expected hf:NAME[:CONFIG][@SPLIT], "
                         "e.g. hf:Salesforce/wikitext:wikitext-2-raw-v1@test")
    hub.require(repo, "dataset", f"--corpus {spec}", "pass a local file, directory or glob instead")
    return CorpusSource(spec=spec, hub=repo, hub_config=config or None, hub_splits=(split or "train",),
                        text_column=text_column)


def _task_corpus(spec: str, text_column: str, train_file: str | None) -> CorpusSource:
    """Task-adaptive pretraining: the task's own (unlabeled) training texts as the corpus."""
    entry = registry.task_entry(spec.split(":", 1)[1])
    path = train_file or entry.train
    if path:
        src = _files(path, None, text_column, flag="--train")
        src.spec, src.name = spec, spec
        return src
    if entry.hub:
        hub.require(entry.hub, "dataset", f"--corpus {spec}", "pass the task's training file with --train FILE")
        return CorpusSource(spec=spec, name=spec, hub=entry.hub, hub_config=entry.hub_config,
                            hub_splits=(entry.hub_train_split,), text_column=entry.hub_text_column)
    raise UsageError(f"--corpus {spec}: the task has no default data; pass its training file with --train FILE")


def load_corpus(src: CorpusSource):
    """The corpus as a `datasets.Dataset` with a single non-empty `text` column."""
    import datasets

    if src.hub:
        ds = load_hub(src.hub, src.hub_config, list(src.hub_splits), f"--corpus {src.spec}",
                      "pass a local file, directory or glob instead (or register one in $NLPTL_HOME/registry.yaml)")
        src.sha256 = src.sha256 or ds._fingerprint
    else:
        ds = read_files(src.files, src.format, src.sha256)
    if src.text_column not in ds.column_names:
        raise UsageError(f"--corpus {src.spec}: no column '{src.text_column}'; pass --text-column NAME")
    ds = ds.select_columns([src.text_column])
    if src.text_column != "text":
        ds = ds.rename_column(src.text_column, "text")
    if ds.features["text"].dtype != "string":
        ds = ds.cast_column("text", datasets.Value("string"))
    ds = ds.filter(lambda b: [t is not None and t.strip() != "" for t in b["text"]], batched=True,
                   desc="dropping blank lines")
    if len(ds) == 0:
        raise UsageError(f"--corpus {src.spec}: holds no text")
    return ds


def stream_corpus(src: CorpusSource):
    """The corpus read as it goes (`datasets.IterableDataset`, nothing converted or cached): a single
    non-empty `text` column, documents in file order."""
    import datasets

    if src.hub:
        hub.prepare(src.hub)
        try:
            parts = [datasets.load_dataset(src.hub, src.hub_config, split=s, streaming=True) for s in src.hub_splits]
        except Exception as e:
            raise NlptlError(f"--corpus {src.spec}: could not open '{src.hub}' for streaming: "
                             f"{str(e).splitlines()[0][:200]}") from e
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        builder, kwargs = _builder(src.files, src.format)
        ds = datasets.load_dataset(builder, data_files=src.files, split="train", streaming=True, **kwargs)
    column = src.text_column
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    return ds.filter(lambda b: [t is not None and str(t).strip() != "" for t in b["text"]], batched=True)


def _builder(files: list[str], fmt: str) -> tuple[str, dict]:
    """The `datasets` packaged builder of a file format, and its arguments: CSV cells as strings."""
    import datasets

    kwargs: dict = {}
    builder = {"text": "text", "csv": "csv", "tsv": "csv", "json": "json", "parquet": "parquet"}[fmt]
    if fmt in ("csv", "tsv"):
        # Strings, never guessed types or NaN: "NA", "null" or "1e5" are texts and labels too.
        from nlptl.data.files import columns_of

        header = columns_of(Path(files[0]), fmt, "--corpus")
        kwargs.update(keep_default_na=False, na_filter=False,
                      features=datasets.Features({c: datasets.Value("string") for c in header}))
        if fmt == "tsv":
            kwargs["sep"] = "\t"
    if fmt in ("text", "csv", "tsv"):
        kwargs["encoding"] = "utf-8-sig"  # a byte-order mark is not text (nor part of a column name)
    return builder, kwargs


def read_files(files: list[str], fmt: str, sha256: str | None):
    """Read data files with `datasets`' packaged builders; every column as read, CSV cells as strings.

    `sha256` is the content hash of the files (`check_data_file`). `datasets` keys its cache of local
    files by path and modification time, so a file rewritten with its time kept (`cp -p`, `rsync -t`,
    a restored backup) would be read from the old cache: each content gets a cache directory of its own."""
    import datasets

    from nlptl.rundir import unwritable

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    if unwritable(cache) is not None:  # `datasets` writes every file it reads there first
        raise UsageError(f"the datasets cache {cache} is not writable (reading data writes it there); set "
                         "HF_DATASETS_CACHE (or HF_HOME) to a writable directory")
    builder, kwargs = _builder(files, fmt)
    if sha256:
        kwargs["cache_dir"] = str(Path(datasets.config.HF_DATASETS_CACHE) / "nlptl-content" / sha256[:32])
    import logging

    # `datasets` logs its own line about a malformed file before raising: the one line is ours (below).
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", **kwargs)
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as e:
        if fmt == "json":  # name the line, as for every other bad input, instead of the reader's message
            from nlptl.data.files import first_bad_json_line

            for f in files:
                if bad := first_bad_json_line(Path(f)):
                    raise UsageError(f"{f}: line {bad[0]} is not a JSON object ({bad[1]}); "
                                     "fix or drop it (JSON Lines: one object per line)") from None
        cause = e.__cause__ or e
        raise NlptlError(f"could not read {', '.join(files[:3])}: {str(cause).splitlines()[0][:200]}") from e
    finally:
        quiet.setLevel(level)


def load_hub(repo: str, config: str | None, splits: list[str], what: str, hint: str):
    import datasets

    online = hub.prepare(repo)
    try:
        parts = [datasets.load_dataset(repo, config, split=s) for s in splits]
    except Exception as e:
        if not online:
            raise NlptlError(
                f"{what}: the Hugging Face Hub is unreachable (offline) and '{repo}' is not in the local cache; {hint}"
            ) from e
        raise NlptlError(f"{what}: could not load '{repo}' from the hub: {str(e).splitlines()[0][:200]}; {hint}") from e
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
