"""The served model's format: an MLflow Keras model folder whose MLmodel metadata carries the serving facts.

register writes it, evaluate/register/serving read it, and KServe's storage initializer copies the same
folder to /mnt/models on a cluster. One ``predict_fake_probability`` is used everywhere a model scores images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from core.errors import DeepGuardError
from core.labels import CLASS_NAMES

if TYPE_CHECKING:  # keras is imported lazily, where it is used, so importing this module stays light
    import keras

log = logging.getLogger(__name__)

KERAS_FILE = Path("data/model.keras")  # inside an MLflow Keras model folder
# The version's model card (stages/model_card.py), beside MLmodel: on a cluster /mnt/models/model_card.json.
MODEL_CARD_FILE = Path("model_card.json")


class ModelLoadError(DeepGuardError):
    """A model folder or URI that cannot be loaded."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a server needs besides the weights; stored in the MLmodel file's ``metadata``."""

    threshold: float
    image_size: int
    architecture: str
    data_source: str
    synthetic_data: bool
    class_names: tuple[str, ...] = CLASS_NAMES
    # The uncertain band (see core.labels.verdicts); None for models registered before it: no band. An
    # empty band's edge lies outside [0, 1] (core.labels.EMPTY_*_BAND): that side decides nothing.
    real_below: float | None = None
    fake_above: float | None = None
    # The calibration built into the saved model's output, sigmoid(logit / temperature + calibration_bias)
    # (1.0 and 0.0: uncalibrated; bias 0.0 for temperature scaling); informational for servers.
    temperature: float = 1.0
    calibration_bias: float = 0.0

    @property
    def bands(self) -> tuple[float, float]:
        """``(real_below, fake_above)``; the threshold for both when the model has no uncertain band."""
        return (
            self.threshold if self.real_below is None else self.real_below,
            self.threshold if self.fake_above is None else self.fake_above,
        )

    def to_dict(self) -> dict:
        """Plain types for YAML/JSON."""
        return {**asdict(self), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, raw: dict) -> ModelMetadata:
        """Read the dict written by :meth:`to_dict` (optional keys default for older models)."""
        fields = {
            key: raw[key]
            for key in ("threshold", "image_size", "architecture", "data_source", "synthetic_data")
        }
        optional = {
            key: raw[key]
            for key in ("real_below", "fake_above", "temperature", "calibration_bias")
            if key in raw
        }
        return cls(**fields, **optional, class_names=tuple(raw.get("class_names", CLASS_NAMES)))


def read_metadata(model_dir: Path) -> ModelMetadata:
    """Read the serving metadata from ``<model_dir>/MLmodel``."""
    mlmodel = model_dir / "MLmodel"
    try:
        raw = yaml.safe_load(mlmodel.read_text())
        return ModelMetadata.from_dict(raw["metadata"])
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir}: no MLmodel file (not an MLflow model folder)") from None
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{mlmodel}: missing DeepGuard metadata ({exc})") from None


def read_model_card(model_dir: Path) -> dict | None:
    """The model card inside an MLflow model folder, or None when the version has none (or it is unreadable).

    A card that cannot be read is logged and served as absent: it documents the model, it does not decide.
    """
    path = model_dir / MODEL_CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable model card, served as absent: %s", path, exc)
        return None
    if not isinstance(card, dict):
        log.warning("%s: the model card is not a JSON object, served as absent", path)
        return None
    return card


def set_model_threads(threads: int) -> None:
    """Let one model call use at most ``threads`` cores; call before the model is loaded.

    TensorFlow otherwise spreads every call over all cores and keeps its idle workers spinning after it,
    which a server's other threads (the event loop, image decoding) then wait behind.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)  # the networks are chains: nothing to overlap


def load_keras(path: Path) -> keras.Model:
    """Load a ``.keras`` file for inference."""
    import keras

    import core.layers  # noqa: F401  (registers DeepGuard's custom layer for deserialisation)

    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    return keras.saving.load_model(path, compile=False)


def load_model_dir(model_dir: Path) -> tuple[keras.Model, ModelMetadata]:
    """Load an MLflow Keras model folder (a downloaded registry version or KServe's /mnt/models)."""
    return load_keras(model_dir / KERAS_FILE), read_metadata(model_dir)


def download_model(uri: str, dest: Path | None = None) -> Path:
    """Download ``models:/name@alias`` (or any MLflow artifact URI) and return the local folder."""
    import mlflow

    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest) if dest else None)
        )
    except Exception as exc:  # MLflow raises several types for a missing model or alias
        raise ModelLoadError(f"{uri}: cannot download model: {exc}") from None
    # A version whose files are gone downloads as an empty folder, and the error would name a temporary path.
    if not (folder / KERAS_FILE).is_file():
        raise ModelLoadError(
            f"{uri}: the artifact store holds no {KERAS_FILE} for it (its files were deleted, or the MLflow "
            "store was restored without its artifacts)"
        )
    return folder


def predict_fake_probability(model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Score uint8 images ``(N, H, W, 3)``; returns P(FAKE) as float32 ``(N,)``.

    Batches go through ``predict_on_batch`` (a compiled function, no per-call progress bar or
    dataset set-up), which is what makes single-image serving fast.
    """
    if len(images) == 0:
        return np.zeros((0,), dtype=np.float32)
    out = [
        np.asarray(model.predict_on_batch(np.asarray(images[i : i + batch_size], dtype=np.uint8)))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).reshape(-1).astype(np.float32)
