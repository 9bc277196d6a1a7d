"""Benchmark: the cost of the ``translate`` augmentation per training step, Keras' layer against ours.

Times ``train_on_batch`` of the default network (params.yaml's recipe, random 32x32 images) three ways on
the active Keras backend (``KERAS_BACKEND``): without translation, with Keras' ``RandomTranslation`` (nearest
pixels, mirrored edges: what the model used before) and with ``core.layers.RandomShift`` (the same transform,
what it uses now). Prints the median milliseconds per step of each over ``--rounds`` rounds and what each
translation adds to a step. Keras' layer resamples each image in its own Python call on torch and gathers
per pixel on JAX: the likeliest reason a GPU trained at ~2,000 img/s (docs/benchmarks.md: GPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    """Time the three variants, interleaved round by round, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="images per step (params-gpu.yaml's batch)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from core.config import load_params
    from stages import architectures

    params = load_params(REPO / "params.yaml")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(args.batch) % 2).astype("float32")

    def keras_translation(factor: float, seed: int, name: str) -> keras.layers.Layer:
        return keras.layers.RandomTranslation(
            factor, factor, fill_mode="reflect", interpolation="nearest", seed=seed, name=name
        )

    variants = {
        "no translation": ("translate", 0.0, architectures.RandomShift),
        "Keras RandomTranslation": ("translate", params.augmentation.translate, keras_translation),
        "RandomShift (ours)": ("translate", params.augmentation.translate, architectures.RandomShift),
    }
    ours = architectures.RandomShift
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (key, value, layer) in variants.items():
            architectures.RandomShift = layer
            model = architectures.build_model(
                params.model.architecture,
                image_size=32,
                dropout=params.model.dropout,
                pretrained_weights="none",
                augmentation=params.augmentation.model_copy(update={key: value}),
                mean=[0.5] * 3,
                variance=[0.05] * 3,
                seed=1,
            )
            architectures.RandomShift = ours
            model.compile(optimizer="adam", loss="binary_crossentropy")
            for _ in range(3):  # tracing and the first allocations
                model.train_on_batch(images, labels)
            started = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(images, labels)
            timings[name].append(1000 * (time.perf_counter() - started) / args.steps)
    base = statistics.median(timings["no translation"])
    print(f"{keras.backend.backend()} backend, {params.model.architecture}, batch {args.batch}:")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:<24} {median:8.1f} ms/step  (+{median - base:.1f} ms for the translation)")
    keras_ms = statistics.median(timings["Keras RandomTranslation"]) - base
    ours_ms = statistics.median(timings["RandomShift (ours)"]) - base
    print(f"  translation cost, Keras' / ours: {keras_ms:.1f} / {ours_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
