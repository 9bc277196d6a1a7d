"""The single stage list: names, commands, inputs, outputs and pod resources; dvc.yaml is generated from it.

`python -m core.pipeline` prints dvc.yaml; a test fails when the committed file drifts from this list.
The Airflow DAG builds one task per entry of ``STAGES`` and then ``DEPLOY``. A stage's code dependencies are
not listed by hand: they are the project files its module imports, found by scanning the code (no import).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import DeepGuardError

# Paths are relative to the pipeline workspace (the repository root locally, a run folder on a cluster).
SOURCE_MARKER = Path("data/source.json")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
SPLIT_SUMMARY = PROCESSED_DIR / "summary.json"  # preprocess: split counts and hashes
FEATURES_DIR = Path("data/features")
MODEL_DIR = Path("models")
REPORTS_DIR = Path("reports")
FIGURES_DIR = REPORTS_DIR / "figures"
DATA_REPORT = REPORTS_DIR / "data_report.json"
TRAINING_REPORT = REPORTS_DIR / "training.json"
METRICS_FILE = REPORTS_DIR / "metrics.json"
ROBUSTNESS_FILE = REPORTS_DIR / "robustness.json"
REGISTRATION_FILE = REPORTS_DIR / "registration.json"
DEPLOYMENT_FILE = REPORTS_DIR / "deployment.json"
# The drift reference (evaluate: test-split statistics and scores; register logs it with the version) and
# the drift monitor's report.
REFERENCE_FILE = REPORTS_DIR / "reference.json"
DRIFT_FILE = REPORTS_DIR / "drift.json"
DRIFT_FIGURE = FIGURES_DIR / "drift.png"
# The per-class frequency spectrum: plotted by features, logged with the train run.
SPECTRUM_FIGURE = FIGURES_DIR / "spectrum.png"
REFERENCE_ARTIFACT = "monitoring/reference.json"  # in the registered version's MLflow run
MODEL_CARD_JSON = REPORTS_DIR / "model_card.json"
MODEL_CARD_MARKDOWN = REPORTS_DIR / "model_card.md"
# File names inside those folders: written by one stage, read by the next.
ARCHIVE = "images.zip"  # in RAW_DIR: the validated images
INDEX = "index.json"  # in RAW_DIR: each kept image's split and label
FEATURES_FILE = "features.json"  # in FEATURES_DIR
MODEL_FILE = "model.keras"  # in MODEL_DIR
RUN_FILE = "run.json"  # in MODEL_DIR: the MLflow run that trained the model

# The project root: code dependencies are paths relative to it, as dvc.yaml lists them.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_deps(module: str, root: Path = PROJECT_ROOT) -> tuple[str, ...]:
    """The project files ``module`` imports, directly or through other project modules, itself included.

    Uses the standard library's ``modulefinder``, which reads the bytecode without running it and also sees
    imports inside functions; searching only ``root`` keeps third-party and standard modules out.

    Args:
        module: A dotted module name such as ``stages.train``.
        root: The folder the module's package lives in.

    Returns:
        Sorted POSIX paths relative to ``root``, e.g. ``("core/atomic.py", ..., "stages/train.py")``.
    """
    import modulefinder  # here, not at the top: the Airflow DAG imports this module and must stay light

    finder = modulefinder.ModuleFinder(path=[str(root)])
    path = root.joinpath(*module.split("."))
    # A package run with `python -m` (deploy) runs its __main__.py.
    finder.run_script(str(path / "__main__.py" if path.is_dir() else path.with_suffix(".py")))
    files = {Path(found.__file__) for found in finder.modules.values() if found.__file__}
    return tuple(sorted(file.relative_to(root).as_posix() for file in files if file.is_relative_to(root)))


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
    """One pipeline stage: ``python -m <module>``, its declared inputs and outputs."""

    name: str
    description: str
    inputs: tuple[str, ...]  # data the stage reads; its code dependencies are derived (see ``deps``)
    params: tuple[str, ...]
    resources: Resources
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    # Only a stage that calls the Kubernetes API gets a ServiceAccount token in its pod (least privilege).
    kubernetes_api: bool = False
    # False for a stage whose work is outside the workspace (register: the MLflow registry): DVC must run
    # it, never replay its outputs from its run cache, which would skip the registration (after `make clean`
    # empties the store, or params set back). dvc.yaml says so with `persist: true` on its outputs.
    run_cache: bool = True
    package: str = "stages"  # deploy is its own package: it ships models, it trains nothing

    @property
    def module(self) -> str:
        """The module run by ``python -m``: ``<package>.<name>``, or the package when it bears the name."""
        return self.package if self.package == self.name else f"{self.package}.{self.name}"

    @property
    def deps(self) -> tuple[str, ...]:
        """What DVC watches: the declared data inputs, then every project file the stage's module imports.

        Computed on first use, so importing this module (the Airflow DAG does) scans no code.
        """
        return self.inputs + code_deps(self.module)

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
        inputs=(str(SOURCE_MARKER),),
        params=("data",),
        outs=(str(RAW_DIR),),
        metrics=(str(DATA_REPORT),),
        resources=_SMALL,
    ),
    Stage(
        name="preprocess",
        description="Decode to uint8 arrays at native size; stratified train/validation split; test apart.",
        inputs=(str(RAW_DIR),),
        params=("data.image_size", "split"),
        outs=(str(PROCESSED_DIR),),
        resources=_SMALL,
    ),
    Stage(
        name="features",
        description="Dataset statistics, the augmentation policy and the per-class frequency spectrum.",
        inputs=(str(PROCESSED_DIR),),
        params=("augmentation",),
        outs=(str(FEATURES_DIR),),
        plots=(str(SPECTRUM_FIGURE),),
        resources=_SMALL,
    ),
    Stage(
        name="train",
        description="Train the configured Keras architecture with early stopping; keep the best checkpoint.",
        # The index, not the data report: the report names where the source lies on this machine, and the same
        # images read from another path (a fresh clone after `dvc pull`) must not retrain the model.
        inputs=(str(PROCESSED_DIR), str(FEATURES_DIR), str(RAW_DIR / INDEX)),
        params=("model", "training", "calibration"),
        outs=(str(MODEL_DIR),),
        metrics=(str(TRAINING_REPORT),),
        resources=_TRAIN,
    ),
    Stage(
        name="evaluate",
        description="Threshold chosen on validation; test metrics, confusion matrix, ROC, PR, calibration, "
        "robustness under degradations, extra sets.",
        inputs=(str(MODEL_DIR), str(PROCESSED_DIR)),
        params=("evaluation",),
        metrics=(str(METRICS_FILE), str(ROBUSTNESS_FILE)),
        plots=tuple(
            str(FIGURES_DIR / f"{name}.png")
            for name in ("confusion_matrix", "roc_curve", "pr_curve", "calibration", "robustness")
        ),
        outs=(str(REFERENCE_FILE),),
        resources=_MEDIUM,
    ),
    Stage(
        name="register",
        description="Log and register the model in MLflow; alias challenger; champion only past the gate.",
        inputs=(
            str(MODEL_DIR),
            str(METRICS_FILE),
            str(ROBUSTNESS_FILE),
            str(PROCESSED_DIR),
            str(DATA_REPORT),
            str(REFERENCE_FILE),
        ),
        params=("promotion", "mlflow", "evaluation.robustness_sample"),
        # The model card (stages/model_card.py) is also logged with the version; these are the local copies.
        outs=(str(REGISTRATION_FILE), str(MODEL_CARD_JSON), str(MODEL_CARD_MARKDOWN)),
        run_cache=False,
        resources=_MEDIUM,
    ),
)

DEPLOY = Stage(
    name="deploy",
    description="Roll the champion out to the KServe InferenceService (canary, then promote or roll back).",
    inputs=(),
    params=("mlflow", "canary"),
    resources=_SMALL,
    kubernetes_api=True,
    package="deploy",
)

# Not a pipeline stage: the drift monitor runs on its own schedule (DAG deepguard_monitor) and reads served
# records and the champion from MLflow, not the outputs of a pipeline run.
MONITOR = Stage(
    name="monitor",
    description="Compare the champion's served inputs and scores with its reference; report drift.",
    inputs=(),
    params=("monitoring", "mlflow"),
    resources=_SMALL,
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


class MissingInputError(DeepGuardError, FileNotFoundError):
    """A stage's input is not in the workspace: the message names the file and the stage that writes it."""


def writer_of(path: Path) -> Stage | None:
    """The stage whose declared outputs hold ``path`` (a file inside an output folder included), or None.

    Args:
        path: Relative to the workspace, or absolute inside the current folder (the workspace).
    """
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    for stage in STAGES:
        for out in (*stage.outs, *stage.metrics, *stage.plots):
            if path == Path(out) or Path(out) in path.parents:
                return stage
    return None


def missing_input(path: Path) -> MissingInputError:
    """The one-line error for a stage input that is not there, naming the stage that writes it.

    Args:
        path: The missing file.

    Returns:
        The error to raise (``stages.<name>: error: data/raw/index.json: not found; ...`` on the CLI).
    """
    stage = writer_of(path)
    if stage is None:
        return MissingInputError(f"{path}: not found")
    return MissingInputError(
        f"{path}: not found; the {stage.name} stage writes it: run `python -m {stage.module}` "
        f"(or `dvc repro {stage.name}`) first"
    )


def dvc_yaml() -> str:
    """Render dvc.yaml from ``STAGES``.

    Every output is cached, metrics and plots included: they are git-ignored (``reports/``), so the DVC
    cache is the only place that keeps them per revision. Cached, ``dvc exp show``, ``dvc metrics diff`` and
    ``dvc plots diff`` read them for commits and experiments, ``dvc push``/``pull`` carry them, and
    ``dvc checkout`` restores what ``dvc repro`` removed before running a stage that was then killed.
    A stage with ``run_cache=False`` gets ``persist: true`` outputs, which DVC never restores from its run
    cache (nor removes before running the stage: it writes them atomically).
    """
    stages: dict[str, dict] = {}
    for stage in STAGES:
        entry: dict = {
            "desc": stage.description,
            "cmd": " ".join(stage.command),
            "deps": list(stage.deps),
            "params": list(stage.params),
        }
        if stage.outs:
            entry["outs"] = [out if stage.run_cache else {out: {"persist": True}} for out in stage.outs]
        if stage.metrics:
            entry["metrics"] = list(stage.metrics)
        if stage.plots:
            entry["plots"] = list(stage.plots)
        stages[stage.name] = entry
    header = "# Generated by `python -m core.pipeline > dvc.yaml` from core/pipeline.py: do not edit.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(dvc_yaml())
