"""Serving test helpers: train and register a tiny model, start and stop real server processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from workspace import free_port  # noqa: F401  (re-exported for the serving tests)
from workspace import running as _running

REPO = Path(__file__).resolve().parents[2]
SAMPLE_ZIP = REPO / ".." / "shared" / "data" / "cifake-sample.zip"
MODEL_NAME = "deepguard"
TRAIN_PER_CLASS = 200
PROBE_PER_CLASS = 8


@dataclass(frozen=True)
class SampleImages:
    """Encoded JPEG files from the sample archive; label 1 = FAKE."""

    train: list[bytes]
    train_labels: np.ndarray
    probe: list[bytes]  # test-split files the servers are asked about
    probe_labels: np.ndarray


@dataclass(frozen=True)
class RegisteredModel:
    """A model registered as ``deepguard`` with alias ``champion`` in a temporary MLflow store."""

    root: Path
    tracking_uri: str
    model_name: str
    version: str


def read_split(archive: zipfile.ZipFile, split: str, per_class: int) -> tuple[list[bytes], np.ndarray]:
    files, labels = [], []
    for label, cls in enumerate(("REAL", "FAKE")):
        prefix = f"{split}/{cls}/"
        members = sorted(n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/"))
        for name in members[:per_class]:
            files.append(archive.read(name))
            labels.append(label)
    return files, np.asarray(labels, dtype=np.int64)


def train_tiny_model(images: SampleImages, seed: int = 0):  # -> keras.Model
    """One epoch of a tiny CNN with the served contract: uint8 in, scaling inside, P(FAKE) out."""
    import keras

    from core.imaging import decode_for_model

    keras.utils.set_random_seed(seed)
    x = np.stack([decode_for_model(data, 32) for data in images.train])
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    h = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="fake_probability")(h)
    model = keras.Model(inputs, outputs, name="TinyTestCNN")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(x, images.train_labels.astype("float32"), epochs=1, batch_size=32, verbose=0)
    return model


def register_model(
    model, tracking_uri: str, *, threshold: float, synthetic_data: bool, alias: str = "champion"
) -> str:
    """Log ``model`` as an MLflow Keras model with DeepGuard metadata, register it and set ``alias``."""
    import mlflow

    from core.modelstore import ModelMetadata

    metadata = ModelMetadata(
        threshold=threshold,
        image_size=32,
        architecture=model.name,
        data_source="synthetic" if synthetic_data else "local",
        synthetic_data=synthetic_data,
    )
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("serving-tests")
    if experiment is None:
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent
        experiment_id = mlflow.create_experiment(
            "serving-tests", artifact_location=(root / "artifacts").as_uri()
        )
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.keras.log_model(
            model,
            name="model",
            metadata=metadata.to_dict(),
            pip_requirements=[],
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, alias, version)
    return version


def running(
    command: list[str], ready_url: str, log_file: Path, env: dict[str, str]
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """:func:`workspace.running` with ``env`` added to this process's environment."""
    return _running(command, ready_url, log_file, {**os.environ, **env})


@dataclass(frozen=True)
class Server:
    """A server process listening on loopback."""

    url: str
    process: subprocess.Popen
    log_file: Path


def start_predictor(
    registered: RegisteredModel, log_file: Path, *extra: str
) -> tuple[contextlib.AbstractContextManager[subprocess.Popen], str]:
    """``python -m serving`` for ``deepguard@champion`` of ``registered`` on a free port."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model-uri",
        f"models:/{registered.model_name}@champion",
        "--http_port",
        str(port),
        *extra,
    ]
    env = {
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Monitoring records beside the log, not in the repository's monitoring/ (a flag overrides it).
        "DEEPGUARD_MONITORING_DIR": str(log_file.parent / "monitoring"),
    }
    for name in ("DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO"):
        env[name] = ""
    url = f"http://127.0.0.1:{port}"
    return running(command, f"{url}/v2/models/{registered.model_name}/ready", log_file, env), url
