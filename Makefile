# Two commands for a fresh machine (Python 3.10+ with pip):
#   make demo   installs livefuse in .venv and runs the demo on the sample clip
#   make test   installs livefuse with its test tools in .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench clean images check-deploy

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

# The checks CI runs before the tests: lint and format (ruff) and types (mypy), as configured
# in pyproject.toml.
lint: $(VENV)/.test-installed
	$(BIN)/ruff check livefuse tests benchmarks scripts
	$(BIN)/ruff format --check livefuse tests benchmarks scripts
	$(BIN)/mypy livefuse

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_swap.py
	$(BIN)/python benchmarks/bench_webrtc.py
	$(BIN)/python benchmarks/bench_jobs.py

# The three container images (deploy/Dockerfile), with docker or DOCKER=podman; add
# TENSORRT=1 for TensorRT in the CUDA images.
DOCKER ?= docker
IMAGE ?= livefuse
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TENSORRT ?= 0
images:
	for target in cpu cuda12 cuda13; do \
		$(DOCKER) build -f deploy/Dockerfile --target $$target --build-arg TENSORRT=$(TENSORRT) \
			--build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION)-$$target . || exit 1; \
	done

# What CI checks of the deployment: compose + Kubernetes manifests, then the CPU image built and run.
check-deploy:
	bash deploy/ci/check_manifests.sh
	bash deploy/ci/check_images.sh

clean:
	rm -rf $(VENV) .cache livefuse-demo
