"""The environment, read in one place: every variable DeepGuard itself reads, typed and validated.

Parameters that shape a model live in params.yaml; what differs between machines (where the data is, which
MLflow, ports, credentials) comes from the environment and is read here. ``settings()`` reads it afresh on
each call (cheap), so a process that changes its environment, or a test, sees the change. Tools that read
their own variables keep doing so (MLflow's ``MLFLOW_*`` client options, the Kubernetes client's
``KUBECONFIG``, the kaggle package's credentials); this object reads those only where DeepGuard decides
something from them. The web app and the Airflow DAG stand alone and read their own few variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from core.errors import DeepGuardError
from core.names import (
    DATA_ENV,
    MODEL_VERSION_ENV,
    MONITORING_DIR,
    MONITORING_DIR_ENV,
    PREDICTOR_PORT,
    PREDICTOR_PORT_ENV,
    PREDICTOR_URL_ENV,
    WEB_METRICS_PORT_ENV,
    WEB_PORT,
    WEB_PORT_ENV,
)


class SettingsError(DeepGuardError):
    """An environment variable with a value that cannot be used; the message names it."""


class Settings(BaseModel):
    """DeepGuard's environment variables; the alias of each field is the variable's name."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # Data and provenance.
    data: Path | None = Field(None, alias=DATA_ENV, description="a local CIFAKE archive or folder for ingest")
    git_commit: str | None = Field(None, alias="GIT_COMMIT", description="set in images at build time")
    airflow_run_id: str | None = Field(
        None, alias="DEEPGUARD_RUN_ID", description="the Airflow run a stage belongs to (set by the DAGs)"
    )
    dvc_stage: str | None = Field(None, alias="DVC_STAGE", description="the stage `dvc repro` runs (by DVC)")
    # Tracking: DagsHub when all three are set, else MLFLOW_TRACKING_URI, else the local sqlite store.
    mlflow_tracking_uri: str | None = Field(None, alias="MLFLOW_TRACKING_URI")
    dagshub_username: str | None = Field(None, alias="DAGSHUB_USERNAME")
    dagshub_repo: str | None = Field(None, alias="DAGSHUB_REPO")
    dagshub_token: SecretStr | None = Field(None, alias="DAGSHUB_TOKEN")
    # Kaggle credentials (the kaggle package reads them itself; here only to pick data.source=auto).
    kaggle_username: str | None = Field(None, alias="KAGGLE_USERNAME")
    kaggle_key: SecretStr | None = Field(None, alias="KAGGLE_KEY")
    kaggle_api_token: SecretStr | None = Field(None, alias="KAGGLE_API_TOKEN")
    kaggle_config_dir: Path | None = Field(None, alias="KAGGLE_CONFIG_DIR")
    xdg_config_home: Path | None = Field(
        None, alias="XDG_CONFIG_HOME", description="kaggle's folder on Linux"
    )
    # Serving.
    model_uri: str | None = Field(None, alias="MODEL_URI", description="the model `make serve` serves")
    model_version: str = Field("unknown", alias=MODEL_VERSION_ENV, description="version of a model folder")
    predictor_port: int = Field(PREDICTOR_PORT, alias=PREDICTOR_PORT_ENV, ge=1, le=65535)
    predictor_url: str | None = Field(None, alias=PREDICTOR_URL_ENV)
    web_port: int = Field(WEB_PORT, alias=WEB_PORT_ENV, ge=1, le=65535)
    web_host: str = Field("127.0.0.1", alias="WEB_HOST")
    web_metrics_port: int | None = Field(
        None, alias=WEB_METRICS_PORT_ENV, ge=1, le=65535, description="the web app's /metrics; unset: none"
    )
    # Served-input records and user feedback (relative paths: to the workspace).
    monitoring_dir: Path = Field(Path(MONITORING_DIR), alias=MONITORING_DIR_ENV)
    # Deploy.
    namespace: str | None = Field(None, alias="DEEPGUARD_NAMESPACE")
    prometheus_url: str | None = Field(
        None, alias="DEEPGUARD_PROMETHEUS_URL", description="judge canaries by the metrics it holds"
    )
    kubernetes_service_host: str | None = Field(None, alias="KUBERNETES_SERVICE_HOST")

    @property
    def in_cluster(self) -> bool:
        """Running in a Kubernetes pod (the API server's address is in the environment)."""
        return self.kubernetes_service_host is not None

    @property
    def dagshub_configured(self) -> bool:
        """Any DAGSHUB_* variable set: the user meant DagsHub (all three are then required)."""
        return any((self.dagshub_username, self.dagshub_repo, self.dagshub_token))

    @property
    def kaggle_dir(self) -> Path:
        """Where the kaggle package reads kaggle.json: ``KAGGLE_CONFIG_DIR``, else ``~/.kaggle`` if it exists,
        else (the package's choice on Linux) ``$XDG_CONFIG_HOME/kaggle``, by default ``~/.config/kaggle``."""
        if self.kaggle_config_dir is not None:
            return self.kaggle_config_dir
        legacy = Path.home() / ".kaggle"
        if legacy.exists() or not sys.platform.startswith("linux"):
            return legacy
        return (self.xdg_config_home or Path.home() / ".config") / "kaggle"

    @property
    def kaggle_credentials(self) -> bool:
        """The kaggle package will find credentials: variables, a file in :attr:`kaggle_dir`, or the sign-in
        ``kaggle auth login`` keeps in ``~/.kaggle/credentials.json`` (a fixed path in the package)."""
        if (self.kaggle_username and self.kaggle_key) or self.kaggle_api_token:
            return True
        files = [self.kaggle_dir / name for name in ("kaggle.json", "access_token")]
        return any(path.is_file() for path in [*files, Path.home() / ".kaggle" / "credentials.json"])

    @property
    def local_predictor_url(self) -> str:
        """``PREDICTOR_URL``, else the local predictor on ``PREDICTOR_PORT``."""
        return self.predictor_url or f"http://127.0.0.1:{self.predictor_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``environ`` (default ``os.environ``); an empty variable counts as unset.

        Raises:
            SettingsError: naming the variable and what is wrong with its value (never the value of a secret).
        """
        environ = os.environ if environ is None else environ
        names = {field.alias for field in cls.model_fields.values()}
        try:
            return cls.model_validate({k: v for k, v in environ.items() if k in names and v != ""})
        except ValidationError as exc:
            error = exc.errors()[0]
            raise SettingsError(f"environment variable {error['loc'][0]}: {error['msg']}") from None


def settings() -> Settings:
    """The current environment's settings."""
    return Settings.from_env()
