# Every target installs into .venv first when needed, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# Runtime state of the demo; tests use their own temporary homes.
export SHOPREC_HOME ?= $(abspath .shoprec)
export AIRFLOW_HOME ?= $(SHOPREC_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(abspath dags)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
# Two task processes at a time on the 2-core machine (the demo stack's DAGs run their tasks one after another).
export AIRFLOW__CORE__PARALLELISM ?= 2
# The demo retrains the tiny preset (small models, the same pipeline); `make demo DEMO_PRESET=full` for the real one.
DEMO_PRESET ?= tiny

.PHONY: install demo stop test bench clean

install: $(STAMP)

# pip's warnings (licence metadata, index locations) go to the install log, not the terminal.
$(STAMP): pyproject.toml requirements.lock
	@echo "==> installing the pinned dependencies into $(VENV) (a few minutes the first time; log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --quiet --upgrade pip \
	   && $(BIN)/pip install --quiet -r requirements.lock \
	   && $(BIN)/pip install --quiet --no-deps --no-build-isolation -e . ; } > $(VENV)/install.log 2>&1 \
	  || { tail -n 30 $(VENV)/install.log; exit 1; }
	@# The machine sets PYTHONDONTWRITEBYTECODE; compiled bytecode halves the start-up of every process.
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	@touch $(STAMP)

demo: install
	@DEMO_PRESET=$(DEMO_PRESET) $(BIN)/python -m shoprec.demo

# Ends exactly what the demo started (from the pid files under SHOPREC_HOME/run).
stop:
	@$(BIN)/python -m shoprec.demo stop

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.validation
	$(BIN)/python -m bench.features
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.retrain --against 6e49eb5
	$(BIN)/python -m bench.serving online_retail taobao

clean:
	rm -rf .shoprec
