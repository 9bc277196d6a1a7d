"""Deploy stage: roll the MLflow champion out to KServe (canary, promote or roll back) or a local predictor.

``python -m stages.deploy [--target kserve|local] [--dry-run] [--timeout S] [--canary-percent P]``

kserve: read the champion (alias ``champion`` of ``mlflow.model_name``), map its artifact location to a URI
KServe's storage initializer reads (``pvc://`` or ``s3://``), build the InferenceService with the kserve SDK
models from the chart's serving settings (ConfigMap ``deepguard-serving``), apply it with
``canaryTrafficPercent``, wait for Ready, then promote to 100 % or restore the previous predictor. The outcome
is tagged on the model version (``deployment_status``, ``deployed_at``, ...) and written to
``reports/deployment.json``. local: ask the local predictor to reload the champion over KServe's model
repository API and check the version it reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from core.atomic import write_json
from core.cli import run_stage, stage_parser
from core.config import Params
from core.errors import DeepGuardError, redact_credentials
from core.names import (
    CHAMPION,
    MODEL_VERSION_ENV,
    PREDICTOR_PORT,
    PREDICTOR_PORT_ENV,
    PREDICTOR_URL_ENV,
    SERVED_MODEL_NAME,
    STORAGE_URI_ENV,
)
from core.pipeline import DEPLOYMENT_FILE

log = logging.getLogger(__name__)

SERVING_CONFIGMAP = "deepguard-serving"  # rendered by helm/deepguard/templates/predictor/configmap.yaml
SERVING_KEY = "serving.json"
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
        default_factory=lambda: ["--model-uri", "/mnt/models", "--http-host", "0.0.0.0", "--no-reload"]
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
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri())
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
        # A logged model's version resolves to its artifact location; a runs:/ source does not, so follow it.
        artifact_uri = client.get_model_version_download_uri(model_name, version.version)
        if artifact_uri.startswith("runs:/"):
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            artifact_uri = RunsArtifactRepository.get_underlying_uri(artifact_uri)
    except MlflowException as exc:
        raise DeployError(
            f"no {CHAMPION} for model {model_name!r} in the registry: {exc.message.splitlines()[0]}"
        ) from None
    storage_uri = artifact_uri if uri_map is None else map_artifact_uri(artifact_uri, uri_map)
    return Champion(
        model_name=model_name,
        version=str(version.version),
        artifact_uri=artifact_uri,
        storage_uri=storage_uri,
    )


def tag_version(champion: Champion, result: DeploymentResult) -> None:
    """Record the outcome on the model version, so the registry shows what is deployed where."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = {
        "deployment_status": result.status,
        "deployed_at": result.deployed_at,
        "deployment_target": result.target,
        "deployment_storage_uri": result.storage_uri,
        "deployment_canary_percent": "" if result.canary_percent is None else str(result.canary_percent),
    }
    for key, value in tags.items():
        client.set_model_version_tag(champion.model_name, champion.version, key, value)


# --------------------------------------------------------------------------- InferenceService construction


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
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
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


def kube_api_client() -> Any:
    """An API client from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # KUBECONFIG read now, not at import time as the client's default is (a long-lived process may
            # change it); it may list several files separated by ":".
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise DeployError(f"no Kubernetes configuration (in-cluster or KUBECONFIG): {exc}") from None
    return client.ApiClient(configuration)


def current_namespace() -> str:
    """The pod's namespace in a cluster, else DEEPGUARD_NAMESPACE, else ``deepguard``."""
    if "DEEPGUARD_NAMESPACE" in os.environ:
        return os.environ["DEEPGUARD_NAMESPACE"]
    if IN_CLUSTER_NAMESPACE_FILE.is_file():
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
    return DEFAULT_NAMESPACE


API_TIMEOUT_S = 30  # one API call; a hung API server must not hang the stage


def _k8s_call(what: str, call: Callable[[], Any], missing_ok: bool = False) -> Any:
    """Run one Kubernetes API call; failures become one-line DeployErrors (404: None if ``missing_ok``)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        if missing_ok and exc.status == 404:
            return None
        raise DeployError(f"{what}: HTTP {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        raise DeployError(f"{what}: Kubernetes API unreachable ({type(exc).__name__})") from None


def read_serving_settings(api_client: Any, namespace: str) -> ServingSettings:
    """Read the chart's serving settings; fall back to the defaults (with a warning) when absent."""
    from kubernetes.client import CoreV1Api

    config_map = _k8s_call(
        f"read ConfigMap {namespace}/{SERVING_CONFIGMAP}",
        lambda: CoreV1Api(api_client).read_namespaced_config_map(
            SERVING_CONFIGMAP, namespace, _request_timeout=API_TIMEOUT_S
        ),
        missing_ok=True,
    )
    if config_map is None:
        log.warning(
            "ConfigMap %s/%s not found (chart not installed?): using the chart's defaults",
            namespace,
            SERVING_CONFIGMAP,
        )
        return ServingSettings()
    return ServingSettings.from_json((config_map.data or {}).get(SERVING_KEY, "{}"))


def _predictor_env(obj: dict[str, Any], name: str) -> str | None:
    for container in obj.get("spec", {}).get("predictor", {}).get("containers", []):
        for env in container.get("env") or []:
            if env.get("name") == name:
                return env.get("value")
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    """Ready for the generation we applied: status caught up, Ready=True, newest revision is the ready one."""
    status = obj.get("status") or {}
    if status.get("observedGeneration", 0) < obj.get("metadata", {}).get("generation", 0):
        return False
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    predictor = (status.get("components") or {}).get("predictor") or {}
    latest_created = predictor.get("latestCreatedRevision")
    return ready and (latest_created is None or latest_created == predictor.get("latestReadyRevision"))


class InferenceServices:
    """The custom-objects calls the rollout needs (get/create/patch), for one namespace."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes.client import CustomObjectsApi

        self._api = CustomObjectsApi(api_client)
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any] | None:
        """The InferenceService, or None when it does not exist."""
        return _k8s_call(
            f"get inferenceservice {self.namespace}/{name}",
            lambda: self._api.get_namespaced_custom_object(
                KSERVE_GROUP,
                KSERVE_VERSION,
                self.namespace,
                KSERVE_PLURAL,
                name,
                _request_timeout=API_TIMEOUT_S,
            ),
            missing_ok=True,
        )

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the InferenceService."""
        return _k8s_call(
            f"create inferenceservice {self.namespace}/{body['metadata']['name']}",
            lambda: self._api.create_namespaced_custom_object(
                KSERVE_GROUP,
                KSERVE_VERSION,
                self.namespace,
                KSERVE_PLURAL,
                body,
                _request_timeout=API_TIMEOUT_S,
            ),
        )

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON-merge-patch the InferenceService (the client sends a dict body as merge-patch)."""
        return _k8s_call(
            f"patch inferenceservice {self.namespace}/{name}",
            lambda: self._api.patch_namespaced_custom_object(
                KSERVE_GROUP,
                KSERVE_VERSION,
                self.namespace,
                KSERVE_PLURAL,
                name,
                body,
                _request_timeout=API_TIMEOUT_S,
            ),
        )


def wait_ready(services: InferenceServices, name: str, timeout_s: float, poll_s: float) -> bool:
    """Poll until the InferenceService is Ready for its current generation, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        obj = services.get(name)
        if obj is not None and is_ready(obj):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def replace_patch(wanted: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch that makes ``current``'s labels, annotations and predictor equal ``wanted``'s.

    A merge patch only adds and overwrites, so keys ``current`` has and ``wanted`` lacks are sent as null
    (removed); lists such as ``containers`` are replaced whole by a merge patch anyway.
    """

    def replacing(new: dict[str, Any] | None, old: dict[str, Any] | None) -> dict[str, Any]:
        new, old = new or {}, old or {}
        return {**{key: None for key in old if key not in new}, **new}

    wanted_meta, current_meta = wanted.get("metadata", {}), current.get("metadata", {})
    return {
        "metadata": {
            "labels": replacing(wanted_meta.get("labels"), current_meta.get("labels")),
            "annotations": replacing(wanted_meta.get("annotations"), current_meta.get("annotations")),
        },
        "spec": {"predictor": replacing(wanted["spec"]["predictor"], current["spec"]["predictor"])},
    }


def rollout(
    services: InferenceServices,
    manifest: dict[str, Any],
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
) -> tuple[str, str]:
    """Apply ``manifest`` with a canary, wait for Ready, then promote or roll back.

    Args:
        services: InferenceService calls for the target namespace.
        manifest: The InferenceService built with ``canaryTrafficPercent`` already set (or absent).
        canary_percent: The canary share in ``manifest`` (None: no canary step).
        timeout_s: How long the new revision has to become Ready.
        poll_s: Seconds between status reads.

    Returns:
        ``(status, detail)``: status is promoted, deployed, unchanged, rolled_back or failed.
    """
    name = manifest["metadata"]["name"]
    version = _predictor_env(manifest, MODEL_VERSION_ENV)
    previous = services.get(name)
    if previous is None:
        # The first revision takes all traffic: there is nothing to split with or to roll back to.
        manifest["spec"]["predictor"].pop("canaryTrafficPercent", None)
        log.info("creating inferenceservice %s/%s with version %s", services.namespace, name, version)
        services.create(manifest)
        if wait_ready(services, name, timeout_s, poll_s):
            return "deployed", f"created; Ready within {timeout_s:g}s"
        return "failed", f"created but not Ready within {timeout_s:g}s (nothing to roll back to)"
    old_version = _predictor_env(previous, MODEL_VERSION_ENV)
    same_storage = _predictor_env(previous, STORAGE_URI_ENV) == _predictor_env(manifest, STORAGE_URI_ENV)
    if old_version == version and same_storage and is_ready(previous):
        return "unchanged", f"version {version} is already served and Ready"
    log.info(
        "rolling out version %s (was %s) to %s/%s with %s",
        version,
        old_version,
        services.namespace,
        name,
        f"{canary_percent}% canary traffic" if canary_percent is not None else "all traffic",
    )
    applied = services.patch(name, replace_patch(manifest, previous))
    if not wait_ready(services, name, timeout_s, poll_s):
        log.warning("version %s not Ready within %gs: restoring version %s", version, timeout_s, old_version)
        services.patch(name, replace_patch(previous, applied))
        return "rolled_back", f"not Ready within {timeout_s:g}s; restored version {old_version}"
    if canary_percent is None or canary_percent >= 100:
        return "promoted", f"Ready within {timeout_s:g}s; all traffic on version {version}"
    log.info("canary Ready: promoting version %s to 100%% of traffic", version)
    services.patch(name, {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    if not wait_ready(services, name, timeout_s, poll_s):
        return "failed", f"promoted to 100% but not Ready again within {timeout_s:g}s"
    return "promoted", f"canary {canary_percent}% Ready, then promoted to 100%"


# --------------------------------------------------------------------------- targets


def deploy_kserve(
    champion: Champion,
    settings: ServingSettings,
    services: InferenceServices,
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
) -> DeploymentResult:
    """Roll ``champion`` out to the InferenceService described by ``settings``."""
    if canary_percent is not None and not settings.canary_supported:
        log.warning(
            "deploymentMode %s has no traffic splitting: rolling out without a canary",
            settings.deploymentMode,
        )
        canary_percent = None
    manifest = to_manifest(build_inference_service(settings, services.namespace, champion, canary_percent))
    status, detail = rollout(services, manifest, canary_percent, timeout_s, poll_s)
    if status in ("deployed", "unchanged"):
        canary_percent = None  # a first revision or no change: no traffic was split
    return DeploymentResult(
        status=status,
        target=f"kserve:{services.namespace}/{settings.name}",
        model_name=champion.model_name,
        version=champion.version,
        storage_uri=champion.storage_uri,
        canary_percent=canary_percent,
        detail=detail,
    )


def predictor_url() -> str:
    """PREDICTOR_URL, else the local predictor on PREDICTOR_PORT."""
    port = os.environ.get(PREDICTOR_PORT_ENV, PREDICTOR_PORT)
    return os.environ.get(PREDICTOR_URL_ENV) or f"http://127.0.0.1:{port}"


def deploy_local(champion: Champion, url: str, model: str, timeout_s: float) -> DeploymentResult:
    """Make the running local predictor reload the champion and check the version it then serves."""
    import requests

    shown = redact_credentials(url)  # the report and the log never carry PREDICTOR_URL's user:password
    result = DeploymentResult(
        status="reloaded",
        target=f"local:{shown}",
        model_name=champion.model_name,
        version=champion.version,
        storage_uri=champion.artifact_uri,
        endpoint=shown,
    )
    try:
        response = requests.post(f"{url}/v2/repository/models/{model}/load", timeout=timeout_s)
    except requests.ConnectionError:
        log.info(
            "no predictor is running at %s: nothing to reload; `make serve` will serve the champion "
            "(version %s) when it starts",
            shown,
            champion.version,
        )
        result.status, result.detail = "no_predictor", f"no predictor at {shown}"
        return result
    except requests.RequestException as exc:
        raise DeployError(f"reload request to {url} failed: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise DeployError(
            f"predictor at {url} refused the reload: HTTP {response.status_code} {response.text[:200]}"
        )
    metadata = requests.get(f"{url}/v2/models/{model}", timeout=timeout_s).json()
    served = [str(v) for v in metadata.get("versions") or []]
    if champion.version not in served:
        raise DeployError(
            f"predictor at {url} serves version(s) {served} after the reload, "
            f"expected the champion {champion.version}"
        )
    result.detail = f"predictor reloaded; serves version {champion.version}"
    return result


def run(
    params: Params,
    target: str,
    dry_run: bool = False,
    timeout_s: float = 600.0,
    canary_percent: int | None = 20,
    namespace: str | None = None,
    settings_file: Path | None = None,
    poll_s: float = 5.0,
) -> DeploymentResult:
    """Roll the champion out and record the outcome.

    Args:
        params: Validated params (``mlflow.model_name``).
        target: ``kserve`` (the InferenceService) or ``local`` (the predictor on PREDICTOR_URL).
        dry_run: Print the InferenceService manifest (YAML) instead of applying it; no cluster access.
        timeout_s: Seconds the new revision has to become Ready.
        canary_percent: Traffic share of the new revision before promotion (None: no canary).
        namespace: Target namespace (default: the pod's namespace, DEEPGUARD_NAMESPACE or ``deepguard``).
        settings_file: Serving settings JSON (the ConfigMap's serving.json) instead of the cluster's.
        poll_s: Seconds between status reads.

    Returns:
        The deployment result, also written to reports/deployment.json (not for a dry run).

    Raises:
        DeployError: on a missing champion, an unreachable cluster, or a rollout rolled back or failed.
    """
    namespace = namespace or current_namespace()
    settings = ServingSettings.from_json(settings_file.read_text()) if settings_file else None
    api_client = None
    if target == "kserve" and not dry_run and settings is None:
        api_client = kube_api_client()
        settings = read_serving_settings(api_client, namespace)
    settings = settings or ServingSettings()
    champion = read_champion(
        params.mlflow.model_name, settings.artifactUriMap if target == "kserve" or dry_run else None
    )
    log.info("champion: %s version %s at %s", champion.model_name, champion.version, champion.artifact_uri)
    if dry_run:
        isvc = build_inference_service(
            settings, namespace, champion, canary_percent if settings.canary_supported else None
        )
        sys.stdout.write(yaml.safe_dump(to_manifest(isvc), sort_keys=False))
        return DeploymentResult(
            status="dry_run",
            target=f"kserve:{namespace}/{settings.name}",
            model_name=champion.model_name,
            version=champion.version,
            storage_uri=champion.storage_uri,
            canary_percent=canary_percent,
        )
    if target == "local":
        result = deploy_local(champion, predictor_url(), SERVED_MODEL_NAME, timeout_s)
    else:
        services = InferenceServices(api_client or kube_api_client(), namespace)
        result = deploy_kserve(champion, settings, services, canary_percent, timeout_s, poll_s)
    write_json(DEPLOYMENT_FILE, asdict(result))
    if result.status not in ("no_predictor", "unchanged"):  # keep the tags of the rollout that is serving
        tag_version(champion, result)
    log.info("deploy: %s: version %s -> %s (%s)", result.status, result.version, result.target, result.detail)
    if result.status in ("rolled_back", "failed"):
        raise DeployError(f"version {result.version} {result.status.replace('_', ' ')}: {result.detail}")
    return result


def _default_target() -> str:
    # Inside a cluster the champion goes to the InferenceService; on a workstation to the local predictor.
    return "kserve" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"


def _percent(text: str) -> int | None:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("expected 0..100")
    return None if value in (0, 100) else value


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.deploy``: parse arguments, set up logging, call :func:`run`."""
    parser = stage_parser(
        "deploy",
        "Roll the MLflow champion out to KServe (canary, promote or roll back), "
        "or reload the local predictor.",
    )
    parser.add_argument(
        "--target",
        choices=("kserve", "local"),
        default=_default_target(),
        help="kserve: the InferenceService; local: the predictor at PREDICTOR_URL "
        "(default: kserve inside a cluster, else local)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the InferenceService YAML; apply nothing"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for Ready (default 600)"
    )
    parser.add_argument(
        "--canary-percent",
        type=_percent,
        default=20,
        help="traffic share of the new revision before promotion; 0 or 100: no canary (default 20)",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="namespace (default: the pod's, else DEEPGUARD_NAMESPACE, else deepguard)",
    )
    parser.add_argument(
        "--serving-settings",
        type=Path,
        default=None,
        help="serving settings JSON (the deepguard-serving ConfigMap's serving.json) "
        "instead of reading the ConfigMap",
    )
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)

    def stage(args: argparse.Namespace, params: Params) -> DeploymentResult:
        if args.dry_run:
            # stdout carries only the manifest, so it can be piped to `kubectl apply -f -`.
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                    handler.setStream(sys.stderr)
        settings_file = args.serving_settings.resolve() if args.serving_settings else None
        return run(
            params,
            args.target,
            args.dry_run,
            args.timeout,
            args.canary_percent,
            args.namespace,
            settings_file,
            args.poll,
        )

    return run_stage("deploy", stage, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
