#!/usr/bin/env bash
# Your own classification task from a CSV: fine-tune, evaluate on held-out rows, then label new texts
# read from standard input.
#
#   bash examples/04-custom-csv.sh [WORK_DIR]
#   TRAIN=my_train.csv TEST=my_test.csv TEXT=review LABEL=verdict BASE=bert-base-uncased bash examples/04-custom-csv.sh
#
# Any label names work (taken from the training file). Without TRAIN, the script writes a CSV of its
# own from the sentiment sample shipped with nlptl, with other column and label names, to show the
# flags. Without BASE, it trains a tiny general LM on the sample text to start from (any checkpoint or
# hub id works as BASE). STEPS=N makes it a smoke run: N steps per stage, small vocabulary, short texts.
set -euo pipefail
WORK="${1:-runs/custom-csv}"
mkdir -p "$WORK"
TEXT="${TEXT:-review}"
LABEL="${LABEL:-verdict}"
smoke=${STEPS:+--max-steps $STEPS --batch-size 8}

if [ -z "${TRAIN:-}" ]; then
  # A stand-in for your data: columns review,verdict and labels thumbs-down/thumbs-up.
  python - "$WORK" <<'PY'
import csv, sys
from pathlib import Path
from nlptl.data.registry import ASSETS
names = {"0": "thumbs-down", "1": "thumbs-up"}
for src, dst in (("sentiment_train.csv", "train.csv"), ("sentiment_test.csv", "test.csv")):
    with open(ASSETS / src, newline="", encoding="utf-8") as f, open(Path(sys.argv[1]) / dst, "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["review", "verdict"])
        w.writerows([r["text"], names[r["label"]]] for r in csv.DictReader(f))
PY
  TRAIN="$WORK/train.csv"
  TEST="$WORK/test.csv"
fi

if [ -z "${BASE:-}" ]; then
  BASE="$WORK/base"
  nlptl pretrain --arch gpt --size tiny --corpus sample-general --epochs 2 --lr 2e-3 --out "$BASE" --overwrite \
    $smoke ${STEPS:+--vocab-size 300 --block-size 32}
fi

# task classification: any label set; no --eval, so a seeded, stratified 10% of --train picks the best checkpoint.
nlptl finetune --from "$BASE" --task classification --train "$TRAIN" --text-column "$TEXT" --label-column "$LABEL" \
  --epochs 3 --lr 1e-3 --out "$WORK/classifier" --overwrite $smoke ${STEPS:+--max-length 32}

# Accuracy and macro-F1 on rows it never saw; --json: one object on stdout.
nlptl evaluate --model "$WORK/classifier" --data "${TEST:?set TEST=held-out.csv}" --text-column "$TEXT" --label-column "$LABEL" --json

# New texts, one per line on standard input -> one JSON object per text.
printf '%s\n' "What a delight, I loved every minute." "Broken on arrival and support never answered." |
  nlptl predict --model "$WORK/classifier" --input - --json
