"""Serving fixtures: a model trained on real CIFAKE images in a temporary MLflow store; real servers."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator

import pytest

from .serving_helpers import (
    PROBE_PER_CLASS,
    SAMPLE_ZIP,
    TRAIN_PER_CLASS,
    RegisteredModel,
    SampleImages,
    Server,
    free_port,
    read_split,
    running,
    start_predictor,
    train_tiny_model,
)


@pytest.fixture(scope="session")
def sample_images() -> SampleImages:
    """~400 training and 16 probe images of ../shared/data/cifake-sample.zip."""
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP.resolve()} not found: the serving tests need the shared CIFAKE sample")
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        train, train_labels = read_split(archive, "train", TRAIN_PER_CLASS)
        probe, probe_labels = read_split(archive, "test", PROBE_PER_CLASS)
    return SampleImages(train, train_labels, probe, probe_labels)


@pytest.fixture(scope="session")
def tiny_model(sample_images: SampleImages):  # -> keras.Model
    """The tiny model trained once per session."""
    return train_tiny_model(sample_images)


@pytest.fixture(scope="session")
def registered_model(trained_workspace) -> RegisteredModel:
    """The champion the real pipeline registered (tests/conftest.py: `dvc repro` on the CIFAKE sample)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained_workspace.tracking_uri)
    version = client.get_model_version_by_alias(trained_workspace.model_name, "champion").version
    return RegisteredModel(
        root=trained_workspace.root,
        tracking_uri=trained_workspace.tracking_uri,
        model_name=trained_workspace.model_name,
        version=str(version),
    )


@pytest.fixture(scope="session")
def predictor(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real KServe ModelServer serving the champion, on loopback."""
    log_file = tmp_path_factory.mktemp("predictor") / "predictor.log"
    manager, url = start_predictor(
        registered_model, log_file, "--max-images", "300", "--max-image-bytes", "2000000"
    )
    with manager as process:
        yield Server(url, process, log_file)


@pytest.fixture(scope="session")
def web(predictor: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The Flask app under gunicorn (``python -m flask_app``), pointed at the predictor."""
    log_file = tmp_path_factory.mktemp("web") / "web.log"
    port = free_port()
    env = {
        "PREDICTOR_URL": predictor.url,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "WEB_WORKERS": "1",
        "MAX_CONTENT_LENGTH": str(2 * 1024 * 1024),
    }
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "flask_app"], f"{url}/healthz", log_file, env) as process:
        yield Server(url, process, log_file)
