# make demo: create .venv, install, run the whole pipeline (tutorforge run) on the bundled recipe.
# make test: create .venv, install, run every test (slow ones included).
# make test-fast: the tests not marked slow (no end-to-end run), for the edit loop.
# make lint: ruff (rules in pyproject.toml) and pyright (basic) on the code; make test runs it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-done
export OMP_WAIT_POLICY ?= PASSIVE
RECIPE ?= recipes/python-tutor-smollm2-cpu.yml
# test workers (pytest-xdist), each with its share of the CPUs; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

.PHONY: setup demo lint test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python scripts/setup_env.py
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/system_deps.sh
	$(VENV)/bin/tutorforge run $(RECIPE)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/pyright --project pyproject.toml

test: $(STAMP) lint
	bash scripts/system_deps.sh --test
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP)
	bash scripts/system_deps.sh --test
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
