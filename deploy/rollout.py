"""Roll a champion out to the KServe InferenceService: canary, wait for Ready, promote or roll back."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import yaml

from core.names import (
    MODEL_VERSION_ENV,
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
    KubernetesUnavailableError,
    ServingConfig,
    deployment_mode,
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
        except (config.ConfigException, OSError, TypeError, yaml.YAMLError) as exc:
            # A YAML error spans lines (where, then what): the stage's error stays one line.
            why = " ".join(str(exc).split())
            raise DeployError(f"no Kubernetes configuration (in-cluster or KUBECONFIG): {why}") from None
    return client.ApiClient(configuration)


def current_namespace() -> str:
    """DEEPGUARD_NAMESPACE, else the pod's namespace in a cluster, else ``deepguard``."""
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
        # RBAC or a webhook refusing (4xx) refuses again; an overloaded or failing API server may not, nor
        # does a 409 (another deploy created or changed the object since we read it: a retry reads it anew).
        passing = exc.status is not None and (exc.status >= 500 or exc.status in (409, 429))
        why = f"HTTP {exc.status} {exc.reason}{_status_message(exc.body)}"
        raise (KubernetesUnavailableError if passing else DeployError)(f"{what}: {why}") from None
    except HTTPError as exc:
        why = f"Kubernetes API unreachable ({type(exc).__name__})"
        raise KubernetesUnavailableError(f"{what}: {why}") from None


def _status_message(body: str | bytes | None) -> str:
    """``: <message>`` of the API server's Status: why RBAC or an admission webhook refused (first line)."""
    try:
        message = json.loads(body or "{}").get("message") or ""
    except (ValueError, AttributeError):  # not a Status (a proxy's page): the HTTP status says what it can
        return ""
    return f": {message.strip().splitlines()[0][:500]}" if message.strip() else ""


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
    """Serverless: Ready for the spec we applied: status caught up, Ready=True, newest revision is the ready
    one, and the status routes traffic as the spec's ``canaryTrafficPercent`` asks."""
    status = obj.get("status") or {}
    if status.get("observedGeneration", 0) < obj.get("metadata", {}).get("generation", 0):
        return False
    predictor = _predictor_status(obj)
    latest_created = predictor.get("latestCreatedRevision")
    if not _ready_condition(obj) or latest_created not in (None, predictor.get("latestReadyRevision")):
        return False
    return routes_as_asked(obj)


def _ready_condition(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def rolled_out(deployment: dict[str, Any], replaced: str | None = None) -> bool:
    """RawDeployment: whether the predictor's Deployment runs its current template on every pod.

    In this mode KServe's Ready is the Deployment's ``Available``, True all through a rolling update while
    the old pods serve, and its ``observedGeneration`` is the Deployment's counter. So the Deployment itself
    is read, as ``kubectl rollout status`` reads it: spec observed, every replica updated, no old one left,
    every updated one available; and, after a predictor change, a ReplicaSet revision other than ``replaced``
    (the Deployment's until then: KServe may not have applied the change yet).
    """
    meta, spec, status = (deployment.get(part) or {} for part in ("metadata", "spec", "status"))
    if replaced is not None and (meta.get("annotations") or {}).get(DEPLOYMENT_REVISION) == replaced:
        return False
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False
    updated = status.get("updatedReplicas") or 0
    return (
        updated >= spec.get("replicas", 1)
        and (status.get("replicas") or 0) <= updated
        and (status.get("availableReplicas") or 0) >= updated
    )


def routes_as_asked(obj: dict[str, Any]) -> bool:
    """Whether the status's traffic gives the latest Ready revision the share the spec asks for.

    A change of ``canaryTrafficPercent`` alone makes no revision, and KServe's ``observedGeneration`` is the
    Knative Service's counter: only the traffic in the status tells the split asked for from the one before.
    As KServe routes it, the target that follows the latest Ready revision (``latestRevision: true``) gets
    ``canaryTrafficPercent``, or all traffic without one or without a rolled-out revision to split with.
    """
    predictor = _predictor_status(obj)
    percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
    split = percent is not None and bool(predictor.get("latestRolledoutRevision"))
    latest = [target for target in predictor.get("traffic") or [] if target.get("latestRevision")]
    if any(target.get("revisionName") != predictor.get("latestReadyRevision") for target in latest):
        return False  # the route still follows an older revision
    return sum(target.get("percent") or 0 for target in latest) == (min(percent, 100) if split else 100)


# The ReplicaSet revision of a Deployment: a new one for each pod template, never for scaling.
DEPLOYMENT_REVISION = "deployment.kubernetes.io/revision"


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

    def predictor_deployment(self, name: str) -> dict[str, Any] | None:
        """RawDeployment: the Deployment KServe runs the predictor of InferenceService ``name`` in."""
        from kubernetes.client import AppsV1Api

        deployment = _k8s_call(
            f"get deployment {self.namespace}/{name}-predictor",
            lambda: AppsV1Api(self._api.api_client).read_namespaced_deployment(
                f"{name}-predictor", self.namespace, _request_timeout=API_TIMEOUT_S
            ),
            missing_ok=True,
        )
        return None if deployment is None else self._api.api_client.sanitize_for_serialization(deployment)

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


def wait_ready(
    services: InferenceServices, name: str, timeout_s: float, poll_s: float, replaced: str | None = None
) -> bool:
    """Poll until the InferenceService is Ready for its current generation, or the timeout passes.

    ``replaced``: the revision a predictor change replaces; Ready counts only once the status names another.
    KServe copies ``observedGeneration`` from the Knative Service, whose counter is its own, so a status from
    before the change can look current; a traffic-only change is told apart by its split (:func:`is_ready`).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        obj = services.get(name)
        if obj is not None and _serves(services, obj, replaced):
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

# KServe's rollback: all traffic to the last rolled-out revision at once, the new one keeps none.
PIN_TO_STABLE = {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def _predictor_status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (((obj or {}).get("status") or {}).get("components") or {}).get("predictor") or {}


def _stable_revision(obj: dict[str, Any]) -> str | None:
    # KServe tracks the revision that last had all traffic; before a split that is the latest ready one.
    status = _predictor_status(obj)
    return status.get("latestRolledoutRevision") or status.get("latestReadyRevision")


def _one_line(exc: Exception) -> str:
    # A DeployError is already one line for the user; anything else is named by its type.
    return str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"


def _holds(current: Any, wanted: Any) -> bool:
    """Whether ``current`` has every value ``wanted`` sets; what the API server or KServe's webhook added to
    the stored object (defaults such as a port's ``protocol``) is no difference."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(_holds(current.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(current, list) and len(current) == len(wanted) and all(map(_holds, current, wanted))
    return current == wanted


def _serves(services: InferenceServices, obj: dict[str, Any], replaced: str | None = None) -> bool:
    """Whether ``obj``'s spec is what serves, on a revision other than ``replaced`` when that is given."""
    if deployment_mode(obj) == "Serverless":
        return is_ready(obj) and (replaced is None or _revision(services, obj) != replaced)
    deployment = services.predictor_deployment(obj["metadata"]["name"])
    return _ready_condition(obj) and deployment is not None and rolled_out(deployment, replaced)


def _revision(services: InferenceServices, obj: dict[str, Any]) -> str | None:
    """The newest revision of ``obj``'s predictor: Knative's (Serverless), else its Deployment's."""
    if deployment_mode(obj) == "Serverless":
        return _predictor_status(obj).get("latestCreatedRevision")
    deployment = services.predictor_deployment(obj["metadata"]["name"]) or {}
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_REVISION)


def _replaced(services: InferenceServices, live: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The revision that applying ``wanted``'s predictor to ``live`` replaces (None: the predictor, traffic
    aside, is already ``wanted``'s, so no new revision comes)."""
    if _holds(live["spec"]["predictor"], _template(wanted)):
        return None
    return _revision(services, live)


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    # What makes a revision: the predictor without its traffic share.
    return {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}


def _split_in_progress(obj: dict[str, Any]) -> bool:
    """A canary share (or KServe's rollback pin, 0) is set: the newest revision does not have all traffic."""
    percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
    return percent is not None and percent < 100


def _judge_canary(
    services: InferenceServices,
    name: str,
    previous: dict[str, Any],
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
    analysis: CanaryAnalysis | None,
    replaced: str | None = None,
) -> tuple[bool, str]:
    """Wait for the new revision (not ``replaced``) to be Ready and judge it: ``(promote, why)``."""
    if not wait_ready(services, name, timeout_s, poll_s, replaced):
        return False, f"not Ready within {timeout_s:g}s"
    if canary_percent is None or canary_percent >= 100:
        return True, "Ready"
    if analysis is None:
        return True, f"canary {canary_percent}% Ready"
    canary = _predictor_status(services.get(name)).get("latestReadyRevision")
    promote, evidence = analysis(canary or "unknown", _stable_revision(previous) or "unknown")
    return promote, f"canary {canary_percent}% {evidence}"


def _start_held_back(
    services: InferenceServices,
    name: str,
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
    replaced: str | None = None,
) -> bool:
    """Wait until the new revision (not ``replaced``), started at 0 %, is Ready; then give it its share."""
    if not wait_ready(services, name, timeout_s, poll_s, replaced):
        return False
    services.patch(name, {"spec": {"predictor": {"canaryTrafficPercent": canary_percent}}})
    return True


def _roll_back(
    services: InferenceServices,
    name: str,
    previous: dict[str, Any],
    before: str | None,
    timeout_s: float,
    poll_s: float,
) -> tuple[bool, str]:
    """Pin all traffic to the stable revision, restore ``previous``'s spec, wait for it to be Ready.

    Restoring the spec alone would route all traffic to the latest Ready revision, the refused one, until
    the restored revision is Ready; so the pin stays until then, and stays for good when ``previous`` was
    itself a split (its canary was never judged). ``before``: the newest revision when the rollout began.

    Returns:
        ``(restored, what)``.
    """
    old_version = _predictor_env(previous, MODEL_VERSION_ENV)
    services.patch(name, PIN_TO_STABLE)
    pinned = copy.deepcopy(previous)
    pinned["spec"]["predictor"]["canaryTrafficPercent"] = 0
    live = services.get(name) or previous
    # The status once the pin alone is reconciled (the refused revision Ready, at 0 %) is not the restored
    # revision Ready; unless the refused revision never appeared, there is nothing to tell it apart from.
    replaced = _replaced(services, live, previous)
    if replaced == before:
        replaced = None
    services.patch(name, replace_patch(pinned, live))
    if not wait_ready(services, name, timeout_s, poll_s, replaced):
        return False, (
            f"version {old_version} not Ready within {timeout_s:g}s; "
            "all traffic stays on the last rolled-out revision"
        )
    if _split_in_progress(previous):
        # ``previous`` was itself mid-split (a stopped rollout or a pin): its canary was never judged.
        return True, "all traffic pinned to the last rolled-out revision"
    percent = previous["spec"]["predictor"].get("canaryTrafficPercent")
    services.patch(name, {"spec": {"predictor": {"canaryTrafficPercent": percent}}})
    if not wait_ready(services, name, timeout_s, poll_s):
        return False, f"version {old_version} unpinned but not Ready again within {timeout_s:g}s"
    return True, f"restored version {old_version}"


def _refuse(
    services: InferenceServices,
    name: str,
    previous: dict[str, Any],
    before: str | None,
    version: str | None,
    why: str,
    timeout_s: float,
    poll_s: float,
) -> tuple[str, str]:
    """Roll ``version`` back to ``previous``: ``(rolled_back or failed, detail)``."""
    log.warning(
        "version %s refused (%s): restoring version %s",
        version,
        why,
        _predictor_env(previous, MODEL_VERSION_ENV),
    )
    try:
        restored, what = _roll_back(services, name, previous, before, timeout_s, poll_s)
    except Exception as exc:
        return "failed", f"{why}; rollback failed: {_one_line(exc)}"
    return ("rolled_back" if restored else "failed"), f"{why}; {what}"


def rollout(
    services: InferenceServices,
    manifest: dict[str, Any],
    canary_percent: int | None,
    timeout_s: float,
    poll_s: float,
    analysis: CanaryAnalysis | None = None,
) -> tuple[str, str]:
    """Apply ``manifest`` with a canary, wait for Ready, judge it if asked, then promote or roll back.

    A failure while the canary is live (Prometheus or the Kubernetes API unreachable) rolls back as a refusal
    does. A rerun that finds this version mid-split (a stopped rollout, or KServe's rollback pin) rolls it out
    again from the start. Mid-split, the latest Ready revision is the one the split holds back (a refused or
    an unjudged canary), and KServe gives the canary share, or all traffic without one, to the latest Ready
    revision: so the new revision first starts at 0 % and takes its share only once it is Ready.

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
    # Unchanged: the champion and the chart's settings (a probe edit after `helm upgrade`) are both there.
    applied = _holds(previous["spec"]["predictor"], _template(manifest))
    if applied and _serves(services, previous) and not _split_in_progress(previous):
        return "unchanged", f"version {version} is already served and Ready"
    log.info(
        "rolling out version %s (was %s) to %s/%s with %s",
        version,
        old_version,
        services.namespace,
        name,
        f"{canary_percent}% canary traffic" if canary_percent is not None else "all traffic",
    )
    # A changed predictor makes a new revision: the one the status names until then is not the canary.
    before = _revision(services, previous)
    replaced = None if applied else before
    held_back = _split_in_progress(previous)
    staged = copy.deepcopy(manifest)
    if held_back:
        staged["spec"]["predictor"]["canaryTrafficPercent"] = 0
        log.info("a split is in progress: version %s starts at 0%% and takes traffic once Ready", version)
    services.patch(name, replace_patch(staged, previous))
    try:
        if held_back and not _start_held_back(services, name, canary_percent, timeout_s, poll_s, replaced):
            promote, why = False, f"not Ready within {timeout_s:g}s"
        else:
            promote, why = _judge_canary(
                services, name, previous, canary_percent, timeout_s, poll_s, analysis, replaced
            )
    except Exception as exc:  # whatever stops the judging, an unjudged canary must not keep its traffic
        promote, why = False, f"canary not judged: {_one_line(exc)}"
    if not promote:
        return _refuse(services, name, previous, before, version, why, timeout_s, poll_s)
    if canary_percent is None or canary_percent >= 100:
        return "promoted", f"Ready within {timeout_s:g}s; all traffic on version {version}"
    log.info("%s: promoting version %s to 100%% of traffic", why, version)
    try:
        services.patch(name, {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
        ready = wait_ready(services, name, timeout_s, poll_s)
        failure = None if ready else f"not Ready within {timeout_s:g}s"
    except Exception as exc:  # the canary is still live with its share: handled as a refusal
        failure = _one_line(exc)
    if failure:
        why = f"{why}; promoting to 100% failed: {failure}"
        return _refuse(services, name, previous, before, version, why, timeout_s, poll_s)
    return "promoted", f"{why}, then promoted to 100%"


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
