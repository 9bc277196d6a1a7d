"""A champion with a drift reference in a real MLflow store, and served records of clean or degraded CIFAKE.

The scores come from a stand-in for the served model: a logistic regression on the core.imagestats
statistics, fitted on half of the sample's train split (a real detector would take minutes to train; the
monitor only reads the scores, and this one, like the CNN, reacts to blur and resizing). The reference is
the other half of train, as evaluate builds it from a held-out split; the records are the test split.

Also a command for the Airflow DAG tests, which run in another environment (ML env interpreter):
``python tests/drift_world.py TRACKING_URI MONITORING_DIR SCENARIO NOW`` registers the champion (once) and
writes the scenario's records; prints the report of what it wrote as JSON.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.degrade import degrade, degraded_file  # noqa: E402
from core.drift import build_reference  # noqa: E402
from core.imagestats import STAT_NAMES, image_statistics  # noqa: E402
from core.labels import CLASS_NAMES, verdicts  # noqa: E402

SAMPLE_ZIP = REPO.parent / "shared" / "data" / "cifake-sample.zip"
MODEL_NAME = "deepguard"
BANDS = (0.4, 0.6)
SCENARIOS = ("clean", "blur_1.0", "upscale_4x")


def load_split(split: str, archive: Path = SAMPLE_ZIP) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The files, decoded uint8 images and labels (1 = FAKE) of one split of the sample, in name order."""
    files, labels = [], []
    with zipfile.ZipFile(archive) as zf:
        for label, cls in enumerate(CLASS_NAMES):
            names = sorted(
                n for n in zf.namelist() if n.startswith(f"{split}/{cls}/") and not n.endswith("/")
            )
            files += [zf.read(n) for n in names]
            labels += [label] * len(names)
    images = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    return files, images, np.asarray(labels)


def _features(images: np.ndarray) -> np.ndarray:
    stats = image_statistics(images)
    return np.stack([stats[name] for name in STAT_NAMES], axis=1)


class StandInScorer:
    """Logistic regression on image statistics, fitted on even-indexed train images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        self.model.fit(_features(images), labels)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(_features(images))[:, 1]


def world() -> tuple[StandInScorer, dict, tuple]:
    """The scorer, the reference (odd-indexed train images) and the test split."""
    _, train, train_labels = load_split("train")
    scorer = StandInScorer(train[::2], train_labels[::2])
    reference = build_reference(train[1::2], scorer(train[1::2]))
    return scorer, {**reference, "bands": list(BANDS)}, load_split("test")


def records(scenario: str, scorer: StandInScorer, test: tuple, version: str, now: datetime) -> list[dict]:
    """One record per test image uploaded after ``scenario``, as the predictor writes them."""
    files, images, _ = test
    if scenario == "clean":
        uploads, scored = files, images
    else:
        uploads = [degraded_file(image, scenario, seed=i) for i, image in enumerate(images)]
        scored = degrade(images, scenario)
    scores = scorer(scored)
    stats = image_statistics(scored)
    out = []
    for i, (data, score, verdict) in enumerate(zip(uploads, scores, verdicts(scores, *BANDS), strict=True)):
        header = Image.open(io.BytesIO(data))
        out.append(
            {
                "ts": (now - timedelta(seconds=10 * (i + 1))).isoformat(),
                "model_version": version,
                "protocol": "v1",
                "fake_probability": float(score),
                "verdict": verdict,
                "width": header.width,
                "height": header.height,
                "format": header.format,
                **{name: float(stats[name][i]) for name in STAT_NAMES},
            }
        )
    return out


def register_champion(tracking_uri: str, reference: dict) -> str:
    """A registered version aliased champion whose run holds the reference (as register logs it)."""
    import mlflow
    from mlflow import MlflowClient

    from core.names import CHAMPION
    from core.pipeline import REFERENCE_ARTIFACT

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        pass
    experiment = client.get_experiment_by_name("deepguard")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("deepguard")
    run = client.create_run(experiment_id, run_name="stand-in champion")
    client.log_dict(run.info.run_id, {**reference, "model_version": "1"}, REFERENCE_ARTIFACT)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(MODEL_NAME, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    return str(version.version)


def write_records(folder: Path, rows: list[dict]) -> Path:
    """Write rows as one JSONL file of ``folder`` (as the predictor appends them)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"served-{len(list(folder.glob('*.jsonl')))}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def main(argv: list[str]) -> int:
    """Register the stand-in champion and write one scenario's records; print a short JSON summary."""
    tracking_uri, monitoring_dir, scenario, now = argv
    scorer, reference, test = world()
    version = register_champion(tracking_uri, reference)
    rows = records(scenario, scorer, test, version, datetime.fromisoformat(now))
    write_records(Path(monitoring_dir) / "records", rows)
    sys.stdout.write(json.dumps({"version": version, "records": len(rows)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
