"""Canary judged by evidence: deploy watches a REAL Prometheus (Debian's server) before promoting.

The Kubernetes API is faked at the network as in test_deploy_rollout_fake_k8s.py; the two revisions' predictor
pods are stood in for by two prometheus_client exporters with the predictor's metric names, labelled with the
revision names the fake KServe controller gives them, so each test controls how healthy the canary is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fake_kube_api import FakeCluster, fake_kube_api
from k8s_helpers import REPO
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from test_deploy_rollout_fake_k8s import (  # noqa: F401 - registry and workspace are fixtures
    NS,
    _previous_isvc,
    _serving_configmap,
    _version_tags,
    registry,
    workspace,
)

from core.config import CanaryParams, load_params
from deploy.__main__ import run
from deploy.canary import Prometheus, RevisionStats, judge
from deploy.manifest import DeployError
from deploy.registry import DeploymentResult

STABLE, CANARY = (
    "deepguard-predictor-00001",
    "deepguard-predictor-00002",
)  # what the fake controller names them
BOUNDS = CanaryParams(
    watch_seconds=6,
    max_error_ratio_increase=0.01,
    max_p99_ratio=1.5,
    p99_slack_seconds=0.05,
    max_score_shift=0.15,
    min_requests=5,
    without_evidence="rollback",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Revision:
    """A stand-in for one revision's predictor pod: the predictor's series, fed at ~20 requests/s."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("deepguard_requests_total", "", ["protocol", "code"], registry=self.registry)
        self.seconds = Histogram(
            "deepguard_request_duration_seconds",
            "",
            ["protocol"],
            registry=self.registry,
            buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        )
        self.score = Histogram(
            "deepguard_fake_probability", "", registry=self.registry, buckets=[i / 20 for i in range(1, 21)]
        )
        self.port = _free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.error_share, self.latency_s, self.mean_score = 0.0, 0.008, 0.3
        self.stopped = threading.Event()
        self.count = 0
        threading.Thread(target=self._traffic, daemon=True).start()

    def _traffic(self) -> None:
        while not self.stopped.wait(0.05):
            self.count += 1
            # Failures spread evenly: every 1/error_share-th request.
            failed = int(self.count * self.error_share) != int((self.count - 1) * self.error_share)
            self.requests.labels("v2", "500" if failed else "200").inc()
            self.seconds.labels("v2").observe(self.latency_s)
            self.score.observe(self.mean_score)

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()


@pytest.fixture
def revisions() -> Iterator[dict[str, Revision]]:
    pods = {STABLE: Revision(), CANARY: Revision()}
    yield pods
    for pod in pods.values():
        pod.close()


@pytest.fixture
def prometheus(revisions: dict[str, Revision], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping both revisions every 0.5 s, labelled as the PodMonitor labels them."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus not found: .ci/run installs Debian's prometheus package")
        pytest.skip("prometheus not found (apt-get install prometheus)")
    jobs = "\n".join(
        f"      - targets: ['127.0.0.1:{pod.port}']\n        labels: {{revision: {name}}}"
        for name, pod in revisions.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: 500ms, evaluation_interval: 500ms}}\n"
        f"scrape_configs:\n  - job_name: predictor\n    static_configs:\n{jobs}\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "prometheus.log"
            ).read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _stats(**kwargs: Any) -> RevisionStats:
    return RevisionStats(
        **{"requests": 100, "error_ratio": 0.0, "p99_seconds": 0.01, "mean_score": 0.3, **kwargs}
    )


@pytest.mark.parametrize(
    ("canary", "verdict", "why"),
    [
        (_stats(), True, "100 canary requests"),
        (_stats(error_ratio=0.05), False, "5xx share 5.0%"),
        (_stats(p99_seconds=0.2), False, "p99 200 ms"),
        (_stats(mean_score=0.6), False, "mean P(FAKE) 0.600"),
        (_stats(mean_score=0.1), False, "mean P(FAKE) 0.100"),  # a shift either way
        (_stats(p99_seconds=0.06), True, "100 canary requests"),  # 6x a 10 ms p99, within the slack
        (_stats(requests=2), None, "fewer than the 5 needed"),
        # Too few requests for a share, but 5xx that break the bound even once 5 requests are reached.
        (_stats(requests=2, error_ratio=1.0), False, "2 of 2 canary requests failed"),
        (_stats(requests=4, error_ratio=0.25), False, "1 of 4 canary requests failed"),
    ],
)
def test_judge_each_bound(canary: RevisionStats, verdict: bool | None, why: str) -> None:
    got, reason = judge(canary, _stats(), BOUNDS)
    assert got is verdict and why in reason


def test_judge_measures_the_canary_against_the_stable_revision_not_against_zero() -> None:
    """Each case above has a stable revision with no errors: a bound read as absolute passed them all."""
    stable = _stats(error_ratio=0.05, p99_seconds=0.5, mean_score=0.7)
    got, reason = judge(_stats(error_ratio=0.055, p99_seconds=0.6, mean_score=0.6), stable, BOUNDS)
    assert got is True, reason
    got, reason = judge(_stats(error_ratio=0.07), stable, BOUNDS)
    assert got is False and "canary 5xx share 7.0% vs stable 5.0%" in reason, reason


@pytest.fixture
def deploy_workspace(request: pytest.FixtureRequest) -> Path:
    """test_deploy_rollout_fake_k8s's workspace (a real MLflow registry, champion version 2)."""
    return request.getfixturevalue("workspace")


@pytest.fixture
def registry_uri(request: pytest.FixtureRequest) -> str:
    """test_deploy_rollout_fake_k8s's registry."""
    return request.getfixturevalue("registry")


def _rollout(folder: Path, prometheus: str, bounds: CanaryParams = BOUNDS) -> Any:
    cluster = FakeCluster(becomes_ready=lambda obj: True)
    cluster.config_maps[NS, "deepguard-serving"] = _serving_configmap()
    cluster.seed_ready(_previous_isvc())
    params = load_params(REPO / "params.yaml").model_copy(update={"canary": bounds})
    with fake_kube_api(cluster, folder / "kubeconfig"), contextlib.suppress(DeployError):
        run(
            params,
            "kserve",
            namespace=NS,
            poll_s=0.05,
            canary_percent=20,
            timeout_s=10,
            prometheus_url=prometheus,
        )
    # run() raises on a rollback; the report says what happened either way.
    report = json.loads((folder / "reports" / "deployment.json").read_text())
    return cluster, DeploymentResult(**report)


def test_real_prometheus_healthy_canary_is_promoted(
    deploy_workspace: Path, registry_uri: str, revisions: dict[str, Revision], prometheus: str
) -> None:
    cluster, result = _rollout(deploy_workspace, prometheus)
    assert result.status == "promoted", result.detail
    assert "within bounds" in result.detail
    assert cluster.calls("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}
    assert "within bounds" in _version_tags(registry_uri, "2")["deployment_detail"]


def test_real_prometheus_failing_canary_is_rolled_back_and_why_is_recorded(
    deploy_workspace: Path, registry_uri: str, revisions: dict[str, Revision], prometheus: str
) -> None:
    revisions[CANARY].error_share = 0.3
    cluster, result = _rollout(deploy_workspace, prometheus)
    assert result.status == "rolled_back"
    assert "5xx share" in result.detail and "restored version 1" in result.detail
    final = cluster.inference_services[NS, "deepguard"]
    env = {e["name"]: e["value"] for e in final["spec"]["predictor"]["containers"][0]["env"]}
    assert env["DEEPGUARD_MODEL_VERSION"] == "1"
    tags = _version_tags(registry_uri, "2")
    assert tags["deployment_status"] == "rolled_back" and "5xx share" in tags["deployment_detail"]


def test_real_prometheus_a_shifted_score_distribution_is_refused(
    deploy_workspace: Path, revisions: dict[str, Revision], prometheus: str
) -> None:
    revisions[CANARY].mean_score = 0.9
    _, result = _rollout(deploy_workspace, prometheus)
    assert result.status == "rolled_back" and "mean P(FAKE)" in result.detail


@pytest.fixture
def crashed_canary(revisions: dict[str, Revision]) -> None:
    """The canary's pods never answer a scrape (they crash before serving): before Prometheus starts."""
    revisions[CANARY].close()


@pytest.fixture
def quiet_canary(revisions: dict[str, Revision]) -> None:
    """The canary's pods answer scrapes but get no requests (a quiet service): before Prometheus starts."""
    revisions[CANARY].stopped.set()


WITHOUT_EVIDENCE_PROMOTE = BOUNDS.model_copy(update={"without_evidence": "promote"})


def test_real_prometheus_a_canary_without_any_series_is_refused_not_taken_for_a_quiet_one(
    deploy_workspace: Path, revisions: dict[str, Revision], crashed_canary: None, prometheus: str
) -> None:
    _, result = _rollout(deploy_workspace, prometheus, WITHOUT_EVIDENCE_PROMOTE)
    assert result.status == "rolled_back", result.detail
    assert "canary exported no deepguard_* series; the stable revision does" in result.detail


def test_real_prometheus_a_quiet_canary_is_no_evidence_as_params_say(
    deploy_workspace: Path, revisions: dict[str, Revision], quiet_canary: None, prometheus: str
) -> None:
    _, result = _rollout(deploy_workspace, prometheus, WITHOUT_EVIDENCE_PROMOTE)
    assert result.status == "promoted", result.detail
    assert "no evidence" in result.detail


def test_prometheus_unreachable_is_one_line() -> None:
    with pytest.raises(DeployError, match="unreachable"):
        Prometheus(f"http://127.0.0.1:{_free_port()}").value("up")
