"""The InferenceService the deploy step applies: the chart's, with this rollout's champion patched in."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import DeepGuardError, TransientError
from core.names import MODEL_VERSION_ENV, STORAGE_URI_ENV

log = logging.getLogger(__name__)


SERVING_CONFIGMAP = "deepguard-serving"  # rendered by helm/deepguard/templates/predictor/configmap.yaml
MANIFEST_KEY = "inferenceservice.json"  # the chart's InferenceService without a champion
ARTIFACT_MAP_KEY = "artifact-uri-map.json"  # where KServe reads MLflow's artifacts
DEFAULT_NAMESPACE = "deepguard"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER_NAME = "kserve-container"  # KServe injects the storage initializer for this container's STORAGE_URI
VERSION_ANNOTATION = "deepguard.io/model-version"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Schemes KServe's default storage initializer (or its PVC mount) can read.
KSERVE_SCHEMES = ("pvc", "s3", "gs", "hdfs", "webhdfs", "https", "http", "hf")


class DeployError(DeepGuardError):
    """The champion could not be rolled out (missing champion, unreachable API, not Ready in time)."""


class KubernetesUnavailableError(DeployError, TransientError):
    """The Kubernetes API did not answer, or failed on its side (5xx, 429): a later try may succeed."""


def deployment_mode(obj: dict[str, Any]) -> str:
    """An InferenceService's KServe deployment mode, from its annotation (Serverless without one)."""
    return (obj.get("metadata", {}).get("annotations") or {}).get(MODE_ANNOTATION, "Serverless")


@dataclass(frozen=True)
class ServingConfig:
    """What the chart hands the deploy stage: its InferenceService without a champion, and the artifact map.

    The chart is the one builder of the InferenceService (``deepguard.predictor.inferenceservice`` in
    ``_helpers.tpl``); deploy changes only what changes per rollout (:func:`rollout_manifest`).
    """

    base: dict[str, Any]
    artifact_uri_map: dict[str, str]

    @classmethod
    def from_config_map(cls, data: dict[str, str] | None, where: str) -> ServingConfig:
        """Read the ConfigMap's ``data``; a missing or unreadable key is a one-line error naming it."""
        data = data or {}
        try:
            base = json.loads(data[MANIFEST_KEY])
            uri_map = json.loads(data.get(ARTIFACT_MAP_KEY, "{}"))
        except KeyError:
            raise DeployError(f"{where}: no {MANIFEST_KEY} (a chart older than this deploy stage?)") from None
        except json.JSONDecodeError as exc:
            raise DeployError(f"{where}: unreadable JSON: {exc}") from None
        if not isinstance(base, dict) or base.get("kind") != "InferenceService":
            raise DeployError(f"{where}: {MANIFEST_KEY} is not an InferenceService")
        return cls(base=base, artifact_uri_map=dict(uri_map))

    @classmethod
    def from_file(cls, path: Path) -> ServingConfig:
        """Read the ConfigMap as ``helm template ... -s templates/predictor/configmap.yaml`` prints it."""
        try:
            config_map = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DeployError(f"{path}: cannot read the serving ConfigMap: {exc}") from None
        if not isinstance(config_map, dict) or config_map.get("kind") != "ConfigMap":
            raise DeployError(f"{path}: expected the {SERVING_CONFIGMAP} ConfigMap (YAML)")
        return cls.from_config_map(config_map.get("data"), str(path))

    @property
    def name(self) -> str:
        """The InferenceService's name."""
        return self.base["metadata"]["name"]

    @property
    def deployment_mode(self) -> str:
        """KServe's deployment mode annotation (Serverless unless the chart says otherwise)."""
        return deployment_mode(self.base)

    @property
    def canary_supported(self) -> bool:
        """Traffic splitting needs Knative revisions (Serverless mode)."""
        return self.deployment_mode == "Serverless"


@dataclass(frozen=True)
class Champion:
    """The registry version to roll out."""

    model_name: str
    version: str
    artifact_uri: str
    storage_uri: str
    # The ``deployment_status`` tag the version carries already ("": never tagged).
    recorded_status: str = ""


def rollout_manifest(
    config: ServingConfig, namespace: str, champion: Champion, canary_percent: int | None
) -> dict[str, Any]:
    """The chart's InferenceService with this rollout's champion, namespace and canary share.

    Only these change per rollout: the namespace, the version annotation, the predictor container's
    ``STORAGE_URI`` and ``DEEPGUARD_MODEL_VERSION``, and ``canaryTrafficPercent``; the rest is the chart's.

    Args:
        config: The chart's serving ConfigMap.
        namespace: Namespace of the InferenceService.
        champion: Version and storage URI to serve.
        canary_percent: Traffic share of the new revision, or None for all traffic.

    Returns:
        The manifest (a new dict; ``config`` is not changed).

    Raises:
        DeployError: when the chart's InferenceService has no ``kserve-container``.
    """
    manifest = copy.deepcopy(config.base)
    manifest["metadata"]["namespace"] = namespace
    manifest["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = champion.version
    predictor = manifest["spec"]["predictor"]
    predictor.pop("canaryTrafficPercent", None)
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    containers = [c for c in predictor.get("containers", []) if c.get("name") == CONTAINER_NAME]
    if not containers:
        raise DeployError(f"the chart's InferenceService has no container named {CONTAINER_NAME!r}")
    values = {STORAGE_URI_ENV: champion.storage_uri, MODEL_VERSION_ENV: champion.version}
    env = [item for item in containers[0].get("env", []) if item.get("name") not in values]
    containers[0]["env"] = [*({"name": k, "value": v} for k, v in values.items()), *env]
    return manifest
