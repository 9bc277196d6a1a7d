"""`helm test`: the chart's test pod's script, as rendered, against the real web app and predictor."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from werkzeug.serving import make_server

from flask_app import create_app

from .monitoring_helpers import own_store
from .serving_helpers import free_port, start_predictor

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".cache" / "k8s-tools" / "bin" / "helm"


def _test_pod() -> dict:
    """The chart's `helm test` Pod, rendered by the pinned helm."""
    if not HELM.is_file():
        pytest.skip(f"{HELM} missing: run `make k8s-tools`")
    chart = REPO / "helm" / "deepguard"
    out = subprocess.run(
        [str(HELM), "template", "deepguard", str(chart), "-n", "deepguard", "-s", "templates/tests/pod.yaml"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return yaml.safe_load(out)


@contextlib.contextmanager
def _web(predictor_url: str) -> Iterator[str]:
    """The real Flask app on a free loopback port (werkzeug's server), asking ``predictor_url``."""
    server = make_server(
        "127.0.0.1", free_port(), create_app({"PREDICTOR_URL": predictor_url}), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_helm_test_fails_naming_the_link_that_is_down_and_passes_once_a_champion_is_served(
    tiny_model, tmp_path: Path
) -> None:
    """The chart had no `helm test`: after an install or upgrade nothing said whether the web app reached a
    predictor serving a model. The test pod asks the web app's /healthz (which asks the predictor)."""
    pod = _test_pod()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    script, url = container["args"]
    assert url == "http://deepguard-web.deepguard.svc.cluster.local:80/healthz"  # the web Service's port

    def hook(url: str) -> subprocess.CompletedProcess[str]:
        # -I: no PYTHONPATH, no current folder on sys.path: the script stands alone, as in the pod.
        return subprocess.run(
            [sys.executable, "-I", "-c", script, url], capture_output=True, text=True, timeout=60
        )

    nothing = hook(f"http://127.0.0.1:{free_port()}/healthz")
    assert nothing.returncode == 1 and "FAIL: no answer from the web app at" in nothing.stderr
    # Installed, no champion deployed yet: the web app answers 503, its body says why.
    with _web(f"http://127.0.0.1:{free_port()}") as web:
        no_predictor = hook(f"{web}/healthz")
    assert no_predictor.returncode == 1, no_predictor.stdout
    assert "FAIL: the web app answers but the predictor does not: unreachable" in no_predictor.stderr
    assert "before the first deploy" in no_predictor.stderr
    registered = own_store(tiny_model, tmp_path)
    manager, predictor_url = start_predictor(registered, tmp_path / "predictor.log")
    with manager, _web(predictor_url) as web:
        served = hook(f"{web}/healthz")
    assert served.returncode == 0, served.stderr
    assert (
        f"OK: the web app answers and the predictor serves model version {registered.version}"
        in served.stdout
    )
