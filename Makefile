# Quick start (README): `make demo` then `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock 2>/dev/null | sha256sum | cut -c1-16)
export MEDLLM_HOME ?= $(CURDIR)/.medllm
PYTEST_ARGS ?=
DBT_MANIFEST := dbt/target/manifest.json
DBT_SOURCES := $(shell find dbt/dbt_project.yml dbt/models dbt/macros dbt/tests -type f 2>/dev/null)

.PHONY: install demo test serve services-up services-down postgres run bench dbt-parse dbt-docs clean lock

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first, pinned: the CPU build on this disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) $(DBT_MANIFEST)

# dbt: dagster-dbt builds the curate group's dbt assets from this manifest when
# the definitions load; re-parsed whenever a file under dbt/ changes.
$(DBT_MANIFEST): $(STAMP) $(DBT_SOURCES)
	$(PY) -m medllm_pipelines.cli_dbt parse

dbt-parse: $(DBT_MANIFEST)

# dbt docs against the warehouse the environment selects: by default the
# embedded DuckDB file $(MEDLLM_HOME)/warehouse/medllm.duckdb (run `make run` first).
dbt-docs: install
	$(PY) -m medllm_pipelines.cli_dbt docs

# PostgreSQL is installed on these machines; start it when it is down.
postgres:
	@if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then echo "PostgreSQL is running"; \
	else echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | sort -V | tail -1) main start \
	  || pg_ctlcluster $$(ls /etc/postgresql | sort -V | tail -1) main start; \
	  for i in $$(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done; fi

services-up: install
	$(VENV)/bin/medllm services up

services-down:
	$(VENV)/bin/medllm services down

demo: install services-up
	$(VENV)/bin/medllm demo

# The REST service and the clinician page (http://127.0.0.1:8000/ui/) with the models `make demo` promoted.
serve: install
	$(VENV)/bin/medllm serve

run: install services-up
	$(VENV)/bin/medllm run

# Two pytest-xdist workers (these machines have 2 cores); --dist loadfile with the scheduler in
# medllm_pipelines_tests/conftest_lifecycle.py keeps the readers of each whole-lifecycle run on one worker.
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: install postgres
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS); code=$$?; if [ $$code -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$code

bench: install services-up
	$(PY) benchmarks/run_all.py

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf .medllm .pytest_cache
