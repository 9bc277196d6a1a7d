"""The champion in the MLflow registry: read it, map its artifacts to a KServe URI, tag the rollout."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlparse

from core.names import CHAMPION, PINNED_TAG, PROMOTION_TAG, SUPERSEDED
from deploy.manifest import KSERVE_SCHEMES, Champion, DeployError

log = logging.getLogger(__name__)


# The outcomes after which the version serves: a retry of deploy finds it ``unchanged``.
SERVING_STATUSES = ("deployed", "promoted", "reloaded", "unchanged")


@dataclass
class DeploymentResult:
    """What reports/deployment.json records."""

    status: str  # promoted | deployed | unchanged | rolled_back | failed | reloaded | no_predictor | dry_run
    target: str
    model_name: str
    version: str
    storage_uri: str = ""
    canary_percent: int | None = None
    endpoint: str = ""
    deployed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    detail: str = ""


# --------------------------------------------------------------------------- champion and storage URI


def map_artifact_uri(artifact_uri: str, uri_map: dict[str, str]) -> str:
    """Turn an MLflow artifact URI into a URI KServe's storage initializer can read.

    ``mlflow-artifacts:/`` (the tracking server's proxied store) is rewritten by the longest matching prefix
    of ``uri_map`` (the chart maps it to ``pvc://<mlflow-claim>/artifacts/`` or the S3 destination); ``s3://``
    and the other KServe schemes pass as they are.

    Args:
        artifact_uri: The model version's download URI from MLflow.
        uri_map: Prefix -> replacement, from the serving settings.

    Returns:
        The storage URI for the InferenceService.

    Raises:
        DeployError: when no mapping applies and KServe cannot read the URI (a local path, file:, ...).
    """
    for prefix in sorted(uri_map, key=len, reverse=True):
        if artifact_uri.startswith(prefix):
            artifact_uri = uri_map[prefix].rstrip("/") + "/" + artifact_uri[len(prefix) :].lstrip("/")
            break
    scheme = urlparse(artifact_uri).scheme
    if scheme not in KSERVE_SCHEMES:
        raise DeployError(
            f"champion artifacts at {artifact_uri!r} are not reachable by KServe; serve them "
            "from the chart's MLflow server (pvc/s3) or map them in predictor.artifactUriMap"
        )
    return artifact_uri


def read_champion(model_name: str, uri_map: dict[str, str] | None) -> Champion:
    """Resolve the champion alias in the MLflow registry (MLFLOW_TRACKING_URI / DagsHub / local store).

    Args:
        model_name: Registered model name (params ``mlflow.model_name``).
        uri_map: Artifact-URI prefix map for KServe (None: keep the URI, for the local predictor).

    Returns:
        The champion's version, artifact URI and storage URI.

    Raises:
        DeployError: when the registry has no champion for the model (exit 2: no retry finds one).
        TrackingUnreachableError: when the registry failed on its side or was busy (exit 75: retried).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.tracking import raise_unless_refused, resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri())
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
        # A logged model's version resolves to its artifact location; a runs:/ source does not, so follow it.
        artifact_uri = client.get_model_version_download_uri(model_name, version.version)
        if artifact_uri.startswith("runs:/"):
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            artifact_uri = RunsArtifactRepository.get_underlying_uri(artifact_uri)
    except MlflowException as exc:  # a 5xx or a busy store is not "no champion": the task's retry may pass
        raise_unless_refused(exc, f"reading the {CHAMPION} of model {model_name!r}")
        raise DeployError(
            f"no {CHAMPION} for model {model_name!r} in the registry: {exc.message.splitlines()[0]}"
        ) from None
    storage_uri = artifact_uri if uri_map is None else map_artifact_uri(artifact_uri, uri_map)
    return Champion(
        model_name=model_name,
        version=str(version.version),
        artifact_uri=artifact_uri,
        storage_uri=storage_uri,
        recorded_status=version.tags.get("deployment_status", ""),
    )


def pin_champion(model_name: str, version: str | None) -> None:
    """Pin ``version`` as the champion (move the alias to it), or with None remove the pin.

    While the registered model carries the ``champion_pinned`` tag, register's gate promotes nothing, so a
    scheduled run cannot put back the version an operator rolled back from. The promotion tags follow the
    alias: the pinned version is tagged ``champion`` and the one it replaces ``superseded``.

    Raises:
        DeployError: when the model or the version is not in the registry (exit 2).
        TrackingUnreachableError: when the registry failed on its side or was busy (exit 75).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.tracking import raise_unless_refused, resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri())
    client = mlflow.MlflowClient()
    try:
        if version is None:
            if PINNED_TAG in client.get_registered_model(model_name).tags:
                client.delete_registered_model_tag(model_name, PINNED_TAG)
            log.info("%s is no longer pinned: register's gate may replace its champion again", model_name)
            return
        client.get_model_version(model_name, version)
        try:
            previous = str(client.get_model_version_by_alias(model_name, CHAMPION).version)
        except MlflowException as exc:
            raise_unless_refused(exc, f"reading the {CHAMPION} of model {model_name!r}")
            previous = None
        pinned_at = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_registered_model_tag(model_name, PINNED_TAG, f"v{version} since {pinned_at}")
        client.set_registered_model_alias(model_name, CHAMPION, version)
        reason = f"pinned as {CHAMPION} by an operator at {pinned_at} (python -m deploy --pin {version})"
        client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        client.set_model_version_tag(model_name, version, PROMOTION_TAG, CHAMPION)
        if previous is not None and previous != version:
            reason = f"was {CHAMPION} until v{version} was pinned in its place"
            client.set_model_version_tag(model_name, previous, "promotion_reason", reason)
            client.set_model_version_tag(model_name, previous, PROMOTION_TAG, SUPERSEDED)
    except MlflowException as exc:
        raise_unless_refused(exc, f"pinning the {CHAMPION} of model {model_name!r}")
        raise DeployError(
            f"cannot pin version {version} of model {model_name!r}: {exc.message.splitlines()[0]}"
            if version is not None
            else f"cannot unpin model {model_name!r}: {exc.message.splitlines()[0]}"
        ) from None
    log.info("pinned %s v%s as %s (was v%s)", model_name, version, CHAMPION, previous)


def tag_version(champion: Champion, result: DeploymentResult) -> None:
    """Record the outcome on the model version, so the registry shows what is deployed where.

    Raises:
        DeployError: when the registry refuses the tags (the rollout itself is done by then), or fails while
            tagging a rollout that was rolled back or failed (a retry would roll it out again).
        TrackingUnreachableError: when the registry failed on its side or was busy while tagging a version
            now serving (exit 75: the retry finds it ``unchanged`` and records the tags then).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.tracking import TrackingUnreachableError, refused

    client = mlflow.MlflowClient()
    tags = {
        "deployment_status": result.status,
        "deployed_at": result.deployed_at,
        "deployment_target": result.target,
        "deployment_storage_uri": result.storage_uri,
        "deployment_canary_percent": "" if result.canary_percent is None else str(result.canary_percent),
        # Why: the canary's evidence, or why it was rolled back (MLflow caps a tag at 5000 characters).
        "deployment_detail": result.detail[:5000],
    }
    try:
        for key, value in tags.items():
            client.set_model_version_tag(champion.model_name, champion.version, key, value)
    except MlflowException as exc:
        outcome = f"version {champion.version} {result.status.replace('_', ' ')}"
        why = exc.message.splitlines()[0]
        # Retried only when the version serves: the retry finds it so (unchanged) and records the tags then.
        if result.status in SERVING_STATUSES and not refused(exc):
            raise TrackingUnreachableError(f"{outcome}; the registry failed tagging it: {why}") from None
        raise DeployError(f"{outcome}, but its deployment tags were not recorded: {why}") from None


# --------------------------------------------------------------------------- InferenceService construction
