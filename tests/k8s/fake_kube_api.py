"""A FAKE Kubernetes API server on 127.0.0.1: the boundary the deploy stage cannot reach in tests.

It emulates only what ``deploy`` calls: ``GET`` of a ConfigMap and ``GET``/``POST``/``PATCH``
(JSON merge patch) of ``serving.kserve.io/v1beta1`` InferenceServices, with ``metadata.generation`` bumped on
spec changes and a stand-in for the KServe controller that marks a generation Ready or not, by a policy,
and routes traffic as KServe's Serverless mode does with ``canaryTrafficPercent``; and what the chart's
``lookup`` needs under ``helm template --dry-run=server``: the core group's discovery and ``GET`` of a Secret.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workspace import free_port

ISVC_PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices"
    r"(?:/(?P<name>[^/?]+))?$"
)
CONFIGMAP_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/?]+)$")
SECRET_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets/(?P<name>[^/?]+)$")
# Discovery of the core group's Secrets only: what Helm's lookup resolves "v1" "Secret" through.
DISCOVERY = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "secrets",
                "singularName": "secret",
                "namespaced": True,
                "kind": "Secret",
                "verbs": ["get"],
            }
        ],
    },
}
DEPLOYMENT_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/?]+)$")
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
SCALING_FIELDS = ("canaryTrafficPercent", "minReplicas", "maxReplicas")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies ``application/merge-patch+json``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Request:
    """One call the fake received."""

    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class FakeCluster:
    """State of the fake API server: objects, the calls received, and when a generation becomes Ready.

    ``becomes_ready(obj)`` plays the KServe controller: called on every GET of an InferenceService whose
    generation is not yet observed-Ready; True makes the newest revision Ready and take traffic. As Knative
    does, a new revision is created only when the predictor changes in more than ``canaryTrafficPercent``.
    ``routes`` records each reconciled traffic split (revision -> percent), ``revisions`` each revision's
    predictor; ``unavailable`` makes every call answer 503; ``refusal`` (code, message) makes every PATCH
    answer that Status, as RBAC or an admission webhook does. KServe copies ``status.observedGeneration`` from
    the Knative Service, a counter of its own: ``generation_skew`` is how far it runs ahead of the
    InferenceService's (after a KServe upgrade re-rendered the Knative Service), and ``status_lag`` how many
    reads after a spec change still return the status from before it (the controller has not reconciled yet).

    An InferenceService annotated ``serving.kserve.io/deploymentMode: RawDeployment`` is reconciled as KServe
    does in that mode (``PropagateRawStatus``): into a Deployment ``<name>-predictor`` (``deployments``) that
    rolls its pods over, ``becomes_ready`` saying whether the new pods become available; the status has no
    revisions or traffic, its Ready condition is the Deployment's ``Available`` (True while the old pods
    serve) and its ``observedGeneration`` is the Deployment's.
    """

    becomes_ready: Callable[[dict[str, Any]], bool]
    inference_services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: list[dict[str, int]] = field(default_factory=list)
    unavailable: bool = False
    refusal: tuple[int, str] | None = None
    generation_skew: int = 0
    status_lag: int = 0
    lagging: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str) -> list[Request]:
        """The calls with HTTP ``method`` made to InferenceServices."""
        return [r for r in self.requests if r.method == method and "inferenceservices" in r.path]

    def seed_ready(self, obj: dict[str, Any]) -> None:
        """Store an InferenceService that a previous rollout left Ready at generation 1."""
        obj = copy.deepcopy(obj)
        obj["metadata"].update(generation=1, resourceVersion="1")
        self._reconcile(obj, ready=True)
        self.inference_services[obj["metadata"]["namespace"], obj["metadata"]["name"]] = obj

    def _reconcile(self, obj: dict[str, Any], ready: bool) -> None:
        if obj["metadata"].get("annotations", {}).get(MODE_ANNOTATION) == "RawDeployment":
            return self._reconcile_raw(obj, ready)
        self._reconcile_serverless(obj, ready)

    def _reconcile_raw(self, obj: dict[str, Any], ready: bool) -> None:
        key = (obj["metadata"]["namespace"], f"{obj['metadata']['name']}-predictor")
        labels = {"serving.kserve.io/inferenceservice": obj["metadata"]["name"], "component": "predictor"}
        # The pod template: the predictor's pod fields (KServe keeps the replica bounds for the HPA).
        pod = {k: v for k, v in obj["spec"]["predictor"].items() if k not in SCALING_FIELDS}
        template = {"metadata": {"labels": labels}, "spec": pod}
        deployment = self.deployments.setdefault(
            key,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": key[1], "namespace": key[0], "generation": 0, "annotations": {}},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels}},
            },
        )
        meta, replicas = deployment["metadata"], deployment["spec"]["replicas"]
        old_pods = deployment.get("status", {}).get("availableReplicas", 0)
        if deployment["spec"].get("template") != template:  # a new ReplicaSet: its pods start from none
            deployment["spec"]["template"] = copy.deepcopy(template)
            meta["generation"] += 1
            meta["annotations"][REVISION_ANNOTATION] = str(
                int(meta["annotations"].get(REVISION_ANNOTATION, 0)) + 1
            )
        new_pods = replicas if ready else 0
        # A rolling update keeps the old pods until the new ones are available: Available stays True.
        available = new_pods or min(old_pods, replicas)
        deployment["status"] = {
            "observedGeneration": meta["generation"],
            "replicas": replicas if ready else replicas + 1,  # the surge pod of the new ReplicaSet
            "updatedReplicas": replicas if ready else 1,
            "availableReplicas": available,
            "conditions": [{"type": "Available", "status": "True" if available else "False"}],
        }
        obj["status"] = {
            "observedGeneration": meta["generation"],
            "components": {"predictor": {}},
            "conditions": [{"type": "Ready", "status": "True" if available else "False"}],
        }

    def _reconcile_serverless(self, obj: dict[str, Any], ready: bool) -> None:
        status = obj.setdefault("status", {})
        predictor = status.setdefault("components", {}).setdefault("predictor", {})
        template = {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
        revision = predictor.get("latestCreatedRevision")
        if revision is None or self.revisions[revision] != template:
            prefix = f"{obj['metadata']['name']}-predictor-"
            revision = f"{prefix}{sum(r.startswith(prefix) for r in self.revisions) + 1:05d}"
            self.revisions[revision] = copy.deepcopy(template)
        predictor["latestCreatedRevision"] = revision
        status["observedGeneration"] = obj["metadata"]["generation"] + self.generation_skew
        if ready:
            predictor["latestReadyRevision"] = revision
            status["conditions"] = [{"type": "Ready", "status": "True"}]
        else:
            status["conditions"] = [{"type": "Ready", "status": "False", "reason": "RevisionMissing"}]
        self._route(obj["spec"]["predictor"].get("canaryTrafficPercent"), predictor)

    def _route(self, canary_percent: int | None, predictor: dict[str, Any]) -> None:
        # KServe's ksvc reconciler (reconcilers/knative/ksvc_reconciler.go): the latest *Ready* revision gets
        # the canary share, the last rolled-out one the rest; without a share (or a rolled-out revision) the
        # latest Ready one gets all traffic. Its status propagation (apis/.../inference_service_status.go)
        # then tracks the rolled-out revisions, which may move the split: routed again until it settles.
        latest = predictor.get("latestReadyRevision")
        if latest is None:
            return
        while True:
            rolled_out = predictor.get("latestRolledoutRevision")
            split = canary_percent is not None and bool(rolled_out)
            share = canary_percent if split else 100
            route = {latest: share}
            if share < 100:
                route[rolled_out] = route.get(rolled_out, 0) + 100 - share
            # As Knative reports it: the target following the latest Ready revision, then the held-back one.
            predictor["traffic"] = [{"latestRevision": True, "revisionName": latest, "percent": share}]
            if share < 100:
                predictor["traffic"].append(
                    {"latestRevision": False, "revisionName": rolled_out, "percent": 100 - share}
                )
            self.routes.append(route)
            previous = predictor.get("previousRolledoutRevision")
            if rolled_out != latest and share == 100:  # the last revision given all traffic
                predictor["previousRolledoutRevision"] = rolled_out
                predictor["latestRolledoutRevision"] = latest
            elif rolled_out == latest == predictor.get("latestCreatedRevision") and share < 100 and previous:
                # The rolled-out revision pinned below 100 %: KServe's rollback to the one rolled out before.
                predictor["latestRolledoutRevision"] = previous
            if predictor.get("latestRolledoutRevision") == rolled_out:
                return

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The stored object after one controller step."""
        obj = self.inference_services.get(key)
        if obj is None:
            return None
        if self.lagging > 0:
            self.lagging -= 1
            return obj
        status = obj.get("status", {})
        observed = obj["metadata"]["generation"] + self.generation_skew
        ready_now = status.get("observedGeneration") == observed and any(
            c["status"] == "True" for c in status.get("conditions", [])
        )
        if not ready_now or self.deployments:  # a Deployment's rollout goes on after Available
            self._reconcile(obj, ready=self.becomes_ready(obj))
        return obj

    def store(self, key: tuple[str, str], obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """Store ``obj``, bumping generation when the spec changed (as the API server does)."""
        meta = obj.setdefault("metadata", {})
        old_meta = (old or {}).get("metadata", {})
        generation = old_meta.get("generation", 0)
        if old is None or old.get("spec") != obj.get("spec"):
            generation += 1
            self.lagging = self.status_lag
        meta["generation"] = generation
        meta["resourceVersion"] = str(int(old_meta.get("resourceVersion", "0")) + 1)
        if old is not None and "status" in old:
            obj["status"] = old["status"]
        self.inference_services[key] = obj
        return obj


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._send(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "message": f"{what} not found",
                    "code": 404,
                },
            )

        def _record(self) -> tuple[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            content_type = self.headers.get("Content-Type", "")
            cluster.requests.append(Request(self.command, self.path, content_type, copy.deepcopy(body)))
            return content_type, body

        def _unavailable(self) -> bool:
            if cluster.unavailable:
                self._send(503, {"kind": "Status", "reason": "ServiceUnavailable", "code": 503})
            return cluster.unavailable

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._record()
            if self._unavailable():
                return None
            path = self.path.split("?")[0]
            if path in DISCOVERY:
                return self._send(200, DISCOVERY[path])
            with cluster.lock:
                if match := SECRET_PATH.match(path):
                    obj = cluster.secrets.get((match["ns"], match["name"]))
                    return self._send(200, obj) if obj else self._not_found(f"secrets {match['name']}")
                if match := CONFIGMAP_PATH.match(self.path):
                    obj = cluster.config_maps.get((match["ns"], match["name"]))
                    return self._send(200, obj) if obj else self._not_found(f"configmaps {match['name']}")
                if match := DEPLOYMENT_PATH.match(self.path):
                    obj = cluster.deployments.get((match["ns"], match["name"]))
                    return self._send(200, obj) if obj else self._not_found(f"deployments {match['name']}")
                if (match := ISVC_PATH.match(self.path)) and match["name"]:
                    obj = cluster.get((match["ns"], match["name"]))
                    if obj is None:
                        return self._not_found(f"inferenceservices {match['name']}")
                    return self._send(200, obj)
            self._not_found(self.path)

        def do_POST(self) -> None:  # noqa: N802
            _, body = self._record()
            if self._unavailable():
                return None
            match = ISVC_PATH.match(self.path)
            if not match or match["name"]:
                return self._not_found(self.path)
            key = (match["ns"], body["metadata"]["name"])
            with cluster.lock:
                if key in cluster.inference_services:
                    return self._send(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
                self._send(201, cluster.store(key, copy.deepcopy(body), None))

        def do_PATCH(self) -> None:  # noqa: N802
            content_type, body = self._record()
            if self._unavailable():
                return None
            match = ISVC_PATH.match(self.path)
            if not match or not match["name"]:
                return self._not_found(self.path)
            if content_type.split(";")[0] != "application/merge-patch+json":
                return self._send(415, {"kind": "Status", "reason": "UnsupportedMediaType", "code": 415})
            if cluster.refusal:
                code, message = cluster.refusal
                return self._send(
                    code, {"kind": "Status", "status": "Failure", "message": message, "code": code}
                )
            key = (match["ns"], match["name"])
            with cluster.lock:
                old = cluster.inference_services.get(key)
                if old is None:
                    return self._not_found(f"inferenceservices {match['name']}")
                patched = merge_patch({k: v for k, v in old.items() if k != "status"}, body)
                self._send(200, cluster.store(key, patched, old))

    return Handler


@contextmanager
def fake_kube_api(cluster: FakeCluster, kubeconfig: Path) -> Iterator[str]:
    """Serve ``cluster`` on a free port and write a kubeconfig pointing at it; yields the server URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(cluster))
    url = f"http://127.0.0.1:{server.server_port}"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "deepguard"}}
                ],
            }
        )
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
