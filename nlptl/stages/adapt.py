"""Stage 2: domain adaptation. Continue a language model on unlabeled in-domain text.

    nlptl adapt --corpus reviews                          # from the latest pretrain run
    nlptl adapt --from runs/pretrain-... --corpus reviews.txt --out runs/adapted
    nlptl adapt --from DIR --corpus task:sentiment --train train.csv   # task-adaptive (TAPT)
    nlptl adapt --from DIR --corpus reviews --lora --merge              # LoRA adapters, merged at the end
    nlptl adapt --from DIR --corpus reviews:0.95,wikitext-103:0.05      # replay 5% general text
    nlptl adapt --from DIR --corpus big/ --streaming --max-steps 12500  # read as it goes, nothing cached
    nlptl adapt --from DIR --corpus hf:Salesforce/wikitext:wikitext-2-raw-v1@train --streaming --max-steps 100

    nlptl adapt --from DIR --objective contrastive --corpus task:sentiment --train train.csv  # label pairs (SetFit)

A corpus is tokenized once, on every core, and cached (`nlptl preprocess` does it ahead, without a GPU).

The objective follows the model (MLM for encoders, CLM for decoders). A checkpoint without an LM head
(a bare BertModel such as all-MiniLM-L6-v2) gets one; its other weights (BERT's pooler) are kept.
`--objective contrastive` trains the encoder on pairs of the task's labelled examples instead
(stages/contrastive.py): an adapt stage because it adapts the encoder, not a classifier, and composes
like one (general -> domain MLM/CLM -> contrastive -> finetune).
"""

from __future__ import annotations

from nlptl.config import AdaptConfig
from nlptl.data.corpora import mixture_key, resolve_corpora
from nlptl.errors import UsageError
from nlptl.models import inspect_model, positions_of, require_peft
from nlptl.probe import probe_spec
from nlptl.rundir import default_from, lineage_of
from nlptl.stages.common import Run, check_block_size, open_stage, start


def run(cfg: AdaptConfig, command: list[str] | None = None) -> dict:
    """`command`: the arguments `nlptl` was given (None from Python), which the record quotes."""
    # Everything that needs only the arguments, config.json and file headers, before torch loads.
    if cfg.lora:
        require_peft()
    ref = inspect_model(cfg.from_model or default_from("adapt"))
    if ref.is_classifier:
        raise UsageError(
            f"--from {ref.spec} is a fine-tuned classifier; adapt continues a language model: pass a pretrain or adapt "
            "run, or a base checkpoint"
        )
    if ref.config:
        check_block_size(cfg.block_size, positions_of(ref.config))
    corpora = resolve_corpora(cfg.corpus, cfg.text_column, cfg.train_file)
    probe = probe_spec(cfg) if cfg.objective != "contrastive" else None  # its file and columns, checked now
    with open_stage(cfg, "adapt", ref.path if ref.local else None, {"--corpus": mixture_key(corpora)},
                    command) as opened:
        return adapt(opened, ref, corpora, probe)


def adapt(run: Run, ref, corpora: list, probe) -> dict:
    """The stage once its Run is open: contrastive, or the language-model flow (stages/lm.py)."""
    cfg = run.cfg
    if cfg.objective == "contrastive":
        from nlptl.stages.contrastive import contrastive_stage

        return contrastive_stage(run, ref, accelerator=start(cfg, run.out), lineage=lineage_of("adapt", ref))

    from nlptl import handoff
    from nlptl.stages.lm import lm_from, lm_stage

    accelerator = start(cfg, run.out)
    model = lm_from(cfg, ref)
    if model["kept"]:
        kept = model["kept"]
        model["notes"].append(f"keeping {len(kept)} tensors the LM class does not use "
                              f"({', '.join(sorted(kept)[:2])}...) for finetune")
    # The pooling the base was trained with goes on to the classifier (all-MiniLM-L6-v2: mean); the
    # probe pools as that classifier will.
    config = model["model"].config
    carried = handoff.carried_pooling(ref)
    pooling = handoff.pooling(ref, config, cfg.pooling)
    lineage = lineage_of("adapt", ref, choices=handoff.announce(*adapt_choices(cfg, model, carried)),
                         probe=probe.train.record() if probe is not None else None,
                         handoff=handoff.record(pooling=carried, objective=model["objective"], config=config,
                                                origin_of=handoff.lm_origin(ref)))
    return lm_stage(run, accelerator=accelerator, corpora=corpora, lineage=lineage, pooling=pooling.value, probe=probe,
                    **model)


def adapt_choices(cfg: AdaptConfig, model: dict, carried) -> list:
    """adapt's `auto` choices, each with its reason (handoff.Choice)."""
    from nlptl import handoff, rates

    choices = [carried]
    if cfg.objective == "auto":
        choices.append(handoff.Choice("objective", model["objective"], "the family's language-model objective "
                                      "(MLM where transformers has a masked-LM class, else CLM)"))
    if cfg.lr is None:  # the default for the objective (--lr auto chooses in the loop's stage: lm_stage)
        choices.append(rates.resolve(cfg, objective=model["objective"]).choice)
    if model["head_added"] and cfg.head_warmup and not cfg.lora:
        choices.append(handoff.Choice("head_warmup", cfg.head_warmup, "the checkpoint has no LM head: the new one "
                                      "trains alone for this share of the steps, the body frozen"))
    if cfg.probe is None and cfg.corpus.startswith("task:") and cfg.train_file:
        choices.append(handoff.Choice("probe", cfg.train_file, "the task's --train (--corpus task:NAME)"))
    return choices
