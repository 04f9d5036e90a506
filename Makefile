# make demo: create .venv, install, run the main job on the bundled defaults.
# make test: create .venv, install, run every test (slow ones included).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-done
export OMP_WAIT_POLICY ?= PASSIVE
RECIPE ?= recipes/python-tutor-smollm2-cpu.yml

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python scripts/setup_env.py
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tutorforge validate $(RECIPE)
	$(VENV)/bin/tutorforge generate $(RECIPE) --prompt "How do I reverse a list in Python?"

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
