#!/usr/bin/env bash
# Scaling out: the same stages on several processes (GPUs, or CPU processes for a try-out). Every
# stage runs unchanged under torchrun or accelerate launch: the data is sharded across processes and
# only the main process writes files and prints results.
#
#   bash examples/05-scale-out.sh [RUNS_DIR]          # NPROC=8 on an 8-GPU machine
#
# --batch-size is per process: the global batch is batch x processes x --grad-accum, so keep their
# product when you change NPROC. Resume a multi-process run with as many processes as it had.
# On a CPU-only machine torchrun starts NPROC gloo processes (slower than one: this is for trying it).
# STEPS=N makes it a smoke run: N steps per stage, small vocabulary, short blocks and texts.
set -euo pipefail
RUNS="${1:-runs/scale-out}"
NPROC="${NPROC:-2}"
BATCH="${BATCH:-16}"
limit=${STEPS:+--max-steps $STEPS}
block=${STEPS:+--block-size 32}
launch=(torchrun --standalone --nproc_per_node "$NPROC" -m nlptl)
# The same with accelerate (multi-node, FSDP or DeepSpeed come from `accelerate config`):
#   launch=(accelerate launch --multi_gpu --num_processes "$NPROC" -m nlptl)

# Stage 1 in one process is fine for a small model; large pretraining runs go through "${launch[@]}" too.
nlptl pretrain --arch bert --size tiny --corpus sample-general --epochs 1 --lr 2e-3 --out "$RUNS/general" --overwrite \
  $limit $block ${STEPS:+--vocab-size 300}

"${launch[@]}" adapt --from "$RUNS/general" --corpus sample-reviews --batch-size "$BATCH" --lr 1e-3 \
  --out "$RUNS/domain" --overwrite $limit $block
"${launch[@]}" finetune --from "$RUNS/domain" --task sample-sentiment --batch-size "$BATCH" --lr 1e-3 \
  --out "$RUNS/classifier" --overwrite $limit ${STEPS:+--max-length 32} --json
