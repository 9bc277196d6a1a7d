"""``deploy --target local`` with the real predictor: a new champion is reloaded without a restart."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from k8s_helpers import REPO
from workspace import free_port, running

MODEL = "deepguard"


@contextlib.contextmanager
def _fake_http(answers: dict[str, tuple[int, bytes]]) -> Iterator[str]:
    """A FAKE predictor (or a proxy before one) on loopback: each method gets its (status, body). Its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Answers(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status, body = answers[self.command]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _register_untrained_model(tracking_uri: str, artifacts: Path, seed: int) -> str:
    """A tiny Keras model with the served contract (uint8 in, P(FAKE) out), registered and made champion.

    Untrained on purpose: this test is about which version is served, not how well it scores.
    """
    import keras
    import mlflow

    from core.modelstore import ModelMetadata

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden), name="UntrainedProbe")
    metadata = ModelMetadata(
        threshold=0.5, image_size=32, architecture=model.name, data_source="synthetic", synthetic_data=True
    )
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("deploy-tests")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("deploy-tests", artifact_location=artifacts.as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.keras.log_model(
            model, name="model", metadata=metadata.to_dict(), pip_requirements=[], registered_model_name=MODEL
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", version)
    return version


@contextlib.contextmanager
def _predictor(tracking_uri: str, log_file: Path) -> Iterator[str]:
    """The real predictor (python -m serving) serving deepguard@champion on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSHUB_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model-uri",
        f"models:/{MODEL}@champion",
        "--http_port",
        str(port),
    ]
    with running(command, f"{url}/v2/models/{MODEL}/ready", log_file, env):
        yield url


def _served(url: str) -> list[str]:
    return requests.get(f"{url}/v2/models/{MODEL}", timeout=30).json()["versions"]


def _deploy_local(tracking_uri: str, url: str, workdir: Path, *args: str) -> None:
    """Run `python -m deploy --target local` against the predictor at ``url``; it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSHUB_", "KUBERNETES_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PREDICTOR_URL=url, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "deploy", "--target", "local", "--params", str(REPO / "params.yaml")]
    result = subprocess.run(
        [*command, "--workdir", str(workdir), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_local_target_reloads_the_new_champion_in_the_running_predictor(tmp_path: Path) -> None:
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _register_untrained_model(tracking_uri, tmp_path / "artifacts", seed=0)
    with _predictor(tracking_uri, tmp_path / "predictor.log") as url:
        assert _served(url) == [first]
        second = _register_untrained_model(tracking_uri, tmp_path / "artifacts", seed=1)
        assert _served(url) == [first], "the alias moved, but nothing has reloaded yet"

        _deploy_local(tracking_uri, url, tmp_path)
        assert _served(url) == [second]
    tags = mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version(MODEL, second).tags
    assert tags["deployment_status"] == "reloaded"
    assert tags["deployment_target"] == f"local:{url}"


def test_pin_rolls_the_running_predictor_back_to_an_earlier_version(tmp_path: Path) -> None:
    """`deploy --pin 1`, the documented rollback: the alias moves back, the predictor serves v1 again, and
    the registry says so (pinned, promotion tags follow the alias)."""
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _register_untrained_model(tracking_uri, tmp_path / "artifacts", seed=0)
    second = _register_untrained_model(tracking_uri, tmp_path / "artifacts", seed=1)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(MODEL, second, "promotion", "champion")
    with _predictor(tracking_uri, tmp_path / "predictor.log") as url:
        assert _served(url) == [second]
        _deploy_local(tracking_uri, url, tmp_path, "--pin", first)
        assert _served(url) == [first]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first
    assert client.get_registered_model(MODEL).tags["champion_pinned"].startswith(f"v{first} since ")
    assert client.get_model_version(MODEL, first).tags["promotion"] == "champion"
    assert client.get_model_version(MODEL, first).tags["deployment_status"] == "reloaded"
    assert client.get_model_version(MODEL, second).tags["promotion"] == "superseded"
    deployment = json.loads((tmp_path / "reports/deployment.json").read_text())
    assert (deployment["status"], deployment["version"]) == ("reloaded", first)


def test_fake_predictor_refusing_the_reload_fails_the_local_target(tmp_path: Path) -> None:
    """A FAKE predictor whose reload fails (a real one only fails on a broken model): exit 2, one line."""
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source="s3://bucket/model")
    client.set_registered_model_alias(MODEL, "champion", "1")
    with _fake_http({"POST": (500, b"no")}) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSHUB_", "KUBERNETES_"))}
        env.update(MLFLOW_TRACKING_URI=tracking_uri, PREDICTOR_URL=url, PYTHONPATH=str(REPO))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "deploy",
                "--target",
                "local",
                "--params",
                str(REPO / "params.yaml"),
                "--workdir",
                str(tmp_path),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"deploy: error: predictor at {url} refused the reload: HTTP 500 no"
    ]
    assert "deployment_status" not in client.get_model_version(MODEL, "1").tags
    # This attempt's failure, not whatever an earlier deploy left in the report.
    report = json.loads((tmp_path / "reports" / "deployment.json").read_text())
    assert (report["status"], report["target"], report["version"]) == ("failed", f"local:{url}", "1")
    assert report["detail"] == f"predictor at {url} refused the reload: HTTP 500 no"


def test_fake_predictor_dropping_the_reload_fails_instead_of_saying_none_runs() -> None:
    """A FAKE predictor killed loading the champion (OOM) drops the reload: an error, not "none runs"."""
    import socket
    import threading

    from deploy.local import deploy_local
    from deploy.manifest import Champion, DeployError

    listener = socket.create_server(("127.0.0.1", 0))

    def crash_while_loading() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()

    threading.Thread(target=crash_while_loading, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    champion = Champion(model_name=MODEL, version="2", artifact_uri="s3://b/m", storage_uri="s3://b/m")
    try:
        with pytest.raises(DeployError, match=f"predictor at {url} dropped the reload"):
            deploy_local(champion, url, MODEL, timeout_s=10)
    finally:
        listener.close()


def test_fake_predictor_answering_the_version_check_without_json_is_one_error() -> None:
    """After the reload, an answer that is not KServe's metadata JSON (a proxy's error page): one error."""
    from deploy.local import deploy_local
    from deploy.manifest import Champion, DeployError

    champion = Champion(model_name=MODEL, version="2", artifact_uri="s3://b/m", storage_uri="s3://b/m")
    answers = {"POST": (200, b"{}"), "GET": (502, b"<html>Bad Gateway</html>")}
    with (
        _fake_http(answers) as url,
        pytest.raises(DeployError, match=f"predictor at {url}: cannot read the version it serves"),
    ):
        deploy_local(champion, url, MODEL, timeout_s=10)


def test_fake_proxy_refusing_the_reload_with_an_html_page_is_still_one_line() -> None:
    """A proxy's multi-line error page in front of the predictor: the error stays one line."""
    from deploy.local import deploy_local
    from deploy.manifest import Champion, DeployError

    page = b"<html>\n  <body>\n    502 Bad Gateway\n  </body>\n</html>\n"
    champion = Champion(model_name=MODEL, version="2", artifact_uri="s3://b/m", storage_uri="s3://b/m")
    with _fake_http({"POST": (502, page)}) as url, pytest.raises(DeployError) as raised:
        deploy_local(champion, url, MODEL, timeout_s=10)
    assert str(raised.value) == (
        f"predictor at {url} refused the reload: HTTP 502 <html> <body> 502 Bad Gateway </body> </html>"
    )
