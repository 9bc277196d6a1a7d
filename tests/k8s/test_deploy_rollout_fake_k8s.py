"""The deploy stage against a real MLflow registry and a FAKE Kubernetes API (tests/k8s/fake_kube_api.py).

The cluster is the one boundary we cannot reach here, so it is faked at the network: the stage's real
kubernetes client loads a kubeconfig pointing at a local HTTP server that emulates the custom-objects API.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube_api import (
    CONFIGMAP_PATH,
    DEPLOYMENT_PATH,
    ISVC_PATH,
    FakeCluster,
    Request,
    fake_kube_api,
    merge_patch,
)
from k8s_helpers import REPO, find, isvc_errors, render

from core.config import load_params
from deploy.__main__ import run
from deploy.manifest import Champion, DeployError, ServingConfig, rollout_manifest
from deploy.registry import DeploymentResult, map_artifact_uri
from deploy.rollout import InferenceServices, kube_api_client, replace_patch, rollout

MODEL = "deepguard"
NS = "deepguard"
WORDS = {"1": "one", "2": "two"}
SOURCES = {v: f"mlflow-artifacts:/1/models/m-{w}/artifacts" for v, w in WORDS.items()}
STORAGE = {v: f"pvc://deepguard-mlflow/artifacts/1/models/m-{w}/artifacts" for v, w in WORDS.items()}
CHAMPION = Champion(model_name=MODEL, version="2", artifact_uri=SOURCES["2"], storage_uri=STORAGE["2"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real sqlite MLflow registry: versions 1 and 2 of ``deepguard``, version 2 is the champion."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for version in SOURCES:
        assert client.create_model_version(MODEL, source=SOURCES[version]).version == int(version)
    client.set_registered_model_alias(MODEL, "champion", "2")
    return uri


@pytest.fixture
def workspace(registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stage workspace whose environment points at the registry and at a (fake) kubeconfig."""
    for name in list(os.environ):
        if name.startswith(("DAGSHUB_", "MLFLOW_", "KUBERNETES_", "DEEPGUARD_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _version_tags(registry: str, version: str) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    return client.get_model_version(MODEL, version).tags


def _serving_configmap(values_set: str = "default") -> dict[str, Any]:
    return find(render(values_set), "ConfigMap", "deepguard-serving")


def _serving_config() -> ServingConfig:
    return ServingConfig.from_config_map(_serving_configmap()["data"], "chart")


def _previous_isvc() -> dict[str, Any]:
    """What the chart installed for version 1 (a first champion given at helm install time)."""
    return find(
        render("default", predictor__storageUri=STORAGE["1"], predictor__modelVersion="1"), "InferenceService"
    )


def _env(obj: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in obj["spec"]["predictor"]["containers"][0]["env"]}


def _run(**kwargs: Any) -> DeploymentResult:
    params = load_params(REPO / "params.yaml")
    return run(params, "kserve", namespace=NS, poll_s=0.05, **kwargs)


def test_fake_k8s_canary_becomes_ready_then_is_promoted(workspace: Path, registry: str) -> None:
    polls = {"count": 0}

    def ready_after_three_polls(obj: dict[str, Any]) -> bool:  # the new revision needs a moment to start
        polls["count"] += 1
        return polls["count"] >= 3

    cluster = FakeCluster(becomes_ready=ready_after_three_polls)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=30)

    assert result.status == "promoted" and result.version == "2"
    canary, promote = cluster.calls("PATCH")
    assert canary.content_type.startswith("application/merge-patch+json")
    assert canary.body["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert _env(canary.body) == {"STORAGE_URI": STORAGE["2"], "DEEPGUARD_MODEL_VERSION": "2"}
    assert promote.body == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}
    assert polls["count"] >= 3  # it waited for Ready before promoting
    final = cluster.inference_services[NS, "deepguard"]
    assert _env(final)["DEEPGUARD_MODEL_VERSION"] == "2"
    assert final["metadata"]["annotations"]["deepguard.io/model-version"] == "2"
    assert isvc_errors({k: v for k, v in final.items() if k != "status"}) == []

    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "promoted" and report["storage_uri"] == STORAGE["2"]
    tags = _version_tags(registry, "2")
    assert tags["deployment_status"] == "promoted"
    assert tags["deployment_target"] == "kserve:deepguard/deepguard"
    assert tags["deployed_at"] == report["deployed_at"]


def test_fake_k8s_canary_not_ready_before_timeout_is_rolled_back(workspace: Path, registry: str) -> None:
    def new_champion_never_starts(obj: dict[str, Any]) -> bool:
        return _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2"

    cluster = FakeCluster(becomes_ready=new_champion_never_starts)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    previous = _previous_isvc()
    cluster.seed_ready(previous)
    kubeconfig = workspace / "kubeconfig"
    with fake_kube_api(cluster, kubeconfig), pytest.raises(DeployError, match="rolled back"):
        _run(canary_percent=25, timeout_s=0.5)

    canary, pin, restore, unpin = cluster.calls("PATCH")
    assert canary.body["spec"]["predictor"]["canaryTrafficPercent"] == 25
    # KServe's rollback first: all traffic to the last rolled-out revision, kept while version 1 restarts.
    assert pin.body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    assert _env(restore.body)["DEEPGUARD_MODEL_VERSION"] == "1"
    assert restore.body["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # Only once version 1 is Ready again is the pin removed, and with it the canary split.
    assert unpin.body == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    final = cluster.inference_services[NS, "deepguard"]
    assert final["spec"] == previous["spec"]  # exactly what served before, version 1 with all traffic
    assert final["metadata"]["annotations"] == previous["metadata"]["annotations"]
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "rolled_back" and "version 1" in report["detail"]
    assert _version_tags(registry, "2")["deployment_status"] == "rolled_back"


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _version_shares(cluster: FakeCluster, version: str) -> list[int]:
    """``version``'s share of traffic in each split the fake controller routed, repeats dropped."""

    def served(revision: str) -> str:
        env = cluster.revisions[revision]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "DEEPGUARD_MODEL_VERSION")

    shares = [sum(p for rev, p in route.items() if served(rev) == version) for route in cluster.routes]
    return [share for i, share in enumerate(shares) if i == 0 or share != shares[i - 1]]


def _restored_revision_starts_after(polls: int) -> Any:
    """Policy: version 2 is Ready at once; version 1, rebuilt by a rollback, after ``polls`` status reads."""
    count = {"polls": 0}

    def policy(obj: dict[str, Any]) -> bool:
        if _env(obj)["DEEPGUARD_MODEL_VERSION"] == "2":
            return True
        count["polls"] += 1
        return count["polls"] > polls

    return policy


def test_fake_k8s_prometheus_unreachable_mid_canary_rolls_back_and_is_recorded(
    workspace: Path, registry: str
) -> None:
    cluster = FakeCluster(becomes_ready=_restored_revision_starts_after(3))
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    previous = _previous_isvc()
    cluster.seed_ready(previous)
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError, match="rolled back"):
        _run(canary_percent=20, timeout_s=10, prometheus_url=_closed_port_url())

    final = cluster.inference_services[NS, "deepguard"]
    assert final["spec"] == previous["spec"]  # version 1 with all traffic, no split left behind
    # The canary had its 20 % and then nothing, not even while version 1's revision was starting again.
    assert _version_shares(cluster, "2") == [0, 20, 0]
    assert _version_shares(cluster, "1") == [100, 80, 100]
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "rolled_back"
    assert "Prometheus" in report["detail"] and "unreachable" in report["detail"]
    assert report["detail"].endswith("restored version 1")
    tags = _version_tags(registry, "2")
    assert tags["deployment_status"] == "rolled_back" and "Prometheus" in tags["deployment_detail"]


def test_fake_k8s_a_canary_not_ready_once_promoted_is_rolled_back(workspace: Path, registry: str) -> None:
    """Ready at 20 %, then failing at 100 % (e.g. OOM under full load): traffic goes back to version 1."""

    def version_2_fails_with_all_traffic(obj: dict[str, Any]) -> bool:
        predictor = obj["spec"]["predictor"]
        return _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2" or predictor.get("canaryTrafficPercent") != 100

    cluster = FakeCluster(becomes_ready=version_2_fails_with_all_traffic)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    previous = _previous_isvc()
    cluster.seed_ready(previous)
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError, match="rolled back"):
        _run(canary_percent=20, timeout_s=0.5)

    final = cluster.inference_services[NS, "deepguard"]
    assert final["spec"] == previous["spec"]  # version 1 with all traffic again
    assert _version_shares(cluster, "2")[-1] == 0
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "rolled_back" and "promoting to 100% failed" in report["detail"]
    assert _version_tags(registry, "2")["deployment_status"] == "rolled_back"


def test_fake_k8s_rollback_not_ready_fails_and_keeps_traffic_on_the_stable_revision(
    workspace: Path, registry: str
) -> None:
    cluster = FakeCluster(becomes_ready=_restored_revision_starts_after(10**6))
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError, match="failed"):
        _run(canary_percent=20, timeout_s=0.5, prometheus_url=_closed_port_url())

    final = cluster.inference_services[NS, "deepguard"]
    assert final["spec"]["predictor"]["canaryTrafficPercent"] == 0  # the pin stays: version 2 gets nothing
    assert _version_shares(cluster, "2") == [0, 20, 0]
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "failed" and "version 1 not Ready within 0.5s" in report["detail"]
    assert _version_tags(registry, "2")["deployment_status"] == "failed"


def test_fake_k8s_a_failed_rollback_names_both_errors_in_one_line(workspace: Path) -> None:
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())

    def analysis_loses_the_cluster_too(canary: str, stable: str) -> tuple[bool, str]:
        cluster.unavailable = True
        raise DeployError("Prometheus at http://prometheus:9090 unreachable (ConnectionError)")

    with fake_kube_api(cluster, workspace / "kubeconfig"):
        services = InferenceServices(kube_api_client(), NS)
        manifest = rollout_manifest(_serving_config(), NS, CHAMPION, 20)
        status, detail = rollout(services, manifest, 20, 10, 0.05, analysis_loses_the_cluster_too)

    assert status == "failed"
    assert detail == (
        "canary not judged: Prometheus at http://prometheus:9090 unreachable (ConnectionError); "
        "rollback failed: patch inferenceservice deepguard/deepguard: HTTP 503 Service Unavailable"
    )


def test_fake_k8s_an_inferenceservice_created_by_another_deploy_meanwhile_is_retried(workspace: Path) -> None:
    """Two deploys racing to create the first InferenceService: the loser's 409 is transient (exit 75)."""
    from deploy.manifest import KubernetesUnavailableError

    class CreatedMeanwhile(InferenceServices):
        def get(self, name: str) -> dict[str, Any] | None:
            return None  # our read was before the other deploy's create

    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.seed_ready(_previous_isvc())
    with (
        fake_kube_api(cluster, workspace / "kubeconfig"),
        pytest.raises(KubernetesUnavailableError) as raised,
    ):
        manifest = rollout_manifest(_serving_config(), NS, CHAMPION, 20)
        rollout(CreatedMeanwhile(kube_api_client(), NS), manifest, 20, 10, 0.05)
    assert str(raised.value) == "create inferenceservice deepguard/deepguard: HTTP 409 Conflict"


@pytest.mark.parametrize("percent", [20, 0], ids=["stopped-canary", "rollback-pin"])
def test_fake_k8s_rerun_with_a_split_in_progress_is_not_unchanged(workspace: Path, percent: int) -> None:
    """The live object already names version 2, but mid-split: a stopped rollout (20) or KServe's pin (0)."""
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    key = (NS, "deepguard")
    live = cluster.inference_services[key]
    left_behind = rollout_manifest(_serving_config(), NS, CHAMPION, percent)
    split = merge_patch({k: v for k, v in live.items() if k != "status"}, replace_patch(left_behind, live))
    cluster.store(key, split, live)
    cluster.get(key)
    assert _version_shares(cluster, "2")[-1] == percent  # what the stopped rollout left serving
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)

    assert result.status == "promoted", result.detail  # rolled out again, not reported "unchanged"
    assert cluster.calls("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}
    assert _version_shares(cluster, "2")[-1] == 100


@pytest.mark.parametrize("percent", [20, None], ids=["canary", "all-traffic"])
def test_fake_k8s_rolling_back_after_kserves_pin_gives_the_pinned_version_no_traffic(
    workspace: Path, percent: int | None
) -> None:
    """docs/kubernetes.md step 7: version 2 was promoted, found bad and pinned to 0 % (KServe's rollback to
    the revision rolled out before it); the champion alias moves back to version 1 and deploy runs. Version
    2's revision is still the latest Ready one while version 1's new revision starts: it must get nothing."""
    cluster = FakeCluster(becomes_ready=_restored_revision_starts_after(3))
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    key = (NS, "deepguard")
    for share in (None, 0):  # version 2 promoted to all traffic, then pinned out by hand
        live = cluster.inference_services[key]
        wanted = rollout_manifest(_serving_config(), NS, CHAMPION, share)
        cluster.store(
            key,
            merge_patch({k: v for k, v in live.items() if k != "status"}, replace_patch(wanted, live)),
            live,
        )
        cluster.get(key)
    # Version 2 had all traffic, then KServe's pin moved it back to version 1 (after one reconcile).
    assert (_version_shares(cluster, "2"), _version_shares(cluster, "1")) == ([0, 100, 0], [100, 0, 100])
    pinned_at = len(cluster.routes)
    version_1 = Champion(model_name=MODEL, version="1", artifact_uri=SOURCES["1"], storage_uri=STORAGE["1"])
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        services = InferenceServices(kube_api_client(), NS)
        manifest = rollout_manifest(_serving_config(), NS, version_1, percent)
        status, detail = rollout(services, manifest, percent, 10, 0.05)

    assert status == "promoted", detail
    cluster.routes[:] = cluster.routes[pinned_at:]
    # Version 1 throughout: its old revision while the new one starts at 0 %, then the new one.
    assert _version_shares(cluster, "2") == [0] and _version_shares(cluster, "1") == [100]
    final = cluster.inference_services[key]
    assert _env(final)["DEEPGUARD_MODEL_VERSION"] == "1"
    assert final["spec"]["predictor"].get("canaryTrafficPercent") == (None if percent is None else 100)
    assert final["status"]["components"]["predictor"]["traffic"] == [
        {"latestRevision": True, "revisionName": "deepguard-predictor-00003", "percent": 100}
    ]


def test_fake_k8s_pin_rolls_the_inferenceservice_back_to_the_pinned_version(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/kubernetes.md step 7 with `--pin 1` (its own real sqlite registry: the module's stays as it is):
    version 2 serves all traffic; the alias moves to 1, the model is pinned, and version 1 is rolled out."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'pinned.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for version in SOURCES:
        client.create_model_version(MODEL, source=SOURCES[version])
    client.set_registered_model_alias(MODEL, "champion", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(
        find(
            render("default", predictor__storageUri=STORAGE["2"], predictor__modelVersion="2"),
            "InferenceService",
        )
    )
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=None, timeout_s=10, pin="1")

    assert (result.status, result.version) == ("promoted", "1")
    assert _env(cluster.inference_services[NS, "deepguard"]) == {
        "STORAGE_URI": STORAGE["1"],
        "DEEPGUARD_MODEL_VERSION": "1",
    }
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert client.get_registered_model(MODEL).tags["champion_pinned"].startswith("v1 since ")
    assert client.get_model_version(MODEL, "1").tags["deployment_status"] == "promoted"


def test_fake_k8s_first_deploy_creates_the_service_from_the_chart_settings(workspace: Path) -> None:
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap("gpu")
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)

    assert result.status == "deployed" and result.canary_percent is None
    (create,) = cluster.calls("POST")
    assert "canaryTrafficPercent" not in create.body["spec"]["predictor"]  # nothing to split traffic with
    container = create.body["spec"]["predictor"]["containers"][0]
    assert container["image"] == "ghcr.io/deepguard/stage-gpu:0.1.0"  # the GPU settings came from the chart
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert isvc_errors(create.body) == []


def test_fake_k8s_same_champion_already_ready_is_left_alone(workspace: Path, registry: str) -> None:
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    current = find(
        render("default", predictor__storageUri=STORAGE["2"], predictor__modelVersion="2"), "InferenceService"
    )
    cluster.seed_ready(current)
    import mlflow

    mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry).set_model_version_tag(
        MODEL, "2", "deployed_at", "when it was promoted"
    )
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)
    assert result.status == "unchanged"
    assert cluster.calls("PATCH") == [] and cluster.calls("POST") == []
    assert _version_tags(registry, "2")["deployed_at"] == "when it was promoted"  # the serving rollout's tags


def test_fake_k8s_a_chart_change_is_rolled_out_for_the_same_champion(workspace: Path) -> None:
    """A resource change is a template edit plus `helm upgrade`; the next deploy applies it (the docs)."""
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = find(
        render("default", predictor__resources__limits__memory="6Gi"), "ConfigMap", "deepguard-serving"
    )
    cluster.seed_ready(
        find(
            render("default", predictor__storageUri=STORAGE["2"], predictor__modelVersion="2"),
            "InferenceService",
        )
    )
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)
    assert result.status == "promoted"
    final = cluster.inference_services[NS, "deepguard"]["spec"]["predictor"]["containers"][0]
    assert final["resources"]["limits"]["memory"] == "6Gi"


def test_fake_k8s_defaults_the_api_server_added_are_no_change(workspace: Path) -> None:
    """Defaults the API server or KServe's webhook added to the stored object are not a change to roll out."""
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    current = find(
        render("default", predictor__storageUri=STORAGE["2"], predictor__modelVersion="2"), "InferenceService"
    )
    current["spec"]["predictor"]["containers"][0]["ports"][0]["protocol"] = "TCP"
    cluster.seed_ready(current)
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)
    assert result.status == "unchanged"
    assert cluster.calls("PATCH") == []


def _raw_cluster(becomes_ready: Any) -> FakeCluster:
    """A cluster whose InferenceService (version 1) runs in KServe's RawDeployment mode: a Deployment."""
    cluster = FakeCluster(becomes_ready=becomes_ready)
    cluster.config_maps[NS, "deepguard-serving"] = find(
        render("default", predictor__deploymentMode="RawDeployment"), "ConfigMap", "deepguard-serving"
    )
    previous = _previous_isvc()
    previous["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    cluster.seed_ready(previous)
    return cluster


def test_fake_k8s_raw_deployment_mode_rolls_out_without_a_canary(workspace: Path) -> None:
    cluster = _raw_cluster(lambda obj: True)
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _run(canary_percent=20, timeout_s=10)
    assert result.status == "promoted" and result.canary_percent is None
    (patch,) = cluster.calls("PATCH")
    assert "canaryTrafficPercent" not in patch.body["spec"]["predictor"]
    deployment = cluster.deployments[NS, "deepguard-predictor"]
    assert (
        _env({"spec": {"predictor": deployment["spec"]["template"]["spec"]}})["DEEPGUARD_MODEL_VERSION"]
        == "2"
    )


def test_fake_k8s_raw_deployment_mode_waits_for_the_new_pods_not_the_old_ones(workspace: Path) -> None:
    """RawDeployment: Ready is the Deployment's Available, True all along a rolling update while the old pods
    serve. Version 2's pods never become available: that is a rollback, not a promotion."""
    cluster = _raw_cluster(lambda obj: _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2")
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError, match="rolled back"):
        _run(canary_percent=20, timeout_s=0.5)
    deployment = cluster.deployments[NS, "deepguard-predictor"]
    assert (
        _env({"spec": {"predictor": deployment["spec"]["template"]["spec"]}})["DEEPGUARD_MODEL_VERSION"]
        == "1"
    )
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "rolled_back" and report["detail"].endswith("restored version 1")


def _rbac_requests(requests: list[Request]) -> set[tuple[str, str, str, str]]:
    """(API group, resource, object name, RBAC verb) of each call, as the API server authorizes it."""
    verbs = {"GET": "get", "POST": "create", "PATCH": "patch"}
    kinds = ((ISVC_PATH, "serving.kserve.io", "inferenceservices"), (CONFIGMAP_PATH, "", "configmaps"))
    found = set()
    for request in requests:
        for path, group, resource in (*kinds, (DEPLOYMENT_PATH, "apps", "deployments")):
            if match := path.match(request.path):
                found.add((group, resource, match["name"] or "", verbs[request.method]))
    return found


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_fake_k8s_the_deploy_role_grants_what_rollouts_call_and_nothing_more(
    workspace: Path, mode: str
) -> None:
    """A first deploy (create) and a rollout over version 1 (patch) need exactly the chart's deploy Role."""
    objects = render("default", predictor__deploymentMode=mode)
    called: set[tuple[str, str, str, str]] = set()
    for seeded in (False, True):
        cluster = FakeCluster(becomes_ready=lambda obj: True)
        cluster.config_maps[NS, "deepguard-serving"] = find(objects, "ConfigMap", "deepguard-serving")
        if seeded:
            previous = _previous_isvc()
            previous["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
            cluster.seed_ready(previous)
        with fake_kube_api(cluster, workspace / "kubeconfig"):
            result = _run(canary_percent=20, timeout_s=10)
        assert result.status == ("promoted" if seeded else "deployed"), result.detail
        called |= _rbac_requests(cluster.requests)
    role = find(objects, "Role", "deepguard-deploy")
    for group, resource, name, verb in called:
        assert any(
            group in rule["apiGroups"]
            and resource in rule["resources"]
            and verb in rule["verbs"]
            and name in rule.get("resourceNames", [name])
            for rule in role["rules"]
        ), (group, resource, name, verb)
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == {(group, resource, verb) for group, resource, _, verb in called}


def test_replace_patch_removes_what_the_new_spec_lacks() -> None:
    predictor = {"canaryTrafficPercent": 10, "nodeSelector": {"x": "y"}, "minReplicas": 1}
    current = {"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"predictor": predictor}}
    wanted = {"metadata": {"annotations": {"a": "3"}}, "spec": {"predictor": {"minReplicas": 2}}}
    patch = replace_patch(wanted, current)
    removed = {"canaryTrafficPercent": None, "nodeSelector": None}
    assert patch["spec"]["predictor"] == {**removed, "minReplicas": 2}
    assert patch["metadata"]["annotations"] == {"b": None, "a": "3"}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "mlflow-artifacts:/1/models/m-x/artifacts",
            "pvc://deepguard-mlflow/artifacts/1/models/m-x/artifacts",
        ),
        ("s3://bucket/mlflow/1/models/m-x/artifacts", "s3://bucket/mlflow/1/models/m-x/artifacts"),
    ],
)
def test_artifact_uris_map_to_what_kserve_reads(uri: str, expected: str) -> None:
    assert map_artifact_uri(uri, _chart_uri_map()) == expected


def test_a_local_artifact_path_is_refused_with_a_clear_message() -> None:
    with pytest.raises(DeployError, match="not reachable by KServe"):
        map_artifact_uri("/home/me/mlruns/1/models/m-x/artifacts", _chart_uri_map())


def _chart_uri_map() -> dict[str, str]:
    return json.loads(_serving_configmap()["data"]["artifact-uri-map.json"])


def _cli(workspace: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PREDICTOR_"))}
    environ.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy",
            "--params",
            str(REPO / "params.yaml"),
            "--workdir",
            str(workspace),
            *args,
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


def test_dry_run_prints_a_manifest_that_matches_the_kserve_crd(workspace: Path) -> None:
    config = workspace / "serving.yaml"
    config.write_text(yaml.safe_dump(_serving_configmap()))
    result = _cli(
        workspace,
        "--target",
        "kserve",
        "--dry-run",
        "--canary-percent",
        "30",
        "--serving-config",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    assert manifest["kind"] == "InferenceService"
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 30
    assert _env(manifest) == {"STORAGE_URI": STORAGE["2"], "DEEPGUARD_MODEL_VERSION": "2"}
    assert isvc_errors(manifest) == []
    assert not (workspace / "reports" / "deployment.json").exists()


def test_a_dry_run_for_kubectl_apply_with_canary_percent_0_sets_no_canary_share(workspace: Path) -> None:
    # What docs/kubernetes.md pipes into `kubectl apply`: a share applied by hand would never be promoted.
    config = workspace / "serving.yaml"
    config.write_text(yaml.safe_dump(_serving_configmap()))
    args = ("--target", "kserve", "--dry-run", "--canary-percent", "0", "--serving-config", str(config))
    result = _cli(workspace, *args)
    assert result.returncode == 0, result.stderr
    assert "canaryTrafficPercent" not in yaml.safe_load(result.stdout)["spec"]["predictor"]


def test_dry_run_without_the_chart_config_names_the_helm_command(workspace: Path) -> None:
    result = _cli(workspace, "--target", "kserve", "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "--serving-config" in result.stderr and "helm template" in result.stderr
    assert "Traceback" not in result.stderr


def test_fake_k8s_without_the_chart_installed_is_one_line(workspace: Path) -> None:
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    with (
        fake_kube_api(cluster, workspace / "kubeconfig"),
        pytest.raises(DeployError, match="install the chart"),
    ):
        _run(canary_percent=20, timeout_s=10)
    assert cluster.calls("POST") == []


def test_local_target_without_a_predictor_says_make_serve_and_exits_0(workspace: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _cli(workspace, "--target", "local", env={"PREDICTOR_URL": f"http://127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    assert "make serve" in result.stdout and "version 2" in result.stdout
    report = json.loads((workspace / "reports" / "deployment.json").read_text())
    assert report["status"] == "no_predictor"


def test_fake_k8s_rollback_exits_2_with_one_line(workspace: Path) -> None:
    cluster = FakeCluster(becomes_ready=lambda obj: _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2")
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(copy.deepcopy(_previous_isvc()))
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        result = _cli(
            workspace,
            "--target",
            "kserve",
            "--namespace",
            NS,
            "--timeout",
            "1",
            "--poll",
            "0.1",
            env={"KUBECONFIG": str(workspace / "kubeconfig")},
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "deploy: error: version 2 rolled back: not Ready within 1s; restored version 1"
    ]


def test_an_unreachable_kubernetes_api_is_one_line_not_a_traceback(workspace: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        pass  # only for the kubeconfig it writes; then point it at the closed port
    kubeconfig = workspace / "kubeconfig"
    kubeconfig.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", kubeconfig.read_text()))
    result = _cli(workspace, "--target", "kserve", "--namespace", NS, env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 75, "transient (core/errors.py): the Airflow task retries it"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "deploy: error: read ConfigMap deepguard/deepguard-serving: Kubernetes API unreachable"
    )


def test_a_refused_api_call_names_the_api_servers_reason(workspace: Path) -> None:
    """RBAC or KServe's admission webhook refusing a call: the one line says why, not only the HTTP status."""
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    why = (
        'inferenceservices.serving.kserve.io "deepguard" is forbidden: User '
        '"system:serviceaccount:deepguard:deepguard-deploy" cannot patch resource "inferenceservices"'
    )
    cluster.refusal = (403, why)
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError) as raised:
        _run(canary_percent=20, timeout_s=10)
    assert str(raised.value) == f"patch inferenceservice deepguard/deepguard: HTTP 403 Forbidden: {why}"


def test_fake_k8s_registry_gone_when_tagging_is_retried_and_the_retry_records_the_tags(
    workspace: Path, registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow restarting during a rollout: one line, exit 75; the retry finds the version served, tags it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.tracking import TrackingUnreachableError

    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    for key in _version_tags(registry, "2"):  # as a version never deployed (earlier tests tagged it)
        client.delete_model_version_tag(MODEL, "2", key)

    def registry_gone(*args: object, **kwargs: object) -> None:
        raise MlflowException("API request to http://user:secret@mlflow:5000/api failed: Connection refused")

    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        with monkeypatch.context() as patched, pytest.raises(TrackingUnreachableError) as raised:
            patched.setattr(mlflow.MlflowClient, "set_model_version_tag", registry_gone)
            _run(canary_percent=20, timeout_s=10)
        assert str(raised.value).startswith("version 2 promoted; the registry failed tagging it: ")
        assert "secret" not in str(raised.value) and "\n" not in str(raised.value)
        assert json.loads((workspace / "reports" / "deployment.json").read_text())["status"] == "promoted"
        assert "deployment_status" not in _version_tags(registry, "2")

        retried = _run(canary_percent=20, timeout_s=10)
    assert retried.status == "unchanged"
    tags = _version_tags(registry, "2")
    assert tags["deployment_status"] == "unchanged"
    assert tags["deployment_detail"] == "version 2 is already served and Ready"


@pytest.mark.parametrize("status", ["promoted", "rolled_back"])
def test_fake_k8s_tags_refused_or_failing_after_a_rollback_fail_for_good(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """A refusal fails the same way again; a retry after a rollback would only roll the version out anew."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED

    error = PERMISSION_DENIED if status == "promoted" else INTERNAL_ERROR

    def registry_says_no(*args: object, **kwargs: object) -> None:
        raise MlflowException("no", error_code=error)

    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", registry_says_no)

    def ready(obj: dict[str, Any]) -> bool:  # version 2 never starts when it is to be rolled back
        return status == "promoted" or _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2"

    cluster = FakeCluster(becomes_ready=ready)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError) as raised:
        _run(canary_percent=20, timeout_s=0.5)
    outcome = status.replace("_", " ")
    assert str(raised.value) == f"version 2 {outcome}, but its deployment tags were not recorded: no"


@pytest.mark.parametrize("broken", ["not YAML", "a folder"])
def test_a_broken_kubeconfig_is_one_line_not_a_traceback(workspace: Path, broken: str) -> None:
    kubeconfig = workspace / "kubeconfig"
    if broken == "a folder":
        kubeconfig.mkdir()
    else:
        kubeconfig.write_text("{\n")
    result = _cli(workspace, "--target", "kserve", "--namespace", NS, env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("deploy: error: no Kubernetes configuration (in-cluster or KUBECONFIG): ")


def test_fake_k8s_a_stale_status_is_not_taken_for_the_new_revision(workspace: Path) -> None:
    """KServe's observedGeneration is the Knative Service's counter: it can match the InferenceService's
    generation while the status still shows the old revision. The canary judged must be the new revision."""
    cluster = FakeCluster(becomes_ready=lambda obj: True, generation_skew=1, status_lag=2)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    judged: list[tuple[str, str]] = []

    def analysis(canary: str, stable: str) -> tuple[bool, str]:
        judged.append((canary, stable))
        return True, "within bounds"

    with fake_kube_api(cluster, workspace / "kubeconfig"):
        services = InferenceServices(kube_api_client(), NS)
        manifest = rollout_manifest(_serving_config(), NS, CHAMPION, 20)
        status, _ = rollout(services, manifest, 20, 10, 0.05, analysis)
    assert status == "promoted"
    ((canary, stable),) = judged
    assert canary != stable
    assert _env({"spec": {"predictor": cluster.revisions[canary]}})["DEEPGUARD_MODEL_VERSION"] == "2"


def test_fake_k8s_a_promotion_is_not_judged_on_the_status_from_before_it(workspace: Path) -> None:
    """Promoting changes only canaryTrafficPercent: no new revision, and KServe's observedGeneration (the
    Knative Service's counter) can already match. The status read first still shows the 20 % split, Ready;
    version 2 then fails with all traffic: that must roll back, not count as promoted."""

    def version_2_fails_with_all_traffic(obj: dict[str, Any]) -> bool:
        predictor = obj["spec"]["predictor"]
        return _env(obj)["DEEPGUARD_MODEL_VERSION"] != "2" or predictor.get("canaryTrafficPercent") != 100

    cluster = FakeCluster(becomes_ready=version_2_fails_with_all_traffic, generation_skew=1, status_lag=2)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    with fake_kube_api(cluster, workspace / "kubeconfig"):
        services = InferenceServices(kube_api_client(), NS)
        manifest = rollout_manifest(_serving_config(), NS, CHAMPION, 20)
        status, detail = rollout(services, manifest, 20, 0.5, 0.05)
    assert status == "rolled_back", detail
    assert "promoting to 100% failed" in detail


def test_fake_k8s_a_rollback_waits_for_the_restored_revision_not_the_pinned_canary(workspace: Path) -> None:
    """KServe reconciles the pin before the restored spec arrives: that status (the refused canary Ready, 0 %
    of traffic, as the pinned spec asks) is not the restored revision being Ready. Unpinning on it would give
    the refused canary all traffic while version 1 starts."""
    cluster = FakeCluster(becomes_ready=_restored_revision_starts_after(3), generation_skew=1, status_lag=1)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    key = (NS, "deepguard")

    class PinReconciledAtOnce(InferenceServices):
        def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
            patched = super().patch(name, body)
            if body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}:
                with cluster.lock:  # the controller's step on the pin, before the next PATCH
                    cluster.lagging = 0
                    cluster.get(key)
            return patched

    def refuse(canary: str, stable: str) -> tuple[bool, str]:
        return False, "refused"

    with fake_kube_api(cluster, workspace / "kubeconfig"):
        services = PinReconciledAtOnce(kube_api_client(), NS)
        manifest = rollout_manifest(_serving_config(), NS, CHAMPION, 20)
        status, detail = rollout(services, manifest, 20, 10, 0.05, refuse)
    assert status == "rolled_back", detail
    assert _version_shares(cluster, "2") == [0, 20, 0]  # never all traffic while version 1 restarts
    assert _env(cluster.inference_services[key])["DEEPGUARD_MODEL_VERSION"] == "1"


@pytest.mark.parametrize("stops", ["chart-missing", "patch-refused"])
def test_fake_k8s_a_deploy_that_stops_early_replaces_the_last_record_with_its_failure(
    workspace: Path, stops: str
) -> None:
    """reports/deployment.json from the last rollout must not be read as this attempt's outcome."""
    reports = workspace / "reports"
    reports.mkdir()
    last = {"status": "promoted", "version": "1", "detail": "Ready within 600s; all traffic on version 1"}
    (reports / "deployment.json").write_text(json.dumps(last))
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    if stops == "patch-refused":
        cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
        cluster.seed_ready(_previous_isvc())
        cluster.refusal = (403, "forbidden")
    with fake_kube_api(cluster, workspace / "kubeconfig"), pytest.raises(DeployError) as raised:
        _run(canary_percent=20, timeout_s=10)
    report = json.loads((reports / "deployment.json").read_text())
    assert report["status"] == "failed" and report["detail"] == str(raised.value)
    assert report["target"] == "kserve:deepguard"
    assert report["version"] == ("2" if stops == "patch-refused" else "")  # the champion, once it was read
    assert not any(path.name.endswith(".tmp") for path in reports.iterdir())  # written whole
