# Two commands for a fresh machine (Python 3.10+ with pip):
#   make demo   installs livefuse in .venv and runs the demo on the sample clip
#   make test   installs livefuse with its test tools in .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs only livefuse itself and the virtual-camera extra; the tests add the
# WebRTC stack and the browser driver.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) -e ".[vcam]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) -e ".[test]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/livefuse demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_swap.py
	$(BIN)/python benchmarks/bench_webrtc.py
	$(BIN)/python benchmarks/bench_jobs.py

clean:
	rm -rf $(VENV) .cache livefuse-demo
