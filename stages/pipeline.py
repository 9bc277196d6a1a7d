"""The single stage list: names, commands, inputs, outputs and pod resources; dvc.yaml is generated from it.

`python -m stages.pipeline` prints dvc.yaml; a test fails when the committed file drifts from this list.
The Airflow DAG builds one task per entry of ``STAGES`` and then ``DEPLOY``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Paths are relative to the pipeline workspace (the repository root locally, a run folder on a cluster).
SOURCE_MARKER = Path("data/source.json")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
FEATURES_DIR = Path("data/features")
MODEL_DIR = Path("models")
REPORTS_DIR = Path("reports")
FIGURES_DIR = REPORTS_DIR / "figures"
DATA_REPORT = REPORTS_DIR / "data_report.json"
TRAINING_REPORT = REPORTS_DIR / "training.json"
METRICS_FILE = REPORTS_DIR / "metrics.json"
REGISTRATION_FILE = REPORTS_DIR / "registration.json"
DEPLOYMENT_FILE = REPORTS_DIR / "deployment.json"

_SHARED = ("stages/config.py", "stages/labels.py")


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of a stage's pod."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    gpu: int = 0


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``python -m stages.<name>``, its declared inputs and outputs."""

    name: str
    description: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    resources: Resources
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    uncached: tuple[str, ...] = field(default=())
    # Only a stage that calls the Kubernetes API gets a ServiceAccount token in its pod (least privilege).
    kubernetes_api: bool = False

    @property
    def module(self) -> str:
        """The module run by ``python -m``."""
        return f"stages.{self.name}"

    @property
    def command(self) -> list[str]:
        """The command a local process or a pod runs (arguments such as ``--set`` are appended)."""
        return ["python", "-m", self.module]


_SMALL = Resources(cpu="500m", memory="1Gi", cpu_limit="2", memory_limit="2Gi")
_MEDIUM = Resources(cpu="1", memory="2Gi", cpu_limit="4", memory_limit="4Gi")
_TRAIN = Resources(cpu="4", memory="8Gi", cpu_limit="8", memory_limit="16Gi", gpu=1)

STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest",
        description="Fetch CIFAKE (Kaggle, local archive or synthetic); validate and deduplicate images.",
        deps=(
            str(SOURCE_MARKER),
            "stages/ingest.py",
            "stages/sources.py",
            "stages/synthetic.py",
            "stages/imaging.py",
            *_SHARED,
        ),
        params=("data",),
        outs=(str(RAW_DIR),),
        metrics=(str(DATA_REPORT),),
        resources=_SMALL,
    ),
    Stage(
        name="preprocess",
        description="Decode to uint8 arrays at native size; stratified train/validation split; test apart.",
        deps=(str(RAW_DIR), "stages/preprocess.py", "stages/shards.py", "stages/imaging.py", *_SHARED),
        params=("data.image_size", "split"),
        outs=(str(PROCESSED_DIR),),
        resources=_SMALL,
    ),
    Stage(
        name="features",
        description="Dataset statistics, the augmentation policy and the per-class frequency spectrum.",
        deps=(str(PROCESSED_DIR), "stages/features.py", "stages/figures.py", "stages/shards.py", *_SHARED),
        params=("augmentation",),
        outs=(str(FEATURES_DIR),),
        plots=(str(FIGURES_DIR / "spectrum.png"),),
        resources=_SMALL,
    ),
    Stage(
        name="train",
        description="Train the configured Keras architecture with early stopping; keep the best checkpoint.",
        deps=(
            str(PROCESSED_DIR),
            str(FEATURES_DIR),
            str(DATA_REPORT),
            "stages/train.py",
            "stages/architectures.py",
            "stages/shards.py",
            *_SHARED,
        ),
        params=("model", "training"),
        outs=(str(MODEL_DIR),),
        metrics=(str(TRAINING_REPORT),),
        resources=_TRAIN,
    ),
    Stage(
        name="evaluate",
        description="Threshold chosen on validation; test metrics, confusion matrix, ROC, PR, calibration.",
        deps=(
            str(MODEL_DIR),
            str(PROCESSED_DIR),
            "stages/evaluate.py",
            "stages/modelstore.py",
            "stages/shards.py",
            *_SHARED,
        ),
        params=("evaluation",),
        metrics=(str(METRICS_FILE),),
        plots=tuple(
            str(FIGURES_DIR / f"{name}.png")
            for name in ("confusion_matrix", "roc_curve", "pr_curve", "calibration")
        ),
        resources=_MEDIUM,
    ),
    Stage(
        name="register",
        description="Log and register the model in MLflow; alias challenger; champion only past the gate.",
        deps=(
            str(MODEL_DIR),
            str(METRICS_FILE),
            str(PROCESSED_DIR),
            str(DATA_REPORT),
            "stages/register.py",
            "stages/modelstore.py",
            *_SHARED,
        ),
        params=("promotion", "mlflow"),
        uncached=(str(REGISTRATION_FILE),),
        resources=_MEDIUM,
    ),
)

DEPLOY = Stage(
    name="deploy",
    description="Roll the champion out to the KServe InferenceService (canary, then promote or roll back).",
    deps=("stages/deploy.py",),
    params=("mlflow",),
    resources=_SMALL,
    kubernetes_api=True,
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def dvc_yaml() -> str:
    """Render dvc.yaml from ``STAGES``."""
    stages: dict[str, dict] = {}
    for stage in STAGES:
        entry: dict = {
            "desc": stage.description,
            "cmd": " ".join(stage.command),
            "deps": list(stage.deps),
            "params": list(stage.params),
        }
        outs: list = list(stage.outs) + [{path: {"cache": False}} for path in stage.uncached]
        if outs:
            entry["outs"] = outs
        if stage.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in stage.metrics]
        if stage.plots:
            entry["plots"] = [{path: {"cache": False}} for path in stage.plots]
        stages[stage.name] = entry
    header = "# Generated by `python -m stages.pipeline > dvc.yaml` from stages/pipeline.py: do not edit.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(dvc_yaml())
