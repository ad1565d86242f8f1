#!/usr/bin/env bash
# Quick start: the three ULMFiT stages on the sample data shipped with nlptl (offline, CPU, ~1-2 min).
#
#   bash examples/01-quickstart.sh [RUNS_DIR]
#
# Each stage's --from defaults to the latest run of the previous stage under $NLPTL_HOME, so the
# commands chain without paths. Replace the sample names with your data for real work:
#   --corpus reviews (or a .txt/.csv/.jsonl file), --task sentiment --train train.csv --eval dev.csv
set -euo pipefail
export NLPTL_HOME="${1:-${NLPTL_HOME:-runs/quickstart}}"

# 1. A general language model: a tiny GPT trained from scratch, with its own byte-level BPE tokenizer.
nlptl pretrain --arch gpt --size tiny --corpus sample-general --epochs 2 --lr 2e-3

# 2. Domain adaptation: continue the LM (causal LM for a GPT) on unlabeled reviews.
nlptl adapt --corpus sample-reviews --lr 1e-3

# 3. Task fine-tuning: a classifier on top, the best checkpoint kept by accuracy on the eval split.
nlptl finetune --task sample-sentiment --epochs 2 --lr 1e-3

# Measure it on held-out data, and use it. --json puts one JSON object on stdout for scripts.
test_csv=$(python -c "from nlptl.data.registry import ASSETS; print(ASSETS / 'sentiment_test.csv')")
nlptl evaluate --data "$test_csv" --json
nlptl predict "A wonderful, warm little film." "The battery died after a day." --json
