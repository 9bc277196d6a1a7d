"""The InferenceService the deploy step applies: serving settings (the chart's ConfigMap) + the champion."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DeepGuardError
from core.names import (
    MODEL_VERSION_ENV,
    PREDICTOR_PORT,
    SERVED_MODEL_NAME,
    STORAGE_URI_ENV,
)

log = logging.getLogger(__name__)


SERVING_CONFIGMAP = "deepguard-serving"  # rendered by helm/deepguard/templates/predictor/configmap.yaml
SERVING_KEY = "serving.json"
DEFAULT_NAMESPACE = "deepguard"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER_NAME = "kserve-container"  # KServe injects the storage initializer for this container's STORAGE_URI
MONITORING_MOUNT = "/var/lib/deepguard/monitoring"  # where a monitoring claim is mounted (the chart agrees)
VERSION_ANNOTATION = "deepguard.io/model-version"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Schemes KServe's default storage initializer (or its PVC mount) can read.
KSERVE_SCHEMES = ("pvc", "s3", "gs", "hdfs", "webhdfs", "https", "http", "hf")


class DeployError(DeepGuardError):
    """The champion could not be rolled out (missing champion, unreachable API, not Ready in time)."""


@dataclass(frozen=True)
class ServingSettings:
    """Everything about the InferenceService except the champion and the canary percent.

    The chart renders the same fields (``deepguard.predictor.settings`` in ``_helpers.tpl``) into the
    ConfigMap ``deepguard-serving``; the defaults here equal the chart's default values, which
    tests/k8s checks, so an offline ``--dry-run`` prints what a default install would get.
    """

    name: str = SERVED_MODEL_NAME
    labels: dict[str, str] = field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "deepguard",
            "app.kubernetes.io/instance": "deepguard",
            "app.kubernetes.io/component": "predictor",
            "app.kubernetes.io/part-of": "deepguard",
        }
    )
    deploymentMode: str = "Serverless"  # noqa: N815 - the chart's camelCase keys, one-to-one
    image: str = "ghcr.io/deepguard/predictor:0.1.0"
    args: list[str] = field(
        default_factory=lambda: [
            "--model-uri",
            "/mnt/models",
            "--http-host",
            "0.0.0.0",
            "--no-reload",
            "--monitoring-dir",
            "/tmp/monitoring",
        ]
    )
    imagePullPolicy: str = "IfNotPresent"  # noqa: N815
    imagePullSecrets: list[str] = field(default_factory=list)  # noqa: N815
    port: int = PREDICTOR_PORT
    resources: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }
    )
    minReplicas: int = 1  # noqa: N815
    maxReplicas: int = 3  # noqa: N815
    serviceAccountName: str = "deepguard-predictor"  # noqa: N815
    nodeSelector: dict[str, str] = field(default_factory=dict)  # noqa: N815
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    runAsUser: int = 10001  # noqa: N815
    runAsGroup: int = 10001  # noqa: N815
    artifactUriMap: dict[str, str] = field(  # noqa: N815
        default_factory=lambda: {"mlflow-artifacts:/": "pvc://deepguard-mlflow/artifacts/"}
    )
    # The claim monitoring records go to (mounted at MONITORING_MOUNT); empty: the pod's /tmp.
    monitoringClaim: str = ""  # noqa: N815

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        """Parse the ConfigMap's ``serving.json``; unknown keys are an error (chart and stage out of step)."""
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DeployError(
                f"serving settings ({SERVING_CONFIGMAP}/{SERVING_KEY}) unreadable: {exc}"
            ) from None

    @property
    def canary_supported(self) -> bool:
        """Traffic splitting needs Knative revisions (Serverless mode)."""
        return self.deploymentMode == "Serverless"


@dataclass(frozen=True)
class Champion:
    """The registry version to roll out."""

    model_name: str
    version: str
    artifact_uri: str
    storage_uri: str


def _k8s_model(cls: type, data: dict[str, Any]) -> Any:
    """Build a flat kubernetes/kserve model from its camelCase JSON form (the chart's notation)."""
    names = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    return cls(**{names[key]: value for key, value in data.items()})


def build_inference_service(
    settings: ServingSettings, namespace: str, champion: Champion, canary_percent: int | None
) -> Any:
    """Build the InferenceService for ``champion`` with the kserve SDK models.

    This is the one place the object is assembled in Python; the chart's ``inferenceservice.yaml`` renders the
    same shape from the same settings (tests/k8s/test_chart_deploy_agree.py renders both and compares).

    Args:
        settings: The chart's serving settings.
        namespace: Namespace of the InferenceService.
        champion: Version and storage URI to serve.
        canary_percent: Traffic share of the new revision, or None for all traffic.

    Returns:
        A ``kserve.V1beta1InferenceService``.
    """
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
    from kubernetes import client as k8s

    http_get = {
        "ready": k8s.V1HTTPGetAction(path="/v2/health/ready", port=settings.port),
        "live": k8s.V1HTTPGetAction(path="/v2/health/live", port=settings.port),
    }
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=settings.image,
        image_pull_policy=settings.imagePullPolicy,
        args=list(settings.args),
        ports=[k8s.V1ContainerPort(container_port=settings.port, protocol="TCP")],
        env=[
            k8s.V1EnvVar(name=STORAGE_URI_ENV, value=champion.storage_uri),
            k8s.V1EnvVar(name=MODEL_VERSION_ENV, value=champion.version),
        ],
        resources=k8s.V1ResourceRequirements(
            requests=dict(settings.resources.get("requests", {})),
            limits=dict(settings.resources.get("limits", {})),
        ),
        readiness_probe=k8s.V1Probe(http_get=http_get["ready"], period_seconds=5, failure_threshold=3),
        liveness_probe=k8s.V1Probe(
            http_get=http_get["live"], initial_delay_seconds=30, period_seconds=10, failure_threshold=3
        ),
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())]
    if settings.monitoringClaim:
        container.volume_mounts.append(k8s.V1VolumeMount(name="monitoring", mount_path=MONITORING_MOUNT))
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.monitoringClaim)
        volumes.append(k8s.V1Volume(name="monitoring", persistent_volume_claim=claim))
    predictor = V1beta1PredictorSpec(
        min_replicas=settings.minReplicas,
        max_replicas=settings.maxReplicas,
        canary_traffic_percent=canary_percent,
        service_account_name=settings.serviceAccountName,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=name) for name in settings.imagePullSecrets]
        or None,
        node_selector=dict(settings.nodeSelector) or None,
        tolerations=[_k8s_model(k8s.V1Toleration, item) for item in settings.tolerations] or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=settings.runAsUser,
            run_as_group=settings.runAsGroup,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        containers=[container],
        volumes=volumes,
    )
    return V1beta1InferenceService(
        api_version=f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        kind="InferenceService",
        metadata=k8s.V1ObjectMeta(
            name=settings.name,
            namespace=namespace,
            labels=dict(settings.labels),
            annotations={MODE_ANNOTATION: settings.deploymentMode, VERSION_ANNOTATION: champion.version},
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def to_manifest(isvc: Any) -> dict[str, Any]:
    """The JSON form of an SDK object (camelCase keys, None fields dropped) as the API server expects it."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(isvc)


# --------------------------------------------------------------------------- cluster access and rollout
