"""Pipeline benchmark: the full pipeline on a CIFAKE archive, preprocess memory at two sizes, and training
throughput of our recipe (uint8 32x32, scaling inside the model) against the seed's (float32 upsampled to
128x128), each baseline and ours in one run with the ratio.

    python bench/pipeline_bench.py full --data ../shared/data/cifake.zip       # wall time, RSS, accuracy
    python bench/pipeline_bench.py memory --data ../shared/data/cifake.zip     # preprocess RSS at 10k vs all
    python bench/pipeline_bench.py throughput --data ../shared/data/cifake.zip # img/s, ours vs seed recipe

Each stage runs as its own process (``python -m stages.<name>``) in a scratch workspace; peak RSS is the
kernel's maxrss for that process (``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.metrics import format_metric  # noqa: E402
from core.pipeline import STAGE_NAMES  # noqa: E402


def run_measured(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that process."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed with {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss / 1024


def workspace(data: Path) -> tuple[Path, dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="deepguard-bench-"))
    for package in ("core", "stages"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    env = {
        **os.environ,
        "DEEPGUARD_DATA": str(data.resolve()),
        "PYTHONPATH": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    return root, env


def stage(name: str, root: Path, env: dict[str, str], *overrides: str) -> tuple[float, float]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return run_measured([sys.executable, "-m", f"stages.{name}", *sets], root, env)


def full(data: Path, overrides: list[str]) -> None:
    """All six stages on ``data`` with the committed params (plus overrides)."""
    root, env = workspace(data)
    rows = []
    for name in STAGE_NAMES:
        seconds, rss = stage(name, root, env, *overrides)
        rows.append((name, seconds, rss))
        print(f"  {name:<11} {seconds:8.1f} s   peak RSS {rss:8.0f} MiB", flush=True)
    training = json.loads((root / "reports/training.json").read_text())
    metrics = json.loads((root / "reports/metrics.json").read_text())
    total = sum(seconds for _, seconds, _ in rows)
    print("\n| stage | wall s | peak RSS MiB |\n|---|---:|---:|")
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds:.1f} | {rss:.0f} |")
    print(f"| **total** | {total:.1f} | |")
    print(
        f"\ntraining: {training['epochs_run']} epochs, {training['train_seconds']:.0f} s, "
        f"{training['train_images_per_second']:.0f} img/s, best epoch {training['best_epoch']}"
    )
    test = metrics["test"]
    print(
        f"test ({test['count']} images): accuracy {test['accuracy']:.4f}, "
        f"ROC-AUC {format_metric(test['roc_auc'])}, "
        f"F1 {test['f1']:.4f}, threshold {metrics['threshold']:.3f} (chosen on validation)"
    )
    print(f"workspace kept at {root}")


def memory(data: Path) -> None:
    """Preprocess peak RSS on a 10k-image subset (2,500 per split and class) and on the whole archive."""
    results = {}
    for label, overrides in (("10k subset", ["data.sample_per_class=2500"]), ("whole archive", [])):
        root, env = workspace(data)
        stage("ingest", root, env, *overrides)
        seconds, rss = stage("preprocess", root, env, *overrides)
        count = sum(
            sum(c.values())
            for c in json.loads((root / "data/processed/summary.json").read_text())["counts"].values()
        )
        results[label] = (count, seconds, rss)
        shutil.rmtree(root)
    print("\n| preprocess on | images | wall s | peak RSS MiB |\n|---|---:|---:|---:|")
    for label, (count, seconds, rss) in results.items():
        print(f"| {label} | {count} | {seconds:.1f} | {rss:.0f} |")
    small, large = results["10k subset"], results["whole archive"]
    print(f"\nimages x{large[0] / small[0]:.1f} -> peak RSS x{large[2] / small[2]:.2f}")


def throughput(data: Path, images: int, steps: int) -> None:
    """Train img/s of the default network: ours (uint8 32x32) vs the seed recipe (float32 128x128)."""
    import io
    import zipfile

    import keras
    import numpy as np
    from PIL import Image

    from core.config import load_params
    from stages.architectures import build_model

    params = load_params(REPO / "params.yaml")
    with zipfile.ZipFile(data) as archive:
        names = [n for n in archive.namelist() if n.startswith("train/") and n.endswith(".jpg")]
        names = [names[i] for i in np.random.default_rng(0).permutation(len(names))[:images]]
        x32 = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names])
    y = np.array([n.split("/")[1] == "FAKE" for n in names], dtype="float32")
    # The seed recipe: images upsampled to 128x128 and stored as float32 in [0, 1] before training.
    x128 = (
        np.stack(
            [np.asarray(Image.fromarray(img).resize((128, 128), Image.Resampling.BILINEAR)) for img in x32]
        ).astype("float32")
        / 255.0
    )
    batch = params.training.batch_size

    def images_per_second(x: np.ndarray, size: int, float_input: bool) -> float:
        model = build_model(
            params.model.architecture,
            image_size=size,
            dropout=params.model.dropout,
            pretrained_weights="none",
            augmentation=params.augmentation,
            mean=[0.5] * 3,
            variance=[0.0625] * 3,
            seed=0,
            spectrum_branch=params.model.spectrum_branch,
        )
        if float_input:  # the seed fed float32 in [0, 1]: same network, float input scaled back to 0..255
            inputs = keras.Input((size, size, 3), dtype="float32")
            model = keras.Model(inputs, model(keras.ops.multiply(inputs, 255.0)))
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up, tracing
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            model.fit(x[: batch * steps], y[: batch * steps], batch_size=batch, epochs=1, verbose=0)
            runs.append(batch * steps / (time.perf_counter() - started))
        return float(np.median(runs))

    seed = images_per_second(x128, 128, True)
    ours = images_per_second(x32, params.data.image_size, False)
    print(
        f"\n| recipe ({params.model.architecture}, batch {batch}, median of 3) | train img/s "
        "| dataset bytes per image |\n|---|---:|---:|"
    )
    print(f"| seed: float32 upsampled to 128x128 | {seed:.0f} | {128 * 128 * 3 * 4} |")
    print(f"| ours: uint8 32x32, scaling in the model | {ours:.0f} | {32 * 32 * 3} |")
    print(f"\nspeed-up x{ours / seed:.1f}; dataset on disk /{128 * 128 * 3 * 4 / (32 * 32 * 3):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("full", "memory", "throughput"))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifake.zip")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params override (full)")
    parser.add_argument("--images", type=int, default=2048, help="throughput: subset size")
    parser.add_argument("--steps", type=int, default=8, help="throughput: batches per timed run")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: not found (pass --data with a CIFAKE zip in the Kaggle layout)")
    if args.what == "full":
        full(args.data, args.overrides)
    elif args.what == "memory":
        memory(args.data)
    else:
        throughput(args.data, args.images, args.steps)


if __name__ == "__main__":
    main()
