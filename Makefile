# One virtual environment for development, the demo and the tests; created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: demo test setup lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-edge.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: setup          ## the main job: version 0, central reference, evaluation report
	$(PY) -m tools.demo $(ARGS)

test: setup          ## the whole test suite
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .venv-edge build data/report.* .pytest_cache
