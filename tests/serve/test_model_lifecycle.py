"""Where the predictor's model comes from and how it changes: reload by alias, failures, local folders."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import requests

from core.imaging import decode_for_model
from core.modelstore import download_model, load_model_dir, predict_fake_probability

from .serving_helpers import RegisteredModel, register_model, start_predictor, train_tiny_model

TIMEOUT = 60


def infer(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT)


def served_version(url: str) -> list[str]:
    return requests.get(f"{url}/v2/models/deepguard", timeout=TIMEOUT).json()["versions"]


@pytest.fixture(scope="module")
def own_store(tiny_model, tmp_path_factory) -> RegisteredModel:
    """A store of its own: this module moves and deletes the champion alias."""
    root = tmp_path_factory.mktemp("mlflow-lifecycle")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    version = register_model(tiny_model, tracking_uri, threshold=0.5, synthetic_data=False)
    return RegisteredModel(root=root, tracking_uri=tracking_uri, model_name="deepguard", version=version)


@pytest.fixture(scope="module")
def lifecycle_predictor(own_store, tmp_path_factory):
    manager, url = start_predictor(own_store, tmp_path_factory.mktemp("lifecycle") / "predictor.log")
    with manager:
        yield url


def test_reload_swaps_in_the_new_champion_while_serving(
    lifecycle_predictor, own_store, sample_images, tmp_path_factory
):
    import base64

    import mlflow

    url = lifecycle_predictor
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(sample_images.probe)],
                "data": [base64.b64encode(f).decode() for f in sample_images.probe],
            }
        ]
    }
    assert served_version(url) == [own_store.version]

    # A new version trained differently, on "synthetic" data, becomes champion in the registry.
    new_model = train_tiny_model(sample_images, seed=1)
    new_version = register_model(new_model, own_store.tracking_uri, threshold=0.4, synthetic_data=True)
    assert new_version != own_store.version
    assert served_version(url) == [own_store.version], "the alias moved but nothing was reloaded yet"

    # Clients keep calling during the reload; every answer must be a 200 from one version or the other.
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(5000):  # bounded; normally stopped by the event long before
            if stop.is_set():
                return
            response = infer(url, body)
            seen.append((response.status_code, response.json().get("model_version")))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        load = requests.post(f"{url}/v2/repository/models/deepguard/load", timeout=TIMEOUT)
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT)
    assert load.status_code == 200, load.text
    assert load.json() == {"name": "deepguard", "load": True}
    assert len(seen) >= 3, f"only {len(seen)} requests were answered during the reload"
    assert {status for status, _ in seen} == {200}
    versions = [version for _, version in seen]
    assert set(versions) <= {own_store.version, new_version}
    assert versions == sorted(versions, key=lambda v: v == new_version), "old version answered after the new"

    assert served_version(url) == [new_version]
    response = infer(url, body)
    assert response.status_code == 200
    result = response.json()
    assert result["model_version"] == new_version
    assert result["parameters"]["synthetic_data"] is True
    assert result["parameters"]["threshold"] == pytest.approx(0.4)
    mlflow.set_tracking_uri(own_store.tracking_uri)
    model, metadata = load_model_dir(
        download_model(f"models:/deepguard/{new_version}", tmp_path_factory.mktemp("new"))
    )
    images = np.stack([decode_for_model(f, metadata.image_size) for f in sample_images.probe])
    expected = predict_fake_probability(model, images)
    got = {o["name"]: o["data"] for o in result["outputs"]}["fake_probability"]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_failed_reload_keeps_the_served_model(lifecycle_predictor, own_store, sample_images):
    import base64

    from mlflow import MlflowClient

    url = lifecycle_predictor
    before = served_version(url)
    client = MlflowClient(tracking_uri=own_store.tracking_uri)
    client.delete_registered_model_alias("deepguard", "champion")
    try:
        load = requests.post(f"{url}/v2/repository/models/deepguard/load", timeout=TIMEOUT)
        assert load.status_code == 503, load.text
        assert "champion" in load.text
        assert served_version(url) == before
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(sample_images.probe[0]).decode()],
                }
            ]
        }
        assert infer(url, body).status_code == 200
    finally:
        client.set_registered_model_alias("deepguard", "champion", before[0])


def test_a_champion_whose_files_are_gone_is_refused_by_its_version_not_a_temporary_path(
    lifecycle_predictor, own_store, tiny_model
):
    from mlflow import MlflowClient

    url = lifecycle_predictor
    before = served_version(url)
    lost = register_model(tiny_model, own_store.tracking_uri, threshold=0.5, synthetic_data=False)
    client = MlflowClient(tracking_uri=own_store.tracking_uri)
    shutil.rmtree(client.get_model_version_download_uri("deepguard", lost).removeprefix("file://"))
    try:
        load = requests.post(f"{url}/v2/repository/models/deepguard/load", timeout=TIMEOUT)
        assert load.status_code == 503, load.text
        assert f"models:/deepguard/{lost}: the artifact store holds no data/model.keras" in load.text
        assert "deepguard-model-" not in load.text  # the predictor's temporary download folder
        assert served_version(url) == before
    finally:
        client.set_registered_model_alias("deepguard", "champion", before[0])


def test_unload_then_load_brings_the_model_back(lifecycle_predictor):
    url = lifecycle_predictor
    assert requests.post(f"{url}/v2/repository/models/deepguard/unload", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{url}/v2/models/deepguard/ready", timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{url}/v2/repository/models/deepguard/load", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{url}/v2/models/deepguard/ready", timeout=TIMEOUT).json()["ready"] is True


def test_loading_a_model_this_server_does_not_serve_is_404(lifecycle_predictor):
    """No retry can load it: a client error (KServe's own extension answers 503, "try again later")."""
    url = lifecycle_predictor
    load = requests.post(f"{url}/v2/repository/models/no-such-model/load", timeout=TIMEOUT)
    assert load.status_code == 404, load.text
    assert "no-such-model" in load.json()["error"]
    assert requests.get(f"{url}/v2/models/deepguard/ready", timeout=TIMEOUT).status_code == 200


def test_local_folder_reports_the_version_from_the_environment(
    registered_model, sample_images, tmp_path_factory, monkeypatch
):
    """What KServe's storage initializer leaves at /mnt/models: a folder, the version in an env variable."""
    import base64

    import mlflow

    mlflow.set_tracking_uri(registered_model.tracking_uri)
    folder = tmp_path_factory.mktemp("mnt") / "models"
    shutil.copytree(
        download_model(f"models:/deepguard/{registered_model.version}", tmp_path_factory.mktemp("dl")), folder
    )
    monkeypatch.setenv("DEEPGUARD_MODEL_VERSION", "42")
    log_file = tmp_path_factory.mktemp("local") / "predictor.log"
    manager, url = start_predictor(registered_model, log_file, "--model-uri", str(folder))
    with manager:
        assert served_version(url) == ["42"]
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(sample_images.probe[0]).decode()],
                }
            ]
        }
        response = infer(url, body)
        assert response.status_code == 200
        assert response.json()["model_version"] == "42"
