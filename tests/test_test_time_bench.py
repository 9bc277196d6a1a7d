"""bench/test_time_bench.py: its views are those the training shift draws, its baseline the served score."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np

from core import layers
from core.config import NO_AUGMENTATION
from stages.architectures import build_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 8


def _bench():
    spec = importlib.util.spec_from_file_location("test_time_bench", REPO / "bench" / "test_time_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_every_shifted_view_is_one_the_training_shift_draws() -> None:
    # RandomShift at 1/8 of an 8-pixel side moves each image by -1, 0 or 1 pixel along each axis, edges
    # mirrored; the bench's nine views must be exactly what it draws, so test-time views match training's.
    image = _images(1, seed=1)
    views = {shift: bench.shifted(image, *shift)[0] for shift in itertools.product((-1, 0, 1), repeat=2)}
    assert len({view.tobytes() for view in views.values()}) == 9
    drawn = layers.RandomShift(1 / SIZE, seed=3)(np.repeat(image, 200, axis=0), training=True)
    drawn = np.asarray(drawn).astype(np.uint8)
    seen = {next(s for s, view in views.items() if np.array_equal(view, one)) for one in drawn}
    assert seen == set(views)


def test_mirror_pair_at_no_shift_is_the_served_flip_averaged_score() -> None:
    images = _images(6, seed=2)
    pixels = images.reshape(-1, 3) / 255.0
    net = build_model(
        "SimpleCNN",
        image_size=SIZE,
        dropout=0.1,
        pretrained_weights="none",
        augmentation=NO_AUGMENTATION,
        mean=pixels.mean(axis=0).tolist(),
        variance=pixels.var(axis=0).tolist(),
        seed=5,
    )
    served = layers.with_temperature(layers.with_flip_averaging(net), 1.0)
    assert bench.bare_net(served) is net
    expected = layers.with_flip_averaging(net).predict(images, verbose=0).reshape(-1)
    views = bench.view_scores(net, images)
    np.testing.assert_allclose(bench.mean_of(views, [(0, 0)]), expected, rtol=0, atol=1e-6)
    alone = bench.mean_of(views, [(0, 0)], mirror=False)
    assert not np.allclose(alone, expected, atol=1e-6), "the mirror image must change the score"


def test_a_missing_workspace_or_model_is_a_one_line_error(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            str(REPO / "bench" / "test_time_bench.py"),
            "--workspace",
            str(tmp_path),
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    no_workspace = run()
    assert no_workspace.returncode == 2
    assert f"--workspace: no {tmp_path / 'data' / 'processed'}" in no_workspace.stderr.splitlines()[-1]
    (tmp_path / "data" / "processed").mkdir(parents=True)
    no_model = run("--models", "models/model.keras", "/nowhere/seed43.keras")
    assert no_model.returncode == 2
    missing = f"{tmp_path / 'models' / 'model.keras'}, /nowhere/seed43.keras"
    assert no_model.stderr.splitlines()[-1].endswith(f"--models: no such file: {missing}")
