"""The one typed loader for params.yaml: frozen models that reject unknown keys and name the bad key path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import DeepGuardError

PARAMS_FILE = Path("params.yaml")

Architecture = Literal[
    "DeepGuardCNN",
    "SimpleCNN",
    "DeeperCNN",
    "EfficientStyleCNN",
    "EfficientNetB0Transfer",
    "XceptionTransfer",
]


class ConfigError(DeepGuardError):
    """params.yaml (or an override) is missing, malformed, or has an unknown or mistyped key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    source: Literal["auto", "kaggle", "local", "synthetic"]
    kaggle_dataset: str
    local_path: str | None
    image_size: int = Field(ge=8, le=512)
    sample_per_class: int | None = Field(ge=1)
    synthetic_per_class: int = Field(ge=10)


class SplitParams(_Section):
    validation_fraction: float = Field(gt=0.0, lt=0.5)
    seed: int


class AugmentationParams(_Section):
    horizontal_flip: bool
    translate: float = Field(ge=0.0, le=0.5)
    contrast: float = Field(ge=0.0, le=1.0)


class ModelParams(_Section):
    architecture: Architecture
    pretrained_weights: str
    dropout: float = Field(ge=0.0, lt=1.0)
    test_time_flip: bool


class TrainingParams(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    early_stopping_patience: int = Field(ge=1)
    seed: int
    mixed_precision: Literal["auto", "on", "off"]


class CalibrationParams(_Section):
    enabled: bool
    # Temperature scaling only: one parameter fitted on validation keeps the ranking (ROC-AUC) unchanged.
    method: Literal["temperature"]


class EvaluationParams(_Section):
    threshold_metric: Literal["accuracy", "f1"]
    calibration_bins: int = Field(ge=2, le=100)
    band_precision: float = Field(gt=0.5, le=1.0)


class PromotionParams(_Section):
    metric: Literal["accuracy", "roc_auc", "f1", "precision", "recall"]
    min_improvement: float = Field(ge=0.0)


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    model_name: str = Field(min_length=1)


class Params(_Section):
    """Every tunable of the pipeline, as read from params.yaml."""

    data: DataParams
    split: SplitParams
    augmentation: AugmentationParams
    model: ModelParams
    training: TrainingParams
    calibration: CalibrationParams
    evaluation: EvaluationParams
    promotion: PromotionParams
    mlflow: MlflowParams

    def digest(self) -> str:
        """Return a stable sha256 of the parameters, for lineage tags."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw params mapping.

    Args:
        raw: The mapping read from params.yaml; it is not modified.
        overrides: Items such as ``training.epochs=1``.

    Returns:
        A new mapping with the overrides applied.
    """
    result = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        *parents, leaf = key.split(".")
        node = result
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: unknown key {'.'.join(parents[: i + 1])}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {item!r}: unknown key {key}")
        node[leaf] = yaml.safe_load(value)
    return result


def load_params(path: Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Load and validate params.yaml.

    Args:
        path: The params file.
        overrides: Optional ``key.path=value`` items applied before validation.

    Returns:
        The validated, frozen parameters.

    Raises:
        ConfigError: naming the file and the key path of the first problem found.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {where}: {message}{more}") from None
