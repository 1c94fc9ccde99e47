# The two commands of the README:
#   make run    set up .venv (first time only) and run `attnbench run memory` on the embedded default
#   make test   set up .venv (first time only) and run the tests
# Everything else here is plumbing those two (and CI) share.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnbench-installed

.PHONY: run test install ci-gate refresh-baselines report clean

run: $(STAMP)
	$(BIN)/attnbench run memory

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider --timeout 900

# torch is installed first and pinned by constraints.txt, so no dependency can swap it for a
# CUDA build (several GB). The PSAL kernel is compiled once here (torch.utils.cpp_extension).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[baselines,test]"
	-$(BIN)/pip install -q --no-deps xformers==0.0.35 || echo "xformers not installed: flash-xformers will be listed as unavailable"
	$(BIN)/python -m attnbench_plugins.psal_build || echo "PSAL native kernel not built: PSAL falls back to the PyTorch reference"
	touch $(STAMP)

install: $(STAMP)

# CI's performance gate: the ci presets against the committed baselines (results/baselines/).
ci-gate: $(STAMP)
	rm -rf results/runs/ci
	$(BIN)/attnbench run memory --preset ci --out results/runs/ci --no-table
	$(BIN)/attnbench run speed --preset ci --out results/runs/ci --no-table
	$(BIN)/attnbench gate results/runs/ci --baseline results/baselines

# Refresh the baselines on purpose (after a deliberate change), then commit results/baselines/.
refresh-baselines: $(STAMP)
	$(BIN)/attnbench run memory --preset ci --out results/baselines --no-table
	$(BIN)/attnbench run speed --preset ci --out results/baselines --no-table

report: $(STAMP)
	$(BIN)/attnbench report results/runs --out results/report

clean:
	rm -rf $(VENV) build *.egg-info
