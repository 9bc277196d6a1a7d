"""The names every layer agrees on: served model name, registry aliases, environment variables, ports."""

from __future__ import annotations

# The name the predictor serves the model under (``/v1/models/<name>``, ``/v2/models/<name>``); the
# registered model's name is another fact, params ``mlflow.model_name``.
SERVED_MODEL_NAME = "deepguard"

# MLflow registry aliases: register sets both, deploy and serving read the champion.
CHAMPION = "champion"
CHALLENGER = "challenger"
# A registered-model tag: while the model carries it, register's gate never moves the champion alias (the
# operator pinned a version: `python -m deploy --pin N`; `--unpin` removes it).
PINNED_TAG = "champion_pinned"
# The version tag every registration ends with, and the values an operator's pin sets (stages/register.py).
PROMOTION_TAG = "promotion"
SUPERSEDED = "superseded"

# Environment variables.
MODEL_VERSION_ENV = "DEEPGUARD_MODEL_VERSION"  # the registry version the predictor reports
DATA_ENV = "DEEPGUARD_DATA"  # a local CIFAKE archive for ingest
STORAGE_URI_ENV = "STORAGE_URI"  # where KServe's storage initializer fetches the model from
PREDICTOR_URL_ENV = "PREDICTOR_URL"  # the web app's and deploy --target local's predictor
PREDICTOR_PORT_ENV = "PREDICTOR_PORT"
WEB_PORT_ENV = "WEB_PORT"
# The web app's Prometheus metrics port (gunicorn's master serves them there); unset: not served.
WEB_METRICS_PORT_ENV = "WEB_METRICS_PORT"
MODEL_NAME_ENV = "MODEL_NAME"  # the served model name the web app asks for
# Served records (<dir>/records/*.jsonl) and user feedback (<dir>/feedback/); default MONITORING_DIR.
MONITORING_DIR_ENV = "DEEPGUARD_MONITORING_DIR"
MONITORING_DIR = "monitoring"  # relative to the workspace; git-ignored
# In the monitoring folder: the drift monitor's latest summary, which the predictor exports to Prometheus
# (deepguard_drift_detected, deepguard_drift_score_psi) for the DeepGuardInputDrift alert.
DRIFT_LATEST = "drift.json"

# Ports: the predictor's is KServe's default HTTP port; the web app's is Flask's.
PREDICTOR_PORT = 8080
WEB_PORT = 5000
# KServe's gRPC port: the predictor's opt-in gRPC server (`--enable_grpc true`).
GRPC_PORT = 8081
# `make airflow`'s API server and UI (AIRFLOW_PORT): Airflow's own default, 8080, is the predictor's, and 8081
# the predictor's gRPC port.
AIRFLOW_PORT = 8082


def champion_uri(model_name: str) -> str:
    """The MLflow URI of a registered model's champion.

    Args:
        model_name: Registered model name (params ``mlflow.model_name``).

    Returns:
        ``models:/<model_name>@champion``.
    """
    return f"models:/{model_name}@{CHAMPION}"
