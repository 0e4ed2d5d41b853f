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
JOBS ?= 1
DEVICE ?= cpu

budget_flag = $(if $(filter none,$(BUDGETS)),,--budgets $(BUDGETS))

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
		--data $(DATA) --model $(MODEL) --profile $(PROFILE) --results $(RESULTS) --jobs $(JOBS)

# The CI accuracy gate: the fixed suite against results/baselines/regress.json (exit 1 on a regression).
regress: venv
	HF_HUB_OFFLINE=1 $(PEFTBENCH) regress --results $(RESULTS)

regress-update: venv
	@test -n "$(REASON)" || { echo 'error: make regress-update needs REASON="why the baseline changes"' >&2; exit 2; }
	HF_HUB_OFFLINE=1 $(PEFTBENCH) regress --results $(RESULTS) --update --reason "$(REASON)"

# Speed and memory, side by side in one process: native methods vs peft vs the frozen-model floor.
# Methods timed by make perf (peftbench perf alone times every registered method).
PERF_METHODS ?= full,lora,dora,adalora

perf: venv
	HF_HUB_OFFLINE=1 $(PEFTBENCH) perf --device $(DEVICE) --methods $(PERF_METHODS)

lint: venv
	$(VENV)/bin/ruff check peftbench tests scripts

clean-runs:
	rm -rf $(RESULTS)/runs
