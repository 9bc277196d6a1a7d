"""The chart's MLflow server arguments run a real ``mlflow server``, and the champion's files land where
the deploy stage's ``pvc://`` mapping points KServe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from k8s_helpers import REPO, find, render
from workspace import free_port, running

from deploy.registry import read_champion

# The deepguard-mlflow Secret's keys the server reads (secretKeyRef); the pipeline logs in with the same two.
SECRET = {
    "MLFLOW_TRACKING_USERNAME": "pipeline",
    "MLFLOW_TRACKING_PASSWORD": "s3cret/token",  # MLflow's logins need 12 characters or more
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "form-signing-key",
}
PIPELINE = (SECRET["MLFLOW_TRACKING_USERNAME"], SECRET["MLFLOW_TRACKING_PASSWORD"])


@contextlib.contextmanager
def _server_from_chart(volume: Path, **values: Any) -> Iterator[tuple[str, int]]:
    """Run the container's arguments and environment, the Secret's keys from SECRET, the PVC mount (/mlflow)
    mapped to ``volume``, the auth ConfigMap's file written there, and a free port."""
    objects = render("default", **values)
    pod = find(objects, "Deployment", "deepguard-mlflow")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = free_port()
    args = [
        arg.replace("/mlflow", str(volume))
        .replace("--port=5000", f"--port={port}")
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        for arg in container["args"]
    ]
    args = [a if not a.startswith("--workers=") else "--workers=1" for a in args]  # one core is enough here
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSHUB_"))}
    here = {}  # where the pod mounts a ConfigMap -> the folder its files are written to here
    for mount in container["volumeMounts"]:
        source = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "configMap" in source:
            folder = volume / mount["name"]
            folder.mkdir(exist_ok=True)
            for file, text in find(objects, "ConfigMap", source["configMap"]["name"])["data"].items():
                (folder / file).write_text(text.replace("/mlflow", str(volume)))
            here[mount["mountPath"]] = str(folder)
    for variable in container["env"]:
        if "valueFrom" in variable:
            env[variable["name"]] = SECRET[variable["valueFrom"]["secretKeyRef"]["key"]]
        elif variable["name"] != "HOME":
            value = variable["value"]
            for mount_path, folder in here.items():
                value = value.replace(mount_path, folder)
            env[variable["name"]] = value
    url = f"http://127.0.0.1:{port}"
    # The image's ENTRYPOINT is "python -m"; the container args are the module and its arguments.
    with running(
        [sys.executable, "-m", *args], f"{url}/health", volume / "server.log", env, cwd=volume, timeout_s=120
    ):
        yield url, port


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    volume = tmp_path_factory.mktemp("mlflow-pvc")
    with _server_from_chart(volume) as (url, port):
        yield url, port, volume


def test_the_service_names_are_accepted_and_other_hosts_refused(mlflow_server: tuple[str, int, Path]) -> None:
    url, port, _ = mlflow_server
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in (
        "deepguard-mlflow",
        f"deepguard-mlflow:{port}",
        f"deepguard-mlflow.deepguard.svc:{port}",
        f"deepguard-mlflow.deepguard.svc.cluster.local:{port}",
        f"127.0.0.1:{port}",
    ):
        assert requests.get(api, headers={"Host": host}, auth=PIPELINE, timeout=30).status_code == 200, host
    refused = requests.get(api, headers={"Host": "attacker.example"}, auth=PIPELINE, timeout=30)
    assert refused.status_code == 403
    # Probes reach the pod by IP: /health must not depend on the Host header.
    assert requests.get(f"{url}/health", headers={"Host": f"10.1.2.3:{port}"}, timeout=30).status_code == 200


@pytest.mark.parametrize("logged_as", ["logged_model", "run_artifacts"])
def test_a_registered_model_lands_where_the_pvc_mapping_points(
    mlflow_server: tuple[str, int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged_as: str
) -> None:
    """register logs a MLflow 3 logged model (models:/m-...); older flows register runs:/ sources."""
    import mlflow

    url, _, volume = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE[0])  # what the Secret gives the pipeline's pods
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE[1])
    model = tmp_path / "model"
    (model / "data").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "data" / "model.keras").write_bytes(logged_as.encode())
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.get_experiment_by_name("deepguard")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("deepguard")
    if logged_as == "logged_model":
        logged = client.create_logged_model(experiment_id, name="model")
        client.log_model_artifacts(logged.model_id, str(model))  # uploaded through the proxy
        source, run_id, model_id = f"models:/{logged.model_id}", None, logged.model_id
    else:
        run = client.create_run(experiment_id)
        client.log_artifacts(run.info.run_id, str(model), artifact_path="model")
        source, run_id, model_id = f"runs:/{run.info.run_id}/model", run.info.run_id, None
    if not client.search_registered_models(filter_string="name='deepguard'"):
        client.create_registered_model("deepguard")
    version = client.create_model_version("deepguard", source=source, run_id=run_id, model_id=model_id)
    client.set_registered_model_alias("deepguard", "champion", version.version)

    data = find(render("default"), "ConfigMap", "deepguard-serving")["data"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for name in [n for n in os.environ if n.startswith("DAGSHUB_")]:
        monkeypatch.delenv(name)
    champion = read_champion("deepguard", json.loads(data["artifact-uri-map.json"]))
    assert champion.version == str(version.version)
    assert champion.artifact_uri.startswith("mlflow-artifacts:/")
    parsed = urlparse(champion.storage_uri)
    assert parsed.scheme == "pvc" and parsed.netloc == "deepguard-mlflow"  # the chart's MLflow claim
    # The claim is mounted at /mlflow in the server pod: the mapped path must hold the model folder.
    on_volume = volume / parsed.path.lstrip("/")
    assert (on_volume / "MLmodel").is_file()
    assert (on_volume / "data" / "model.keras").read_bytes() == logged_as.encode()


def test_credentials_in_the_tracking_uri_are_used_but_never_printed(
    mlflow_server: tuple[str, int, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pod's MLFLOW_TRACKING_URI with credentials: MLflow gets them as basic auth (the server refuses the
    run without them), no output shows them."""
    import mlflow

    from core import tracking
    from core.config import load_params

    url, _, _ = mlflow_server
    for name in [n for n in os.environ if n.startswith("DAGSHUB_")]:
        monkeypatch.delenv(name)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the values the code sets are undone
        monkeypatch.delenv(name)
    # A "/" in the password is percent-encoded in the URI, as URLs require.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url.replace("http://", "http://pipeline:s3cret%2Ftoken@"))
    with caplog.at_level(logging.INFO):
        experiment = tracking.setup(load_params(REPO / "params.yaml").mlflow)
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.log_param("epochs", 1)
    out, err = capsys.readouterr()
    # MLflow's own run link and our log name the server without the userinfo...
    assert f"{url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in out
    assert f"MLflow tracking at {url}," in caplog.text
    assert "s3cret" not in out + err + caplog.text
    # ...and MLflow still has the credentials, in its basic-auth settings.
    assert mlflow.get_tracking_uri() == url
    credentials = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    assert credentials == ("pipeline", "s3cret/token")


def test_the_server_asks_for_a_login_and_gives_other_users_the_default_permission(
    mlflow_server: tuple[str, int, Path],
) -> None:
    """The chart's basic-auth app: the Secret's user is the admin; anyone else needs a login and gets READ."""
    url, _, _ = mlflow_server
    api = f"{url}/api/2.0/mlflow"
    assert requests.get(f"{api}/experiments/search?max_results=1", timeout=30).status_code == 401
    wrong = (PIPELINE[0], "not-the-password")
    assert requests.get(f"{api}/experiments/search?max_results=1", auth=wrong, timeout=30).status_code == 401
    assert requests.get(f"{url}/health", timeout=30).status_code == 200  # probes log in as nobody
    viewer = ("viewer", "a-long-viewer-password")
    created = requests.post(
        f"{api}/users/create", json={"username": viewer[0], "password": viewer[1]}, auth=PIPELINE, timeout=30
    )
    assert created.status_code == 200, created.text
    model = {"name": "guarded"}  # the pipeline's model: anyone may look, nobody else may change it
    assert requests.post(f"{api}/registered-models/create", json=model, auth=PIPELINE, timeout=30).ok
    get = f"{api}/registered-models/get"
    assert requests.get(get, params=model, auth=viewer, timeout=30).status_code == 200
    deleted = requests.delete(f"{api}/registered-models/delete", json=model, auth=viewer, timeout=30)
    assert deleted.status_code == 403, deleted.text
    assert requests.get(get, params=model, auth=PIPELINE, timeout=30).status_code == 200
