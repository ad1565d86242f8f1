"""Labelled data for classification: a task name and files -> `datasets.Dataset`s of (text, label id).

`resolve_task` is light and checks files, headers and columns before torch is imported;
`load_task` reads them with `datasets` and maps labels to ids with one clear error per problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nlptl import hub
from nlptl.data import registry
from nlptl.data.corpora import load_hub, read_files
from nlptl.data.files import check_data_file
from nlptl.errors import UsageError
from nlptl.shapes import by_name

log = logging.getLogger("nlptl")


@dataclass
class LabelledSource:
    flag: str  # the flag that named it, for messages
    spec: str
    files: list[str] = field(default_factory=list)
    format: str | None = None
    sha256: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], "flag")}


@dataclass
class TaskSpec:
    entry: registry.TaskEntry
    train: LabelledSource | None
    eval: LabelledSource | None
    text_column: str  # one column, or two comma-separated for sentence pairs
    label_column: str  # one column, or several comma-separated 0/1 columns (multilabel)
    separator: str = ";"  # multilabel: between the labels of one cell

    @property
    def text_columns(self) -> list[str]:
        return columns(self.text_column)

    @property
    def label_columns(self) -> list[str]:
        return columns(self.label_column)

    @property
    def shape(self):
        """The task's shape (nlptl/shapes.py): how its labels are read, scored and answered."""
        return by_name(self.entry.problem)

    @property
    def pairs(self) -> bool:
        return len(self.text_columns) == 2


def columns(value: str) -> list[str]:
    return [c.strip() for c in str(value).split(",") if c.strip()]


def labelled_source(path: str, flag: str, text_column: str, label_column: str | None) -> LabelledSource:
    for name, value in (("--text-column", text_column), ("--label-column", label_column or "")):
        twice = sorted({c for c in columns(value) if columns(value).count(c) > 1})
        if twice:
            raise UsageError(f"{name} {value} names '{twice[0]}' twice; give each column once")
    cols = {c: "--text-column" for c in columns(text_column)}
    cols.update({c: "--label-column" for c in columns(label_column or "")})
    files, fmt, sha = check_data_file(path, flag, cols)
    if fmt == "text":
        raise UsageError(f"{flag} {path}: labelled data needs a table "
                         "(.csv/.tsv/.jsonl/.parquet with text and label columns)")
    return LabelledSource(flag=flag, spec=path, files=[str(f) for f in files], format=fmt, sha256=sha)


def resolve_task(task: str, train_file: str | None, eval_file: str | None, text_column: str,
                 label_column: str, separator: str = ";") -> TaskSpec:
    entry = registry.task_entry(task)
    if len(columns(label_column)) > 1 and not by_name(entry.problem).several_label_columns:
        raise UsageError(f"--label-column {label_column}: several label columns make a multi-label task; "
                         f"pass --task multilabel (or one --label-column for --task {task})")
    train = eval_ = None
    train_path = train_file or entry.train
    eval_path = eval_file or (entry.eval if not train_file else None)
    if train_path:
        train = labelled_source(train_path, "--train", text_column, label_column)
    elif entry.hub:
        hub.require(entry.hub, "dataset", f"--task {task}",
                    "pass local files with --train FILE --eval FILE (or register them in $NLPTL_HOME/registry.yaml)")
        train = LabelledSource("--train", entry.hub, hub=entry.hub, hub_config=entry.hub_config,
                               hub_split=entry.hub_train_split)
    else:
        raise UsageError(f"--task {task} has no default data; pass --train FILE (and --eval FILE)")
    if eval_path:
        eval_ = labelled_source(eval_path, "--eval", text_column, label_column)
    elif entry.hub and not train_path:
        eval_ = LabelledSource("--eval", entry.hub, hub=entry.hub, hub_config=entry.hub_config,
                               hub_split=entry.hub_eval_split)
    return TaskSpec(entry, train, eval_, text_column, label_column, separator)


def read_labelled(src: LabelledSource, spec: TaskSpec):
    """Rows with columns `text` (and `text_pair` for sentence pairs) and `label` (a string, as written in the
    file; several 0/1 label columns become one cell of the names of the columns set, joined by the separator)."""
    import datasets

    if src.hub:
        ds = load_hub(src.hub, src.hub_config, [src.hub_split], f"--task {spec.entry.name}",
                      "pass local files with --train FILE --eval FILE")
        text_cols, label_cols = [spec.entry.hub_text_column], [spec.entry.hub_label_column]
        src.sha256 = ds._fingerprint
    else:
        ds = read_files(src.files, src.format, src.sha256)
        text_cols, label_cols = spec.text_columns, spec.label_columns
    ds = ds.select_columns(list(dict.fromkeys(text_cols + label_cols)))
    if len(label_cols) > 1:
        ds = ds.map(lambda b: {"label": _columns_to_cell(b, label_cols, spec.separator, src)}, batched=True,
                    with_indices=False, remove_columns=[c for c in label_cols if c not in text_cols],
                    desc="reading label columns")
        label_cols = ["label"]
    names = {text_cols[0]: "text", label_cols[0]: "label"}
    if len(text_cols) == 2:
        names[text_cols[1]] = "text_pair"
    ds = ds.rename_columns({k: v for k, v in names.items() if k != v})
    features = {c: datasets.Value("string") for c in names.values()}
    return ds.cast(datasets.Features(features))


_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no", ""}


def _columns_to_cell(batch: dict, label_cols: list[str], separator: str, src: LabelledSource) -> list[str]:
    """Several 0/1 label columns -> one multilabel cell per row."""
    cells = []
    n = len(batch[label_cols[0]])
    for i in range(n):
        set_ = []
        for c in label_cols:
            v = str(batch[c][i] if batch[c][i] is not None else "").strip().lower()
            if v in _TRUE:
                set_.append(c)
            elif v not in _FALSE:
                raise UsageError(f"{src.flag} {src.spec}: column '{c}' holds '{batch[c][i]}'; label columns of "
                                 "--task multilabel hold 0 or 1")
        cells.append(separator.join(set_))
    return cells


def label_names(spec: TaskSpec, train_labels: list[str], numeric_classes: bool = False) -> list[str]:
    """The label set: fixed by the task, or read from the training data's label cells as the task's shape
    reads them (shapes.py: classes, the parts of multi-label cells, a regression's one output).
    `numeric_classes`: the user says that continuous-looking numbers are classes all the same."""
    return spec.shape.label_names(spec, train_labels, numeric_classes)


def class_names(train_labels: list[str], numeric_classes: bool = False) -> list[str]:
    """The sorted distinct labels of the training data."""
    # `encode` matches labels ignoring case and surrounding spaces, so 'Sports' and 'sports ' are one
    # label here too (else the set holds a class no example maps to); the most frequent spelling names it.
    check_categorical(train_labels, numeric_classes)
    counts: dict[str, int] = {}
    for v in train_labels:
        if v is not None and v.strip():  # empty labels: `encode` reports them
            counts[v.strip()] = counts.get(v.strip(), 0) + 1
    spellings: dict[str, list[str]] = {}
    for v in sorted(counts, key=lambda v: (-counts[v], v)):
        spellings.setdefault(v.lower(), []).append(v)
    merged = [group for group in spellings.values() if len(group) > 1]
    if merged:  # perhaps meant as different classes: never merged without a word
        log.warning("--train: %s; rename them in the file if they are different classes",
                    "; ".join(_merged(group, counts) for group in merged[:5]))
    values = sorted(group[0] for group in spellings.values())
    if all(_is_int(v) for v in values):
        values = sorted(values, key=lambda v: int(v))
    return values


def _merged(group: list[str], counts: dict[str, int]) -> str:
    listed = [f"'{v}' ({counts[v]})" for v in group]
    return (f"labels {', '.join(listed[:-1])} and {listed[-1]} differ only in case: one label, '{group[0]}' "
            "(labels are matched ignoring case)")


def split_cell(value: str | None, separator: str) -> list[str]:
    """A multilabel cell's labels ('sports; politics' -> ['sports', 'politics']); empty: none."""
    return [p.strip() for p in str(value if value is not None else "").split(separator) if p.strip()]


def check_not_multilabel(labels: list[str], spec: TaskSpec, flag: str = "--train") -> None:
    """Refuse a multi-label file given to a single-label task: its cells ('sports;politics') would each
    become a class of their own."""
    joined = sorted({v.strip() for v in labels if v is not None and len(split_cell(v, spec.separator)) > 1})
    if joined:
        raise UsageError(
            f"{flag}: labels such as '{joined[0]}' hold several labels separated by '{spec.separator}'; for a "
            f"multi-label task pass --task multilabel (if '{spec.separator}' belongs to the label names, "
            "pass another --label-separator)"
        )


def check_categorical(labels: list[str], numeric_classes: bool = False) -> None:
    """Refuse labels that are not classes: missing values written as NaN, or continuous numbers (which
    would silently become hundreds of classes)."""
    import math

    for i, v in enumerate(labels):
        if v is not None and v.strip().lower() in ("nan", "na", "n/a", "null", "none"):
            raise UsageError(f"--train: data row {i + 1} has the label '{v.strip()}', a missing value; "
                             "fill it in or drop the row")
    if numeric_classes:
        return
    numbers = []
    for v in labels:
        try:
            numbers.append(float(v))
        except (TypeError, ValueError):
            return  # class names
    fractional = sorted({x for x in numbers if math.isfinite(x) and not x.is_integer()})
    if fractional and len(set(numbers)) > 10:
        shown = ", ".join(f"{x:g}" for x in fractional[:3])
        raise UsageError(
            f"--train: the labels look continuous ({len(set(numbers))} distinct numbers, such as {shown}); "
            "classification needs classes: for a number per text pass --task regression; else bin the values "
            "into named classes (or pass --numeric-classes to make each distinct value a class)"
        )


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def label_ids(labels, names: list[str], aliases: dict[str, str] | None = None,
              by_id: bool = False) -> tuple[list[int], dict[str, int]]:
    """Label strings as ids of `names`, matched ignoring case and surrounding spaces; `aliases` map other
    spellings to names, and with `by_id` an integer in range is taken as the id itself. Returns the ids
    (-1 where a label is unknown) and the unknown labels with their counts."""
    lookup = {n.lower(): i for i, n in enumerate(names)}
    lookup.update({a.lower(): lookup[v.lower()] for a, v in (aliases or {}).items() if v.lower() in lookup})
    ids, unknown = [], {}
    for v in labels:
        key = str(v if v is not None else "").strip().lower()
        if key in lookup:
            ids.append(lookup[key])
        elif by_id and key.lstrip("-").isdigit() and 0 <= int(key) < len(names):
            ids.append(int(key))
        else:
            unknown[str(v)] = unknown.get(str(v), 0) + 1
            ids.append(-1)
    return ids, unknown


def with_label_ids(ds, ids: list):
    """`ds` with `ids` as its label column (ids, multi-hot rows or numbers), less the rows whose text is empty."""
    ds = ds.remove_columns("label").add_column("label", ids)
    if all(t is not None and t.strip() for t in ds["text"]):
        return ds
    return ds.filter(lambda b: [t is not None and t.strip() != "" for t in b["text"]], batched=True)


def check_pairs(ds, spec: TaskSpec, src_flag: str, src_spec: str) -> None:
    """Both texts of a pair must be there: a pair with one text missing is not a pair."""
    for col, name in (("text", spec.text_columns[0]), ("text_pair", spec.text_columns[1])):
        empty = [i for i, t in enumerate(ds[col]) if t is None or not t.strip()]
        if empty:
            raise UsageError(f"{src_flag} {src_spec}: {len(empty)} row(s) have no '{name}' text (first at data row "
                             f"{empty[0] + 1}); every pair needs both texts: fill them in or drop those rows")


def refuse_empty(labels: list, spec: TaskSpec, src_flag: str, src_spec: str) -> None:
    """One error line for rows whose label cell is empty (a class or a number must be there)."""
    empty = [i for i, v in enumerate(labels) if v is None or str(v).strip() == ""]
    if empty:
        raise UsageError(f"{src_flag} {src_spec}: {len(empty)} row(s) have an empty '{spec.label_column}' value "
                         f"(first at data row {empty[0] + 1}); fill them in or drop those rows")


def nonempty(ds, labels: list, src_flag: str, src_spec: str):
    """`ds` with `labels` as its label column, less the rows without text; refused when none is left."""
    ds = with_label_ids(ds, labels)
    if len(ds) == 0:
        raise UsageError(f"{src_flag} {src_spec}: holds no rows with text")
    return ds


def encode(ds, names: list[str], spec: TaskSpec, src_flag: str, src_spec: str, trained: bool = False):
    """Map label strings to what the model learns, as the task's shape reads them (class ids, multi-hot
    rows, numbers); one error line for empty labels, unknown labels, non-numeric targets, half pairs or
    empty texts. `trained`: `names` are a trained classifier's (nlptl evaluate): the labels of a file it
    is scored on, where a class may also be given as its id."""
    if spec.pairs:
        check_pairs(ds, spec, src_flag, src_spec)
    return spec.shape.encode(ds, names, spec, src_flag, src_spec, trained)


def read_encoded(src: LabelledSource, names: list[str], spec: TaskSpec, trained: bool = False):
    """A labelled file read (`read_labelled`) and encoded (`encode`) for a model with the labels `names`."""
    return encode(read_labelled(src, spec), names, spec, src.flag, src.spec, trained)
