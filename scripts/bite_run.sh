#!/usr/bin/env bash
# Does the gate bite on the real suite? For each (task, method) of `make regress`, rerun the suite's 3 seeds
# with that method's recipe learning rate divided by 4 (a plausible slip: a wrong unit, a forgotten warm-up
# scale) and compare with the committed baseline. Every row should read REGRESSION; an unchanged rerun
# (`make regress`) should pass. Prints one line per row: task, method, degraded lr, delta, allowed drop, verdict.
# A method whose score is flat in its rate (a quarter of it costs less than the row's allowed drop, so the gate is
# right to pass it) is degraded a second way: half its optimizer steps; that one must be caught.
#
# Usage: scripts/bite_run.sh [RESULTS_DIR]   (default: a temporary folder; the records are not committed)
#        BITE_TASKS=qqp scripts/bite_run.sh   (only the rows of these tasks, comma-separated)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
PY=${PY:-.venv/bin/python}
PEFTBENCH=${PEFTBENCH:-.venv/bin/peftbench}
# "task method lr/4" for every row of the committed baseline, from the regress recipe the suite trains with.
rows=$(BITE_TASKS=${BITE_TASKS:-} "$PY" - <<'PY'
import json, os
from peftbench.recipes import load_recipe
r = load_recipe("regress")
only = {t for t in os.environ["BITE_TASKS"].split(",") if t}
for row in json.load(open("results/baselines/regress.json"))["rows"]:
    if not only or row["task"] in only:
        t = r.tasks[row["task"]].train
        steps = -(-int(t["train_rows"] * t.get("epochs", 1.0)) // int(t["batch_size"]))
        print(row["task"], row["method"], r.chosen(row["task"], row["method"])["lr"].value / 4, steps // 2)
PY
) || { echo "could not read the regress suite" >&2; exit 2; }
caught=0; total=0
gate() {  # one row of `peftbench regress` under extra --set items
  local task=$1 method=$2; shift 2
  HF_HUB_OFFLINE=1 "$PEFTBENCH" regress --results "$OUT" --tasks "$task" --methods "$method" "$@" --quiet \
    2>/dev/null | grep -E "^\| $task +\| $method "
}
while read -r task method lr half; do
  total=$((total + 1))
  line=$(gate "$task" "$method" --set "lr=$lr")
  echo "$task $method lr=$lr: $line"
  if [[ $line == *REGRESSION* ]]; then caught=$((caught + 1)); continue; fi
  line=$(gate "$task" "$method" --set "train.max_steps=$half")
  echo "$task $method max_steps=$half (lr/4 cost less than the allowed drop): $line"
  [[ $line == *REGRESSION* ]] && caught=$((caught + 1))
done <<< "$rows"
echo "caught $caught of $total degraded rows (records in $OUT)"
[ "$caught" -eq "$total" ]
