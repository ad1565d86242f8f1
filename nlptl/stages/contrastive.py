"""Contrastive task adaptation (`nlptl adapt --objective contrastive`): the encoder learns, from sentence
pairs drawn from the labelled examples, to put texts of one label close together and texts of different
labels apart (SetFit's first stage, Tunstall et al. 2022). A classifier head then has an easy job.

    nlptl adapt --from sentence-transformers/all-MiniLM-L6-v2 --objective contrastive \
        --corpus task:sentiment --train train.csv --out runs/contrastive
    nlptl finetune --from runs/contrastive --task sentiment --train train.csv --eval dev.csv

Pairs: per labelled example, `--pairs-per-example` pairs, half with a random other example of its label
(target 1), half with a random example of another label (target 0); SetFit 0.x's `num_iterations`
sampler, seeded by --seed. Loss: `--pair-loss cosine` (SetFit's default, sentence-transformers'
CosineSimilarityLoss: mean squared error between the cosine of the two embeddings and the target) or
`contrastive` (sentence-transformers' ContrastiveLoss: squared cosine distance for positives, squared
hinge below a margin of 0.5 for negatives). A sentence is its pooled last hidden state (--pooling; texts
are cut at --block-size tokens); encoders and decoders alike.

It is an ordinary stage: train() runs it (resumable, checkpoints), its directory is a Hugging Face
checkpoint (the bare encoder) plus sentence-transformers' `modules.json` and `1_Pooling/` naming its
pooling, which `finetune --pooling auto` reads, and which makes it a SentenceTransformer too.
"""

from __future__ import annotations

import logging
import random

from nlptl.config import AdaptConfig
from nlptl.errors import UsageError
from nlptl.models.contrastive import pair_encoder
from nlptl.stages.common import Run, write_stage

log = logging.getLogger("nlptl")

N_SCORED_PAIRS = 512  # held-out pairs scored before and after training


def draw_pairs(labels: list[int], per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """(i, j, target) index pairs: for each of `per_example` rounds, every example i gets a partner j —
    in even rounds another example of its label (target 1.0), in odd rounds one of another label (0.0).
    An example alone in its label gets no positive pair (a pair with itself teaches nothing)."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    if len(by_label) < 2:
        raise UsageError("--objective contrastive needs examples of at least two labels in --train")
    others = {y: [i for i, z in enumerate(labels) if z != y] for y in by_label}
    pairs: list[tuple[int, int, float]] = []
    for round_ in range(per_example):
        for i, y in enumerate(labels):
            if round_ % 2:
                pairs.append((i, rng.choice(others[y]), 0.0))
                continue
            same = by_label[y]
            if len(same) < 2:
                continue
            # Uniform over the label's other examples: draw among all but the last; i drawn means the last.
            j = same[rng.randrange(len(same) - 1)]
            pairs.append((i, same[-1] if j == i else j, 1.0))
    return pairs


class PairCollator:
    """A batch of B pairs -> the 2B texts padded together (the B first ones, then their B partners),
    and the B targets as `labels`."""

    def __init__(self, tokenizer, input_ids: list[list[int]]):
        self.tokenizer, self.input_ids = tokenizer, input_ids

    def __call__(self, pairs):
        import torch

        from nlptl.runtime import pad_multiple

        seqs = [self.input_ids[i] for i, _, _ in pairs] + [self.input_ids[j] for _, j, _ in pairs]
        batch = self.tokenizer.pad({"input_ids": seqs}, return_tensors="pt", pad_to_multiple_of=pad_multiple())
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": torch.tensor([t for _, _, t in pairs], dtype=torch.float32)}


def labelled_texts(cfg: AdaptConfig, tokenizer, accelerator):
    """The task's --train file: (task spec, label names, token ids per text, label id per text)."""
    from nlptl.data.tasks import encode, label_names, read_labelled, resolve_task

    spec = resolve_task(cfg.corpus.split(":", 1)[1], cfg.train_file, None, cfg.text_column, cfg.label_column)
    with accelerator.main_process_first():
        raw = read_labelled(spec.train, spec)
        names = label_names(spec, raw["label"])
        ds = encode(raw, names, spec, "--train", spec.train.spec)
    if len(set(ds["label"])) < 2:  # (encode refused a file without rows)
        raise UsageError(f"--objective contrastive needs examples of at least two labels in --train; "
                         f"{spec.train.spec} has {len(ds)} examples, all labelled {names[ds['label'][0]]!r}")
    input_ids = tokenizer(list(ds["text"]), truncation=True, max_length=cfg.block_size)["input_ids"]
    return spec, names, input_ids, list(ds["label"])


def mean_pair_loss(model, pairs, collate, batch_size: int, device) -> float:
    """The pair loss of `model` over `pairs`, without training (dropout off)."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            total += model(**batch).loss.item() * len(chunk)
    model.train()
    return total / len(pairs)


def contrastive_stage(run: Run, ref, *, accelerator, lineage: dict) -> dict:
    """Train `ref`'s encoder on label pairs of the task's --train file and write the run's directory."""
    from transformers import AutoModel

    from nlptl import handoff, models, rates
    from nlptl.objective import Objective
    from nlptl.train import train

    cfg = run.cfg
    config, tokenizer = models.load_config_and_tokenizer(ref)
    pooling_choice = handoff.pooling(ref, config, cfg.pooling, sentence=True)
    chosen = rates.resolve(cfg, objective="contrastive")
    choices = handoff.announce(pooling_choice, chosen.choice)
    pooling = pooling_choice.value
    spec, names, input_ids, labels = labelled_texts(cfg, tokenizer, accelerator)
    pairs = draw_pairs(labels, cfg.pairs_per_example, cfg.seed)
    # Held-out scoring: other pairs of the same examples (another seed), the same before and after.
    scored = draw_pairs(labels, 2, cfg.seed + 1_000_003)[:N_SCORED_PAIRS]
    log.info("%s: %d labelled examples (%d labels) -> %d pairs (%d positive), %s loss, %s pooling",
             spec.train.spec, len(labels), len(names), len(pairs), sum(t == 1.0 for *_, t in pairs), cfg.pair_loss,
             pooling)

    try:
        encoder = AutoModel.from_pretrained(ref.path, config=config)
    except Exception as e:  # noqa: BLE001 - one line
        raise models.load_error(ref, e) from e
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None and pooling != "cls":
        # BERT's pooler (dense + tanh on the first token) gets no gradient here: frozen, kept as it is.
        pooler.requires_grad_(False)
    model = pair_encoder(encoder, pooling, cfg.pair_loss)
    collate = PairCollator(tokenizer, input_ids)

    def score(m) -> float:
        return mean_pair_loss(m, scored, collate, cfg.batch_size, accelerator.device)

    train_cfg = chosen.apply(cfg)  # the record keeps --lr as given; training gets the rate
    with run.open_log(accelerator) as runlog:
        before = score(model.to(accelerator.device))
        runlog.log({"step": 0, "eval_pair_loss": before})
        # The pair loss on batches of pairs; with --patience, evaluations on the held-out pairs, the best
        # checkpoint kept (none otherwise).
        selection = ({"evaluate": lambda m: {"pair_loss": score(accelerator.unwrap_model(m))},
                      "select": ("pair_loss", "min"), "evaluations": 4} if cfg.patience else {})
        model, result = train(accelerator, model, pairs, train_cfg, Objective(collate, **selection),
                              description="adapt (contrastive)", checkpoints=run.checkpoints(), runlog=runlog)
        after = score(model)
        runlog.log({"step": result.steps, "eval_pair_loss": after})
    metrics = {
        "pair_loss": after,
        "pair_loss_before": before,
        "loss": result.final_loss,
        "steps": result.steps,
        "n_train": len(labels),
        "n_pairs": len(pairs),
        "lr": train_cfg.lr,
        "train_tokens": result.train_tokens,
        "train_seconds": round(result.train_seconds, 3),
        **result.device_metrics(),
        **({"best_step": result.best_step} if result.patience else {}), **result.early_stop_metrics(),
        "output_dir": str(run.out),
    }
    lineage.update(objective="contrastive", task=spec.entry.name, train=spec.train.record(), labels=names,
                   pairs=len(pairs), pairs_per_example=cfg.pairs_per_example, pair_loss=cfg.pair_loss,
                   pooling=pooling, steps=result.steps, tokens_seen=result.train_tokens,
                   choices=choices,
                   handoff=handoff.record(pooling=pooling, origin_of=handoff.CONTRASTIVE, objective="contrastive",
                                          config=config, body=handoff.lm_origin(ref)))

    def write(w) -> dict:
        w.save_model(model.encoder, tokenizer)
        models.save_sentence_pooling(w.path, pooling, config.hidden_size, cfg.block_size)
        return {"history": result.history}

    return write_stage(run, metrics=metrics, lineage=lineage, write=write, accelerator=accelerator)
