#!/usr/bin/env bash
# Does the gate bite on the real suite? For each (task, method) of `make regress`, rerun the suite's 3 seeds
# with that method's recipe learning rate divided by 4 (a plausible slip: a wrong unit, a forgotten warm-up
# scale) and compare with the committed baseline. Every row should read REGRESSION; an unchanged rerun
# (`make regress`) should pass. Prints one line per row: task, method, degraded lr, delta, allowed drop, verdict.
#
# Usage: scripts/bite_run.sh [RESULTS_DIR]   (default: a temporary folder; the records are not committed)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
PY=${PY:-.venv/bin/python}
PEFTBENCH=${PEFTBENCH:-.venv/bin/peftbench}
# "task method lr/4" for every row of the committed baseline, from the regress recipe the suite trains with.
rows=$("$PY" - <<'PY'
import json
from peftbench.recipes import load_recipe
r = load_recipe("regress")
for row in json.load(open("results/baselines/regress.json"))["rows"]:
    print(row["task"], row["method"], r.chosen(row["task"], row["method"])["lr"].value / 4)
PY
) || { echo "could not read the regress suite" >&2; exit 2; }
caught=0; total=0
while read -r task method lr; do
  total=$((total + 1))
  line=$(HF_HUB_OFFLINE=1 "$PEFTBENCH" regress --results "$OUT" --tasks "$task" --methods "$method" \
    --set "lr=$lr" --quiet 2>/dev/null | grep -E "^\| $task +\| $method ")
  echo "$task $method lr=$lr: $line"
  [[ $line == *REGRESSION* ]] && caught=$((caught + 1))
done <<< "$rows"
echo "caught $caught of $total degraded rows (records in $OUT)"
[ "$caught" -eq "$total" ]
