"""What corpus and task names mean.

Built-in names point at the Hugging Face Hub (the real code path users online rely on) or at the
sample data shipped inside the package. Offline sites register local copies under the same names
in `$NLPTL_HOME/registry.yaml`:

    corpora:
      reviews: /data/imdb/unsup.txt            # a file, directory or glob
    tasks:
      sentiment: {train: /data/sst2/train.csv, eval: /data/sst2/dev.csv}

Light module: no heavy imports (used before any check that needs torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nlptl.config import runs_root
from nlptl.errors import UsageError, did_you_mean
from nlptl.shapes import SHAPES

ASSETS = Path(__file__).parents[1] / "assets"


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    description: str
    hub: str | None = None  # dataset repo id
    hub_config: str | None = None
    hub_splits: tuple[str, ...] = ("train",)
    text_column: str = "text"
    path: str | None = None  # local file/dir/glob (sample data or registry.yaml)


@dataclass(frozen=True)
class TaskEntry:
    name: str
    description: str
    labels: tuple[str, ...] | None  # None: any label set, taken from the training file
    hub: str | None = None
    hub_config: str | None = None
    hub_train_split: str = "train"
    hub_eval_split: str = "validation"
    hub_text_column: str = "text"
    hub_label_column: str = "label"
    train: str | None = None
    eval: str | None = None
    test: str | None = None
    # Integer labels in files map to these names by position (0 -> labels[0]).
    aliases: dict[str, str] = field(default_factory=dict)
    # The task's shape, a name of nlptl/shapes.py's table: single (one label of a set), multilabel (any
    # number of labels), regression (a number).
    problem: str = "single"


BUILTIN_CORPORA = {
    "reviews": CorpusEntry(
        "reviews",
        "unlabeled IMDb movie reviews, as ULMFiT adapted on (hub stanfordnlp/imdb, unsupervised + train, text only)",
        hub="stanfordnlp/imdb", hub_splits=("unsupervised", "train"),
    ),
    "wikitext-103": CorpusEntry(
        "wikitext-103", "WikiText-103, Wikipedia articles for general pretraining (hub Salesforce/wikitext, raw)",
        hub="Salesforce/wikitext", hub_config="wikitext-103-raw-v1",
    ),
    "wikitext-2": CorpusEntry(
        "wikitext-2", "WikiText-2, a small Wikipedia corpus for general pretraining (hub Salesforce/wikitext, raw)",
        hub="Salesforce/wikitext", hub_config="wikitext-2-raw-v1",
    ),
    "sample-general": CorpusEntry(
        "sample-general", "small generated general-English text shipped with nlptl (demo and tests)",
        path=str(ASSETS / "general.txt"),
    ),
    "sample-reviews": CorpusEntry(
        "sample-reviews", "small generated unlabeled reviews shipped with nlptl (demo and tests)",
        path=str(ASSETS / "reviews.txt"),
    ),
}

SENTIMENT_ALIASES = {"0": "negative", "1": "positive", "neg": "negative", "pos": "positive"}

BUILTIN_TASKS = {
    "sentiment": TaskEntry(
        "sentiment", "binary sentiment, labels negative/positive (0/1 accepted); default data hub stanfordnlp/sst2",
        labels=("negative", "positive"), hub="stanfordnlp/sst2", hub_text_column="sentence",
        aliases=SENTIMENT_ALIASES,
    ),
    "classification": TaskEntry(
        "classification", "any label set, from files (--train, --eval); labels are taken from the training file",
        labels=None,
    ),
    "multilabel": TaskEntry(
        "multilabel", "any number of labels per text, from files: one cell 'sports;politics' (--label-separator) "
        "or several 0/1 columns (--label-column a,b,c)", labels=None, problem="multilabel",
    ),
    "regression": TaskEntry(
        "regression", "a number per text (a score, a rating), from files: a numeric --label-column",
        labels=None, problem="regression",
    ),
    "sample-sentiment": TaskEntry(
        "sample-sentiment", "small generated sentiment sentences shipped with nlptl (demo and tests)",
        labels=("negative", "positive"), aliases=SENTIMENT_ALIASES,
        train=str(ASSETS / "sentiment_train.csv"), eval=str(ASSETS / "sentiment_eval.csv"),
        test=str(ASSETS / "sentiment_test.csv"),
    ),
}


def _user_registry() -> dict:
    path = runs_root() / "registry.yaml"
    if not path.is_file():
        return {}
    import yaml

    from nlptl.config import DuplicateKey, unique_keys_loader

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=unique_keys_loader()) or {}
    except DuplicateKey as e:
        raise UsageError(f"{path}: {e}; keep one") from None
    except yaml.YAMLError:
        raise UsageError(f"{path}: malformed YAML; fix or remove the file") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected 'corpora:' and 'tasks:' mappings")
    return data


def _local(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def corpora() -> dict[str, CorpusEntry]:
    out = dict(BUILTIN_CORPORA)
    user = _user_registry().get("corpora") or {}
    for name, value in user.items():
        base = BUILTIN_CORPORA.get(name)
        desc = (base.description + "; " if base else "") + f"registered locally: {value}"
        out[name] = CorpusEntry(name, desc, path=_local(str(value), runs_root()))
    return out


def tasks() -> dict[str, TaskEntry]:
    out = dict(BUILTIN_TASKS)
    user = _user_registry().get("tasks") or {}
    for name, value in user.items():
        if not isinstance(value, dict):
            raise UsageError(f"registry.yaml: task '{name}' needs a mapping with train: (and eval:)")
        base = BUILTIN_TASKS.get(name)
        files = {k: _local(str(value[k]), runs_root()) for k in ("train", "eval", "test") if value.get(k)}
        out[name] = TaskEntry(
            name, (base.description + "; " if base else "") + f"registered locally: {files.get('train')}",
            labels=tuple(value["labels"]) if value.get("labels") else (base.labels if base else None),
            aliases=base.aliases if base else {}, problem=_problem(name, value, base), **files,
        )
    return out


PROBLEMS = tuple(SHAPES)  # the task shapes (nlptl/shapes.py), by name


def _problem(name: str, value: dict, base: TaskEntry | None) -> str:
    problem = str(value.get("problem") or (base.problem if base else "single"))
    if problem not in PROBLEMS:
        raise UsageError(f"registry.yaml: task '{name}' has problem '{problem}'{did_you_mean(problem, PROBLEMS)}; "
                         f"choose one of {', '.join(PROBLEMS)}")
    return problem


def looks_like_path(spec: str) -> bool:
    return any(c in spec for c in "/\\*?") or Path(spec).suffix.lower() in {
        ".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet"} or Path(spec).exists()


def corpus_entry(name: str) -> CorpusEntry:
    table = corpora()
    if name not in table:
        raise UsageError(f"unknown corpus '{name}'{did_you_mean(name, table)}; see `nlptl corpora`, "
                         "or pass a file, directory or glob")
    return table[name]


def task_entry(name: str) -> TaskEntry:
    table = tasks()
    if name not in table:
        raise UsageError(f"unknown task '{name}'{did_you_mean(name, table)}; see `nlptl tasks`")
    return table[name]
