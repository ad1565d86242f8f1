"""`adapt --probe FILE`: does adapting help the task, before anyone fine-tunes?

A linear probe on frozen features: each labelled text of FILE is encoded by the model's body and
pooled (as the classifier after it will pool), and a logistic regression (scikit-learn, features
standardised) is scored on those features by stratified k-fold cross-validation. Nothing of the probe
trains the model. It is scored before adaptation and at each evaluation; the adapt stage keeps the
checkpoint with the best probe score and warns when the last one ends below the start. Perplexity says
how well the model predicts the domain's words; the probe says whether its features still separate the
task's labels, which is what the classifier needs (issue 24: adapting all-MiniLM-L6-v2 with MLM lowered
the classifier's accuracy while perplexity fell).
"""

from __future__ import annotations

import logging

from nlptl.errors import UsageError

log = logging.getLogger("nlptl")

FOLDS = 5
MAX_EXAMPLES = 2000  # a probe of more texts costs more at every evaluation and says little more
BATCH = 64


def probe_spec(cfg):
    """The labelled file of `adapt --probe` (or, with --corpus task:NAME and no --probe, the task's
    --train) as a task spec, or None when the run has no probe. Checked (file, columns) before anything
    heavy runs."""
    from nlptl.data import registry
    from nlptl.data.tasks import TaskSpec, labelled_source
    from nlptl.shapes import by_name

    task = cfg.corpus.split(":", 1)[1] if cfg.corpus and cfg.corpus.startswith("task:") else None
    path = cfg.probe or (cfg.train_file if task else None)
    if path is None:
        return None
    entry = registry.task_entry(task or "classification")
    if not by_name(entry.problem).one_label:
        raise UsageError(f"--probe {path}: the probe scores one label per text; "
                         f"--corpus task:{task} is {entry.problem}")
    source = labelled_source(path, "--probe" if cfg.probe else "--train", cfg.text_column, cfg.label_column)
    return TaskSpec(entry, source, None, cfg.text_column, cfg.label_column)


class Probe:
    """The probe's texts (tokenized once) and labels, scored on any model that shares the tokenizer."""

    def __init__(self, spec, tokenizer, pooling: str, max_length: int, seed: int, accelerator):
        from nlptl.data.tasks import encode, label_names, read_labelled

        with accelerator.main_process_first():
            raw = read_labelled(spec.train, spec)
            try:
                self.names = label_names(spec, raw["label"])
            except UsageError as e:
                if "--task" not in str(e):
                    raise
                # The task's advice (--task multilabel, --numeric-classes) is finetune's; adapt has neither.
                raise UsageError(f"{spec.train.flag} {spec.train.spec}: the probe takes one label per text, which "
                                 f"these labels are not ({str(e).split(':', 1)[-1].split(';')[0].strip()})") from None
            ds = encode(raw, self.names, spec, spec.train.flag, spec.train.spec)
        if len(ds) > MAX_EXAMPLES:
            ds = ds.shuffle(seed=seed).select(range(MAX_EXAMPLES))
        self.labels = list(ds["label"])
        counts = [self.labels.count(k) for k in set(self.labels)]
        if len(counts) < 2 or min(counts) < 2:
            raise UsageError(f"{spec.train.flag} {spec.train.spec}: the probe needs at least two labels with two "
                             f"examples each (has {len(self.labels)} examples of {len(counts)} label(s))")
        self.folds = min(FOLDS, min(counts))
        self.input_ids = tokenizer(list(ds["text"]), truncation=True, max_length=max_length)["input_ids"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pooling, self.seed, self.spec = pooling, seed, spec

    def features(self, model, device):
        """The pooled last hidden states of the body of the language model `model` for every probe text,
        as a numpy array."""
        import torch

        from nlptl.models.heads import pool

        body = getattr(model, getattr(model, "base_model_prefix", ""), model)  # the LM's body, without its head
        was_training = body.training
        body.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(self.input_ids), BATCH):
                chunk = self.input_ids[start:start + BATCH]
                width = max(len(ids) for ids in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, row in enumerate(chunk):
                    ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
                hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                out.append(pool(hidden.float(), mask.to(device), self.pooling).cpu())
        body.train(was_training)
        return torch.cat(out).numpy()

    def chance(self) -> tuple[float, float]:
        """The majority label's share, and the accuracy a probe must pass to tell anything: two standard
        errors above that share at this many texts (100 texts of two balanced labels: 0.60)."""
        majority = max(self.labels.count(k) for k in set(self.labels)) / len(self.labels)
        return majority, majority + 2 * (majority * (1 - majority) / len(self.labels)) ** 0.5

    def guards(self, accuracy: float) -> bool:
        """Whether a probe that scores `accuracy` on the starting body can guard adaptation. At chance, its
        scores at later evaluations differ by noise alone, and the best of them is a random pick (a tiny GPT
        pretrained from scratch: 0.43-0.58 on 100 texts, issue 24); the stage then selects as without it."""
        majority, bar = self.chance()
        if accuracy > bar:
            log.info("probe: %.3f before adapting, above chance (%.3f): the kept checkpoint is the best by probe",
                     accuracy, bar)
            return True
        log.warning("the probe cannot guard this run: its accuracy before adapting, %.3f on %d texts of %s, is within "
                    "chance (the majority label's share %.3f; it would need more than %.3f to tell anything); "
                    "checkpoints are selected by held-out perplexity, and the probe is scored for the record only",
                    accuracy, len(self.labels), self.spec.train.spec, majority, bar)
        return False

    def score(self, model, device) -> float:
        """Cross-validated accuracy of a logistic regression on the frozen features."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        folds = StratifiedKFold(n_splits=self.folds, shuffle=True, random_state=self.seed)
        scores = cross_val_score(classifier, self.features(model, device), self.labels, cv=folds, scoring="accuracy")
        return round(float(scores.mean()), 4)
