# Two commands for a fresh machine (Python 3.10+ with pip):
#   make demo   installs livefuse in .venv and runs the demo on the sample clip
#   make test   installs livefuse with its test tools in .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/livefuse demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) .cache livefuse-demo
