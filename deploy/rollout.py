"""Roll a champion out to the KServe InferenceService: canary, wait for Ready, promote or roll back."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from core.names import (
    MODEL_VERSION_ENV,
    STORAGE_URI_ENV,
)
from core.settings import settings
from deploy.manifest import (
    DEFAULT_NAMESPACE,
    IN_CLUSTER_NAMESPACE_FILE,
    KSERVE_GROUP,
    KSERVE_PLURAL,
    KSERVE_VERSION,
    SERVING_CONFIGMAP,
    Champion,
    DeployError,
    ServingConfig,
    rollout_manifest,
)
from deploy.registry import DeploymentResult

log = logging.getLogger(__name__)


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
    if settings().namespace:
        return settings().namespace
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


def read_serving_config(api_client: Any, namespace: str) -> ServingConfig:
    """Read the chart's serving ConfigMap (its InferenceService without a champion)."""
    from kubernetes.client import CoreV1Api

    config_map = _k8s_call(
        f"read ConfigMap {namespace}/{SERVING_CONFIGMAP}",
        lambda: CoreV1Api(api_client).read_namespaced_config_map(
            SERVING_CONFIGMAP, namespace, _request_timeout=API_TIMEOUT_S
        ),
        missing_ok=True,
    )
    where = f"ConfigMap {namespace}/{SERVING_CONFIGMAP}"
    if config_map is None:
        raise DeployError(f"{where} not found: install the chart (helm/deepguard) in {namespace} first")
    return ServingConfig.from_config_map(config_map.data, where)


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


# Judges a Ready canary: (canary revision, stable revision) -> (promote, why). deploy/canary.py watch().
CanaryAnalysis = Callable[[str, str], tuple[bool, str]]


def _ready_revision(obj: dict[str, Any] | None) -> str | None:
    return (
        (((obj or {}).get("status") or {}).get("components") or {})
        .get("predictor", {})
        .get("latestReadyRevision")
    )


def rollout(
    services: InferenceServices,
    manifest: dict[str, Any],
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
    analysis: CanaryAnalysis | None = None,
) -> tuple[str, str]:
    """Apply ``manifest`` with a canary, wait for Ready, judge it if asked, then promote or roll back.

    Args:
        services: InferenceService calls for the target namespace.
        manifest: The InferenceService built with ``canaryTrafficPercent`` already set (or absent).
        canary_percent: The canary share in ``manifest`` (None: no canary step).
        timeout_s: How long the new revision has to become Ready.
        poll_s: Seconds between status reads.
        analysis: Judges the Ready canary against the stable revision (None: promote once Ready).

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
    evidence = "Ready"
    if analysis is not None:
        canary, stable = _ready_revision(services.get(name)), _ready_revision(previous)
        promote, evidence = analysis(canary or "unknown", stable or "unknown")
        if not promote:
            log.warning(
                "canary version %s refused (%s): restoring version %s", version, evidence, old_version
            )
            services.patch(name, replace_patch(previous, services.get(name) or applied))
            return "rolled_back", f"canary {canary_percent}% {evidence}; restored version {old_version}"
    log.info("canary %s: promoting version %s to 100%% of traffic", evidence, version)
    services.patch(name, {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    if not wait_ready(services, name, timeout_s, poll_s):
        return "failed", f"promoted to 100% but not Ready again within {timeout_s:g}s"
    return "promoted", f"canary {canary_percent}% {evidence}, then promoted to 100%"


# --------------------------------------------------------------------------- targets


def deploy_kserve(
    champion: Champion,
    config: ServingConfig,
    services: InferenceServices,
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
    analysis: CanaryAnalysis | None = None,
) -> DeploymentResult:
    """Roll ``champion`` out to the chart's InferenceService (``config``); ``analysis`` judges the canary."""
    if canary_percent is not None and not config.canary_supported:
        log.warning(
            "deploymentMode %s has no traffic splitting: rolling out without a canary",
            config.deployment_mode,
        )
        canary_percent = None
    manifest = rollout_manifest(config, services.namespace, champion, canary_percent)
    status, detail = rollout(services, manifest, canary_percent, timeout_s, poll_s, analysis)
    if status in ("deployed", "unchanged"):
        canary_percent = None  # a first revision or no change: no traffic was split
    return DeploymentResult(
        status=status,
        target=f"kserve:{services.namespace}/{config.name}",
        model_name=champion.model_name,
        version=champion.version,
        storage_uri=champion.storage_uri,
        canary_percent=canary_percent,
        detail=detail,
    )
