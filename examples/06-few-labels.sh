#!/usr/bin/env bash
# Few labels, the SetFit-style way: train the encoder on pairs of your labelled examples (same label =
# similar), then put a classifier head on it; plain fine-tuning from the same encoder alongside, and
# both evaluated on held-out rows.
#
#   BASE=sentence-transformers/all-MiniLM-L6-v2 bash examples/06-few-labels.sh [WORK_DIR]
#   BASE=DIR PER_CLASS=16 TRAIN=my_labels.csv TEST=my_test.csv bash examples/06-few-labels.sh
#
# Without TRAIN, the script draws PER_CLASS examples of each label (default 32) from the sentiment
# sample shipped with nlptl. BASE is best a sentence encoder (docs/results.md, "Few labels", measured
# all-MiniLM-L6-v2); without it, the script trains a tiny general LM on the sample text, which only
# shows the commands. STEPS=N makes it a smoke run: N steps per stage.
set -euo pipefail
WORK="${1:-runs/few-labels}"
mkdir -p "$WORK"
smoke=${STEPS:+--max-steps $STEPS --batch-size 8}

if [ -z "${TRAIN:-}" ]; then
  python - "$WORK" "${PER_CLASS:-32}" <<'PY'
import csv, random, sys
from pathlib import Path
from nlptl.data.registry import ASSETS
work, k = Path(sys.argv[1]), int(sys.argv[2])
with open(ASSETS / "sentiment_train.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
random.Random(0).shuffle(rows)
few = [r for label in ("0", "1") for r in [r for r in rows if r["label"] == label][:k]]
with open(work / "few.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=["text", "label"])
    w.writeheader()
    w.writerows(few)
PY
  TRAIN="$WORK/few.csv"
  TEST="$(python -c 'from nlptl.data.registry import ASSETS; print(ASSETS / "sentiment_test.csv")')"
fi

if [ -z "${BASE:-}" ]; then
  BASE="$WORK/base"
  nlptl pretrain --arch gpt --size tiny --corpus sample-general --epochs 2 --lr 2e-3 --out "$BASE" --overwrite \
    $smoke ${STEPS:+--vocab-size 300 --block-size 32}
fi

# 1. The encoder on label pairs (20 per example, cosine loss, lr 2e-5: the measured defaults).
nlptl adapt --from "$BASE" --objective contrastive --corpus task:sentiment --train "$TRAIN" \
  --out "$WORK/pairs" --overwrite $smoke ${STEPS:+--block-size 32}
# 2. The head on it: from a contrastive run, finetune trains the body at 1e-5 and the head at 1e-2, and
#    --min-steps 100 (default) keeps a few labels from meaning a few updates.
nlptl finetune --from "$WORK/pairs" --task sentiment --train "$TRAIN" --out "$WORK/classifier" --overwrite \
  $smoke ${STEPS:+--max-length 32}
# For comparison: plain fine-tuning from the same encoder.
nlptl finetune --from "$BASE" --task sentiment --train "$TRAIN" --out "$WORK/plain" --overwrite \
  $smoke ${STEPS:+--max-length 32}

for model in classifier plain; do
  nlptl evaluate --model "$WORK/$model" --data "${TEST:?set TEST=held-out.csv}" --json
done
