#!/usr/bin/env bash
# The committed standard leaderboard: 9 GLUE tasks + SQuAD v1.1 + v2.0 x {head, full, lora, adalora, dora}
# x {0.3M, 1.2M} x 3 seeds on the embedded MiniLM and the bundled samples, one run per core.
#
# Usage: scripts/standard_leaderboard.sh [PART...]   (parts: glue-short, glue-pairs, squad, render; default all)
# A part whose runs already have records trains nothing, so an interrupted sweep resumes where it stopped; each
# part appends its wall time to wall.tsv, whose sum is the sweep's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/leaderboards/standard}
JOBS=${JOBS:-2}
PEFTBENCH=${PEFTBENCH:-.venv/bin/peftbench}
declare -A PARTS=(
  [glue-short]=sst2,cola,qqp,stsb,wnli
  [glue-pairs]=mnli,qnli,mrpc,rte
  [squad]=squad,squad_v2
)
ALL_TASKS=sst2,cola,qqp,stsb,wnli,mnli,qnli,mrpc,rte,squad,squad_v2
mkdir -p "$OUT"
[ -f "$OUT/wall.tsv" ] || printf 'part\ttasks\tstarted_utc\tseconds\tcpu\n' > "$OUT/wall.tsv"

run_part() {
  local part=$1 tasks=${PARTS[$1]} t0
  t0=$(date +%s)
  HF_HUB_OFFLINE=1 "$PEFTBENCH" sweep --tasks "$tasks" --methods head,full,lora,adalora,dora --budgets 0.3M,1.2M \
    --seeds 0,1,2 --profile standard --results "$OUT" --jobs "$JOBS" --no-leaderboard
  printf '%s\t%s\t%s\t%d\t%s\n' "$part" "$tasks" "$(date -u -d @"$t0" +%FT%TZ)" "$(( $(date +%s) - t0 ))" \
    "$(lscpu | sed -n 's/^Model name: *//p' | head -1) x $(nproc)" >> "$OUT/wall.tsv"
}

render() {
  HF_HUB_OFFLINE=1 "$PEFTBENCH" leaderboard --results "$OUT" --tasks "$ALL_TASKS" --format md --out "$OUT/leaderboard.md"
  HF_HUB_OFFLINE=1 "$PEFTBENCH" leaderboard --results "$OUT" --tasks "$ALL_TASKS" --format csv --out "$OUT/leaderboard.csv"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(glue-short glue-pairs squad render)
for p in "${parts[@]}"; do
  if [ "$p" = render ]; then render
  elif [ -n "${PARTS[$p]:-}" ]; then run_part "$p"
  else echo "unknown part '$p'; parts: ${!PARTS[*]} render" >&2; exit 2
  fi
done
