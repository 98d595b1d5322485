# The project's entry points. Only Python 3.11+, make and git are assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint pytest fuzz bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes; the project itself is editable.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/eventbus serve --data-dir ./data

# Static checks: ruff (lint and formatting) and mypy (strict, on the packages).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite as one process serves, then again with every server the suite starts run as
# two worker processes (`eventbus serve --workers 2`): tests/conftest.py, EVENTBUS_TEST_WORKERS;
# then the HTTP suite's main scenarios once more on a DynamoDB catalog (moto's, in the
# test process): EVENTBUS_TEST_CATALOG. Each pass names its slowest tests, to keep the whole
# run (CI's .ci/run) under 25 minutes.
DYNAMODB_SCENARIOS = tests/test_gateway_api.py tests/test_groups.py tests/test_groups_reshape.py \
	tests/test_gateway_lineage.py tests/test_tenancy.py tests/test_idempotency.py
pytest: install
	$(BIN)/python -m pytest --durations=20
	EVENTBUS_TEST_WORKERS=2 $(BIN)/python -m pytest --durations=20
	EVENTBUS_TEST_CATALOG=dynamodb $(BIN)/python -m pytest --durations=10 $(DYNAMODB_SCENARIOS)

# The API fuzzed from its own OpenAPI document against live servers, about three minutes:
# tests/fuzz_api.py (a tenant's key, the admin key, no key), every check.
fuzz: install
	$(BIN)/python -m tests.fuzz_api

test: lint pytest fuzz

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(BIN)/python -m bench.log_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.http_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.autoscale_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.workers_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.cold_read_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.catalog_bench --output docs/benchmarks.md
	$(BIN)/python -m bench.compare_bench --output docs/benchmarks.md

# Ten minutes of steady load on 100 partitions: the memory of every server process.
soak: install $(BENCH_STAMP)
	$(BIN)/python -m bench.soak --minutes 10 --output docs/benchmarks.md

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
