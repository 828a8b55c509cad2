# Two commands on a fresh machine (Linux, Python >= 3.10, no venv needed):
#   make quick   set up .venv from requirements.lock, run the quick grid to its tables, figures and report.html
#                (computing every cell, reuse=[]: it shows the engine works; bundle/quick holds what it printed)
#   make test    set up .venv from requirements.lock, run the tests (the README's test command)
# make test-slurm runs the tests that bring up a one-node SLURM cluster (root; apt-get).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
RUN := PATH="$(BIN):$$PATH"

.PHONY: quick test test-slurm setup lock

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "== setting up $(VENV) from requirements.lock (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.1
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

quick: setup
	@data="$$(DATA="$(DATA)" tools/find-data)" && echo "== quick grid with data from $$data" && \
	$(RUN) python -m dimat_bench plan --no-reuse config/quick.yaml && \
	$(RUN) snakemake --cores all --configfile config/quick.yaml --config data_dir="$$data" 'reuse=[]' && \
	$(RUN) snakemake --report report.html --configfile config/quick.yaml --config data_dir="$$data" 'reuse=[]'
	@echo "== tables in results/quick/tables/, figures in figures/quick/, the report in report.html"

test: setup
	$(RUN) python -m pytest -q

test-slurm: setup
	$(RUN) python -m pytest -q -m slurm -rA

lock:
	tools/lock
