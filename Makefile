# The two commands of the README: `make demo` and `make test`. Both set everything up on a fresh
# machine: a .venv in the repository, torch==2.13.0 first (the CPU wheel; an unpinned torch would
# pull a multi-GB CUDA build), then the project and its pinned stack.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Airflow 3: a run at D covers the data interval [D-1, D): 2011-12-10 segments the shop as of the
# end of its last day of data (2011-12-09), and its run_date is 2011-12-09.
DEMO_DATE ?= 2011-12-10

export SEGMENT_DATA_DIR ?= $(CURDIR)/.data
export AIRFLOW_HOME ?= $(SEGMENT_DATA_DIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export DBT_SEND_ANONYMOUS_USAGE_STATS := False
export DO_NOT_TRACK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pip on this project's machines warns about every local index folder it skips: noise, not news
PIPQ := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help install demo test clean bench bench-quick bench-report

help:
	@echo "make demo   - set up, load the Online Retail demo warehouse and run the real Airflow DAG on it"
	@echo "make test   - set up and run the test suite (PostgreSQL tests need 127.0.0.1:5432)"
	@echo "make clean  - remove .data (warehouse, artifacts, Airflow home); keeps .venv"
	@echo "make bench        - every benchmark (an hour or more), then benchmarks/RESULTS.md with plots"
	@echo "make bench-quick  - a few-minute smoke run of every benchmark into benchmarks/out/quick/"
	@echo "make bench-report - only rewrite benchmarks/RESULTS.md from the JSON in benchmarks/results/"

$(BIN)/.installed: pyproject.toml
	@echo "== setting up $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(PIPQ)
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat $(PIPQ)
	$(BIN)/python -c "import torch, airflow, dbt.version; print('installed: torch', torch.__version__, '| airflow', airflow.__version__, '| dbt', dbt.version.__version__)" 2>/dev/null
	touch $@

install: $(BIN)/.installed

$(AIRFLOW_HOME)/airflow.db: $(BIN)/.installed
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(SEGMENT_DATA_DIR)/airflow-migrate.log 2>&1 || { tail -20 $(SEGMENT_DATA_DIR)/airflow-migrate.log; exit 1; }

demo: install $(AIRFLOW_HOME)/airflow.db
	@mkdir -p $(SEGMENT_DATA_DIR)
	@echo "== loading the Online Retail demo into $(SEGMENT_DATA_DIR)/warehouse.duckdb"
	$(BIN)/segment demo init
	@echo "== running the Airflow DAG customer_segmentation for $(DEMO_DATE) (airflow dags test)"
	@start=$$(date +%s); \
	  $(BIN)/airflow dags test customer_segmentation $(DEMO_DATE) > $(SEGMENT_DATA_DIR)/demo-dag.log 2>&1 \
	  || { grep -E "ERROR|Error|error:" $(SEGMENT_DATA_DIR)/demo-dag.log | tail -30; echo "the DAG failed; full log: $(SEGMENT_DATA_DIR)/demo-dag.log"; exit 1; }; \
	  grep -E '\[(segmentation|validation)[a-z_.]*\] loc=|DagRun Finished' $(SEGMENT_DATA_DIR)/demo-dag.log \
	    | grep -v '\[segmentation\.features\.dbt\]' \
	    | sed -E 's/^[^ ]+ \[[a-z ]+\] //; s/ \[(segmentation|validation)[a-z_.]*\] loc=.*$$//; s/^DagRun Finished: .*(state=[a-z]+).*/DAG run finished: \1/' \
	    | grep -Ev '^(pretraining )?epoch [0-9]' | awk '!seen[$$0]++' | cut -c1-180; \
	  echo "DAG run finished in $$(( $$(date +%s) - start )) s; full log: $(SEGMENT_DATA_DIR)/demo-dag.log"
	@echo
	$(BIN)/segment summary

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(SEGMENT_DATA_DIR)

# Benchmarks (benchmarks/README.md). Niced, one torch/BLAS thread: the machines are shared.
BENCH_NICE ?= nice -n 10

bench: install
	$(BENCH_NICE) $(BIN)/python benchmarks/run_all.py

bench-quick: install
	$(BENCH_NICE) $(BIN)/python benchmarks/run_all.py --quick

bench-report: install
	$(BIN)/python benchmarks/results_md.py
