# DeepGuard: `make run` (set up, run the pipeline, serve) and `make test` (set up, run every test).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export UV_CACHE_DIR ?= $(CURDIR)/.cache/uv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
UV_VERSION := 0.13.9
UV := $(CURDIR)/.cache/uv-bin/bin/uv

.PHONY: help setup run pipeline test bench lint dvc-yaml clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .cache/uv-bin
	.cache/uv-bin/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: requirements/dev.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync --quiet requirements/dev.lock
	touch $@

setup: $(VENV)/.installed ## create .venv from the lock file (stages, predictor, web app, test tools)

run: setup pipeline ## the main job: set up, run the pipeline on the configured data

pipeline: setup ## dvc repro on the configured data (DEEPGUARD_DATA=archive.zip to use a local archive)
	$(PY) -m stages.ingest --locate
	$(VENV)/bin/dvc repro

test: setup ## set up and run every test (what CI runs)
	$(PY) -m pytest

bench: setup ## benchmarks: baseline and ours, with ratios
	$(PY) bench/pipeline_bench.py

lint: setup ## ruff
	$(VENV)/bin/ruff check .

dvc-yaml: setup ## regenerate dvc.yaml from the stage list in stages/pipeline.py
	$(PY) -m stages.pipeline > dvc.yaml

clean: ## remove pipeline outputs and the local MLflow store (keeps the environments)
	rm -rf data models reports mlruns .dvc/tmp
