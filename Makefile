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
export AIRFLOW__CORE__PARALLELISM ?= 4
# The demo retrains the tiny preset so it ends in minutes on a laptop; `make demo DEMO_PRESET=full` for the real one.
DEMO_PRESET ?= tiny

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	# The machine sets PYTHONDONTWRITEBYTECODE; compiled bytecode halves the start-up of every process.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: install
	$(BIN)/shoprec replay online_retail --every week
	$(BIN)/airflow db migrate > /dev/null
	$(BIN)/airflow dags test ingest_events > $(SHOPREC_HOME)/airflow-demo.log 2>&1 \
	  || { tail -n 30 $(SHOPREC_HOME)/airflow-demo.log; exit 1; }
	@echo "ingest_events ran under Airflow (log: $(SHOPREC_HOME)/airflow-demo.log). The ledger:"
	$(BIN)/shoprec status
	$(BIN)/airflow dags test materialize_features > $(SHOPREC_HOME)/airflow-features.log 2>&1 \
	  || { tail -n 30 $(SHOPREC_HOME)/airflow-features.log; exit 1; }
	@echo "materialize_features ran under Airflow (log: $(SHOPREC_HOME)/airflow-features.log). An online read:"
	$(BIN)/shoprec features read 12748 23084 22086 23355 --service ranker_v1
	SHOPREC_RETRAIN_PRESET=$(DEMO_PRESET) $(BIN)/airflow dags test retrain_models > $(SHOPREC_HOME)/airflow-training.log 2>&1 \
	  || { tail -n 30 $(SHOPREC_HOME)/airflow-training.log; exit 1; }
	@echo "retrain_models ran under Airflow (log: $(SHOPREC_HOME)/airflow-training.log). Its evaluation and decision:"
	$(BIN)/shoprec models

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.validation
	$(BIN)/python -m bench.features
	$(BIN)/python -m bench.training

clean:
	rm -rf .shoprec
