# Two commands do everything on a fresh machine: `make bench` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PEFTBENCH := $(VENV)/bin/peftbench
# Extras installed into the venv; CI adds ray so the Ray executor test runs there.
EXTRAS ?= dev
comma := ,

TASK ?= sst2
# head (the linear probe) is the floor every PEFT method should beat; full FT the ceiling.
METHODS ?= full,head,lora,adalora,dora
# One default budget for every budgeted method (full fine-tuning is the unbudgeted reference); BUDGETS=none: method defaults.
BUDGETS ?= 0.3M
SEEDS ?= 0
DATA ?= sample
MODEL ?= minilm-l6
PROFILE ?= quick
RESULTS ?= results
# Runs at once, each with cores/JOBS threads (on 2 cores, two one-thread runs beat one two-thread run at a time).
JOBS ?= 2
# auto: the first GPU when there is one, else the CPU (make perf: cpu unless DEVICE=cuda).
DEVICE ?= auto
# auto: bf16 where the hardware multiplies it natively (GPUs with bf16, CPUs with AMX/AVX512-BF16), else fp32.
PRECISION ?= auto

budget_flag = $(if $(filter none,$(BUDGETS)),,--budgets $(BUDGETS))
precision_flag = $(if $(filter auto,$(PRECISION)),,--set precision=$(PRECISION))
perf_device = $(if $(filter auto,$(DEVICE)),cpu,$(DEVICE))

.PHONY: venv test test-fast bench regress regress-update perf lint clean-runs

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.

$(VENV)/.installed-$(subst $(comma),_,$(EXTRAS)): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

venv: $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

# The fast lane (under a minute): everything but the tests marked slow (child processes, Ray, the embedded
# MiniLM, the perf command). CI runs the full suite.
test-fast: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

bench: venv
	HF_HUB_OFFLINE=1 $(PEFTBENCH) sweep --tasks $(TASK) --methods $(METHODS) $(budget_flag) --seeds $(SEEDS) \
		--data $(DATA) --model $(MODEL) --profile $(PROFILE) --results $(RESULTS) --jobs $(JOBS) \
		--device $(DEVICE) $(precision_flag)
	@# The page answering "is the adaptive method helping here, and what did it cost?"; its path is the last line.
	HF_HUB_OFFLINE=1 $(PEFTBENCH) report --results $(RESULTS) --tasks $(TASK)

# The CI accuracy gate: the fixed suite against results/baselines/regress.json (exit 1 on a regression).
regress: venv
	HF_HUB_OFFLINE=1 $(PEFTBENCH) regress --results $(RESULTS)

regress-update: venv
	@test -n "$(REASON)" || { echo 'error: make regress-update needs REASON="why the baseline changes"' >&2; exit 2; }
	HF_HUB_OFFLINE=1 $(PEFTBENCH) regress --results $(RESULTS) --update --reason "$(REASON)"

# Speed and memory, side by side in one process: native methods vs peft vs the frozen-model floor.
# Methods timed by make perf (peftbench perf alone times every native method; peft's side runs as their twins).
PERF_METHODS ?= full,lora,dora,adalora

perf: venv
	HF_HUB_OFFLINE=1 $(PEFTBENCH) perf --device $(perf_device) --methods $(PERF_METHODS)

lint: venv
	$(VENV)/bin/ruff check peftbench tests scripts

clean-runs:
	rm -rf $(RESULTS)/runs
