#!/usr/bin/env bash
# Evidence for the tasks the standard profile's time budget cannot teach: longer runs than the recipe's, scored on
# the dev split (held out of the training rows, never validation) every N steps, then tabulated by
# scripts/learning_curve.py: after how many steps and minutes each leaves the best constant predictor.
# Usage: scripts/learning_curves.sh [OUT]   (default results/leaderboards/standard/curves; two runs at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/leaderboards/standard/curves}
PEFTBENCH=${PEFTBENCH:-.venv/bin/peftbench}
PY=${PY:-.venv/bin/python}
run() { OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$PEFTBENCH" run --profile standard --results "$OUT" --quiet "$@"; }
# RTE: every training row (less the dev split) four times, full fine-tuning (the recipe: 1,250 rows once).
run --task rte --method full --set dev_rows=500 --set train_rows=0 --set epochs=4 --set eval_every=40 &
# CoLA: every row three times, LoRA at 0.3M (the recipe: 4,000 rows once).
run --task cola --method lora --budget 0.3M --set dev_rows=500 --set train_rows=0 --set epochs=3 --set eval_every=100
wait
# STS-B: 4,000 rows twice, LoRA at 0.3M (the recipe: 2,000 rows once); its Pearson stays near 0 on validation.
run --task stsb --method lora --budget 0.3M --set dev_rows=500 --set train_rows=4000 --set epochs=2 --set eval_every=50
# SQuAD v1.1 and v2.0: 1,600 questions in batches of 4 (400 steps; the recipe: 100), LoRA at 0.3M.
run --task squad --method lora --budget 0.3M --set dev_rows=300 --set train_rows=1600 --set eval_every=50 &
run --task squad_v2 --method lora --budget 0.3M --set dev_rows=300 --set train_rows=1600 --set eval_every=50
wait
"$PY" scripts/learning_curve.py "$OUT" > "$OUT/curves.md"
echo "wrote $OUT/curves.md"
