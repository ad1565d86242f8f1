"""Inference with a fine-tuned classifier, for every task shape: what `nlptl predict` runs, and what a
server or an exported model answers with.

The task shape is the checkpoint's `config.problem_type`, as transformers names it; its `outputs`
(nlptl/shapes.py) make the answers:

- single_label_classification: softmax; {"label", "score", "scores"}
- multi_label_classification: sigmoid; every label at or above the threshold (`config.nlptl_threshold`,
  default 0.5): {"labels", "scores", "threshold"}
- regression: the number itself: {"value"}

A finetune run's classifier holds a temperature (`config.nlptl_temperature`, fitted on its eval split:
nlptl/calibration.py): its scores are the calibrated probabilities, softmax (sigmoid) of logits / T, and
its multi-label threshold is moved with them, so the labels stay those of the raw scores. `raw_scores`
gives the scores of the logits themselves; a model without a temperature answers with those.
`abstain_below` P (one label of a set): a result whose score is under P has "label": null and
"abstain": true, with its scores.

A model trained on text pairs (`config.nlptl_text_pair`) takes (text, text_pair) and its results carry
both. A result has "truncated": true when the text was longer than the model's input and was cut. A
blank text is not classified: its result is {"text": ..., "error": "blank text: nothing to classify"}.
"""

from __future__ import annotations

from nlptl.shapes import of_config

DEFAULT_THRESHOLD = 0.5
WHOLE_DOCUMENT = 10**7  # tokens: no cut, in effect, for a classifier that windows its input


def problem_type(config) -> str:
    """The task shape a classifier's config says it was trained for, as transformers names it."""
    return of_config(config).problem_type


def label_names(config) -> list[str]:
    return [config.id2label[i] for i in range(config.num_labels)]


def threshold_of(config) -> float:
    return float(getattr(config, "nlptl_threshold", None) or DEFAULT_THRESHOLD)


def takes_pairs(config) -> bool:
    return bool(getattr(config, "nlptl_text_pair", False))


def temperature_of(config) -> float | None:
    """The temperature finetune fitted (calibration.py), or None: a model trained before, or a regression."""
    return getattr(config, "nlptl_temperature", None)


def outputs(logits, config, threshold: float | None = None, raw_scores: bool = False,
            abstain_below: float | None = None) -> list[dict]:
    """[batch, num_labels] logits (a tensor or nested lists) -> one result per row, for the config's shape:
    calibrated by the config's temperature unless `raw_scores`. `threshold`: on the scale of the scores
    answered (default: the config's, which is the raw scores', moved with the temperature)."""
    import torch

    logits = torch.as_tensor(logits).float()
    shape = of_config(config)
    temperature = None if raw_scores or shape.calibration is None else temperature_of(config)
    if threshold is None:
        threshold = threshold_of(config)
        if temperature:
            threshold = shape.calibration.threshold(threshold, temperature)
    results = shape.outputs(logits / temperature if temperature else logits, label_names(config), threshold)
    if abstain_below is not None:
        for r in results:
            if r["score"] < abstain_below:
                r.update(label=None, abstain=True)
    return results


def check_abstain(config, abstain_below: float | None, flag: str = "--abstain-below") -> None:
    """--abstain-below compares one answer's probability with P: a model of one label of a set only."""
    from nlptl.errors import UsageError

    shape = of_config(config)
    if abstain_below is not None and not (shape.one_label and shape.calibration is not None):
        raise UsageError(f"{flag} {abstain_below:g}: abstaining compares the top label's probability with it, and a "
                         f"{shape.name} model has no single top label; leave out {flag}")


# The one rule for blank texts, in `nlptl predict` (arguments and every line of --input) and in `nlptl
# serve`: a text that is empty or only whitespace (with its pair, for a pair model) is not classified (a
# label for nothing would look like an answer); its result, in its place, is {"text", "error": BLANK}.
BLANK = "blank text: nothing to classify"


def is_blank(text: str, text_pair: str | None = None) -> bool:
    return not text.strip() and not (text_pair or "").strip()


EXPORT_RECORD = "nlptl-export.json"  # what `nlptl export` writes next to model.onnx
ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"  # optimum's name for a quantized model (`nlptl export --quantize int8`)


class Classifier:
    """A fine-tuned classifier loaded once, answering batches of texts (or pairs) in input order.

        import nlptl
        classifier = nlptl.Classifier.from_pretrained("runs/finetune-...")   # or an `nlptl export` directory
        classifier.predict(["A joy from start to finish.", "Two hours I will never get back."])
        # [{"text": ..., "label": "positive", "score": 0.97, "scores": {...}}, ...]

    `ref`: a models.ModelRef of a classifier; `max_length`: input cut (default: what it was trained with;
    a long-document classifier reads whole documents, as `pipeline()` gives them to it). Subclasses
    (OnnxClassifier) change only where the logits come from (`logits`)."""

    backend = "torch"

    @classmethod
    def from_pretrained(cls, path, backend: str = "auto", max_length: int | None = None, device=None, int8=False,
                        raw_scores: bool = False, abstain_below: float | None = None):
        """The classifier of a finetune run, a classifier checkpoint or an `nlptl export --format onnx`
        directory (then run by onnxruntime), as `nlptl predict --model` loads it; on `device` (default: the
        first GPU, else the CPU). Its scores are calibrated (see the module docstring) unless `raw_scores`;
        `abstain_below`: answer "abstain" under that top probability."""
        return load_classifier(str(path), backend, max_length, "path", int8=int8, device=device,
                               raw_scores=raw_scores, abstain_below=abstain_below)

    def predict(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32,
                threshold: float | None = None) -> list[dict]:
        """One result per text, in order: what `nlptl predict --json` prints (the form of the model's task
        shape: "label", "score" and "scores" for one label of a set; see the module docstring)."""
        return self(list(texts), None if text_pairs is None else list(text_pairs), batch_size, threshold)

    raw_scores = False  # the scores of the logits themselves, not calibrated by the temperature
    abstain_below: float | None = None  # answer "abstain" when the top score is under this

    def __init__(self, ref, max_length: int | None = None, device=None):
        from nlptl import models, runtime

        self.model, self.tokenizer, self.names, trained_length = models.load_trained_classifier(ref)
        self.config = self.model.config
        # A long-document classifier cuts its input into windows itself (heads.py): the whole text goes in.
        whole = WHOLE_DOCUMENT if getattr(self.config, "nlptl_window", None) else None
        self.max_length = max_length or whole or trained_length
        self.device = device or runtime.inference_device()
        self.model.to(self.device).eval()
        self.shape = of_config(self.config)
        self.problem = self.shape.problem_type
        self.pairs = takes_pairs(self.config)
        self.source = ref.path
        self.lineage = (ref.run or {}).get("lineage")

    def encode(self, texts: list[str], text_pairs: list[str] | None = None):
        """Tokenized batch (padded, cut to max_length) and, per text, whether it was cut."""
        pairs = text_pairs if text_pairs is not None else None
        full = self.tokenizer(texts, pairs)["input_ids"]
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return enc, [len(ids) > self.max_length for ids in full]

    def logits(self, enc):
        """[batch, num_labels] logits of a tokenized batch (call under torch.inference_mode())."""
        return self.model(**enc.to(self.device)).logits

    def check_pairs(self, text_pairs) -> None:
        if self.pairs and text_pairs is None:
            raise ValueError("this classifier was trained on text pairs: pass text_pairs")
        if not self.pairs and text_pairs is not None:
            raise ValueError("this classifier takes single texts, not pairs")

    def info(self) -> dict:
        """What a server tells about the model (GET /info)."""
        return {"model": self.source, "backend": self.backend, "problem_type": self.problem, "labels": self.names,
                "text_pairs": self.pairs, "max_length": self.max_length, "device": str(self.device),
                "temperature": temperature_of(self.config), "raw_scores": self.raw_scores,
                "abstain_below": self.abstain_below, "lineage": self.lineage}

    def __call__(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32,
                 threshold: float | None = None, max_tokens: int | None = None) -> list[dict]:
        """Results in input order. Texts run in batches of similar length, at most `batch_size` texts, and
        with `max_tokens` at most that many tokens (texts x longest, padding included) per batch."""
        import torch

        self.check_pairs(text_pairs)
        results: list = [None] * len(texts)

        def head(i: int) -> dict:
            return {"text": texts[i]} | ({"text_pair": text_pairs[i]} if text_pairs else {})

        # A blank text is answered, in its place, without the model (see BLANK).
        todo = [i for i in range(len(texts)) if not is_blank(texts[i], text_pairs[i] if text_pairs else None)]
        for i in set(range(len(texts))) - set(todo):
            results[i] = head(i) | {"error": BLANK}
        sub, sub_pairs = [texts[i] for i in todo], [text_pairs[i] for i in todo] if text_pairs else None
        with torch.inference_mode():
            for idx in self.batches(sub, sub_pairs, batch_size, max_tokens):
                idx = [todo[j] for j in idx]
                enc, cut = self.encode([texts[i] for i in idx], [text_pairs[i] for i in idx] if text_pairs else None)
                logits = self.logits(enc)
                answers = outputs(logits, self.config, threshold, self.raw_scores, self.abstain_below)
                for i, res, was_cut in zip(idx, answers, cut, strict=True):
                    results[i] = head(i) | res | ({"truncated": True} if was_cut else {})
        return results

    def batches(self, texts: list[str], text_pairs: list[str] | None, batch_size: int, max_tokens: int | None):
        """Indices of the texts, batch by batch. Sorting by length keeps padding (and time) low: a batch
        costs as much as its longest text times its size. Without `max_tokens`, by characters (no
        tokenizing); with it, by tokens, and a batch closes once the next text would take it over budget
        (a server's batch of short and long texts: the long ones run apart)."""
        if max_tokens is None:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(text_pairs[i] if text_pairs else ""))
            yield from (order[s : s + batch_size] for s in range(0, len(order), batch_size))
            return
        ids = self.tokenizer(texts, text_pairs, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) >= batch_size or (len(batch) + 1) * len(ids[i]) > max_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch


class BatchClassifier:
    """A classifier for engines that hand over batches of columns: Ray Data's `map_batches` (a callable
    class, so each actor loads the model once), pandas. It takes a batch (a dict of columns, numpy
    arrays or lists, or a DataFrame) and gives it back with the answer's columns added: those of the
    model's task shape ("label", "score", "scores" for one label of a set), then "truncated" and "error"
    (a blank text's: its other columns are empty), the same columns for every batch.

        ds.map_batches(nlptl.BatchClassifier, fn_constructor_kwargs={"model": "runs/finetune-..."},
                       batch_size=256, concurrency=2)
    """

    def __init__(self, model: str, text_column: str = "text", pair_column: str | None = None,
                 batch_size: int = 32, max_length: int | None = None, backend: str = "auto", device=None):
        import torch

        self.classifier = Classifier.from_pretrained(model, backend, max_length, device)
        self.text_column, self.pair_column, self.batch_size = text_column, pair_column, batch_size
        # The shape's answer, from logits of zeros: its keys name the columns, whatever the batch holds.
        answer = outputs(torch.zeros(1, len(self.classifier.names)), self.classifier.config)[0]
        self.columns = [*answer, "truncated", "error"]

    def __call__(self, batch):
        texts = [_text(t) for t in batch[self.text_column]]
        pairs = [_text(t) for t in batch[self.pair_column]] if self.pair_column else None
        results = self.classifier(texts, pairs, self.batch_size)
        out = batch.copy()
        for column in self.columns:
            default = False if column == "truncated" else None
            out[column] = [r.get(column, default) for r in results]
        return out


def _text(value) -> str:
    """A cell as a text: an empty one (None, NaN) is blank (answered as blank)."""
    return value if isinstance(value, str) else "" if value is None or value != value else str(value)


def is_onnx_export(path) -> bool:
    """Whether a directory is what `nlptl export --format onnx` wrote (model.onnx and its record)."""
    from pathlib import Path

    return (Path(path) / ONNX_FILE).is_file() and (Path(path) / EXPORT_RECORD).is_file()


ONNX_MISSING = "the onnx backend needs onnxruntime: pip install 'nlptl[onnx]' (or pip install onnxruntime)"


def onnx_session(path, threads: int | None = None):
    """An onnxruntime CPU session of an .onnx file, with as many threads as torch uses (so a comparison
    of the two backends is fair, and a server does not oversubscribe the cores)."""
    import importlib.util

    from nlptl.errors import UsageError

    if importlib.util.find_spec("onnxruntime") is None:
        raise UsageError(ONNX_MISSING)
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxClassifier(Classifier):
    """A classifier exported by `nlptl export --format onnx`, run by onnxruntime on the CPU. Same
    tokenizer, same results (`outputs`), other engine: `onnx_file` picks the int8 file instead of
    model.onnx. (Never the record's choice: an int8 model answers a little differently from torch, so it
    runs only when asked for, with --int8.)"""

    backend = "onnx"

    def __init__(self, directory, max_length: int | None = None, onnx_file: str | None = None):
        import json
        from pathlib import Path

        from nlptl import models

        directory = Path(directory)
        record = json.loads((directory / EXPORT_RECORD).read_text(encoding="utf-8"))
        ref = models.ModelRef(str(directory), str(directory), True, None, None)
        self.config, self.tokenizer = models.load_config_and_tokenizer(ref)
        self.names = label_names(self.config)
        self.max_length = max_length or record["max_length"]
        self.file = onnx_file or ONNX_FILE
        self.session = onnx_session(directory / self.file)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.device = "cpu"
        self.shape = of_config(self.config)
        self.problem = self.shape.problem_type
        self.pairs = takes_pairs(self.config)
        self.source = str(directory)
        self.lineage = record.get("lineage")

    def logits(self, enc):
        import torch

        feed = {name: enc[name].numpy() for name in self.inputs}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def info(self) -> dict:
        return super().info() | {"onnx_file": self.file}


def onnx_file(spec: str, int8: bool, flag: str = "--model") -> str | None:
    """The .onnx file of `spec` to run: model.onnx, or with `int8` the quantized one, which must exist
    (None: `spec` is no ONNX export, and --int8 was not asked for)."""
    from pathlib import Path

    from nlptl.errors import UsageError

    if not is_onnx_export(spec):
        if int8:
            raise UsageError(f"{flag} {spec}: --int8 needs an ONNX export made with `nlptl export --format onnx "
                             "--quantize int8`")
        return None
    if int8 and not (Path(spec) / QUANTIZED_FILE).is_file():
        raise UsageError(f"{flag} {spec}: --int8, but the export has no {QUANTIZED_FILE}; export it again with "
                         "--quantize int8 (or leave out --int8 for the fp32 model)")
    return QUANTIZED_FILE if int8 else ONNX_FILE


def load_classifier(spec: str, backend: str = "auto", max_length: int | None = None, flag: str = "--model",
                    int8: bool = False, device=None, raw_scores: bool = False, abstain_below: float | None = None):
    """A Classifier of a finetune run / checkpoint (torch, on `device`, by default runtime.inference_device())
    or of an ONNX export (onnxruntime on the CPU, fp32 unless `int8`), answering with calibrated scores
    unless `raw_scores`, and "abstain" under `abstain_below`. backend auto: onnx for an export directory,
    torch otherwise."""
    classifier = _load_classifier(spec, backend, max_length, flag, int8, device)
    check_abstain(classifier.config, abstain_below)
    classifier.raw_scores, classifier.abstain_below = raw_scores, abstain_below
    return classifier


def _load_classifier(spec: str, backend: str, max_length: int | None, flag: str, int8: bool, device):
    from nlptl.errors import UsageError

    exported = is_onnx_export(spec)
    file = onnx_file(spec, int8, flag)
    if backend == "onnx" and not exported:
        raise UsageError(f"{flag} {spec}: --backend onnx needs a directory written by `nlptl export --format onnx` "
                         f"(model.onnx and {EXPORT_RECORD}); export it first")
    if backend == "torch" and exported:
        raise UsageError(f"{flag} {spec}: is an ONNX export; "
                         "use --backend onnx (or pass the finetune run it came from)")
    if exported:
        return OnnxClassifier(spec, max_length, onnx_file=file)
    from nlptl.models import inspect_model

    # (The stages check --max-length against the model's positions before they get here.)
    ref = inspect_model(spec, flag)
    if not ref.is_classifier:
        raise UsageError(f"{flag} {ref.spec} is not a classifier; it needs a finetune run")
    return Classifier(ref, max_length, device)
