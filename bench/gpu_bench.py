"""Benchmark: the default recipe on one GPU with mixed precision: time to the accuracy target, images/s.

Trains through ``stages.train.train_model`` (the pipeline's one training path) on the archive's whole
``train/`` split with params.yaml plus the GPU profile (``params-gpu.yaml``: batch size, epochs, mixed
precision), validating on the archive's ``test/`` split after every epoch. Prints the wall time until the
held-out accuracy (threshold 0.5, no flip averaging) first reaches the target, and the training throughput.
Without a GPU visible to Keras it says so and exits 0 (``--cpu`` trains on the CPU anyway: a check of the
script, not a GPU figure). Any Keras backend: TensorFlow reads ``tf.data``, JAX and torch the worker processes
of ``stages.augment.batch_stream``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

log = logging.getLogger("bench.gpu")
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "cifake.zip"
TARGET = 0.985


def main() -> int:
    """Parse arguments; without a GPU report that and return 0, else train and print the figures."""
    from core.cli import add_overrides_argument

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAKE zip (train|test/REAL|FAKE)")
    parser.add_argument("--profile", type=Path, default=REPO / "params-gpu.yaml")
    parser.add_argument("--target", type=float, default=TARGET, help="held-out accuracy to reach")
    parser.add_argument("--per-class", type=int, default=10**9, help="cap images per class and split")
    add_overrides_argument(parser)  # applied after the profile
    parser.add_argument("--cpu", action="store_true", help="without a GPU, train on the CPU anyway")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import keras

    from stages.train import gpu_count

    gpus, backend = gpu_count(), keras.backend.backend()
    if not gpus and not args.cpu:
        print(f"bench/gpu_bench.py: no GPU visible to Keras ({backend} backend): nothing to measure")
        return 0
    if not args.data.is_file():
        print(f"bench/gpu_bench.py: error: no such archive: {args.data}", file=sys.stderr)
        return 2

    import numpy as np
    from architectures_bench import load_subset

    from core.config import load_params
    from stages.train import train_model

    params = load_params(REPO / "params.yaml", args.overrides, profile=args.profile)
    train = load_subset(args.data, "train", args.per_class, seed=1)
    held_out = load_subset(args.data, "test", args.per_class, seed=2)
    pixels = train[0].reshape(-1, 3).astype(np.float64) / 255.0

    class TimeToTarget(keras.callbacks.Callback):
        """Wall time from the start of fit to the first epoch whose held-out accuracy reaches the target."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started, self.reached, self.epoch_seconds = time.perf_counter(), None, []
            self._epoch = self.started

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._epoch = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            self.epoch_seconds.append(now - self._epoch)
            if self.reached is None and (logs or {}).get("val_accuracy", 0.0) >= args.target:
                self.reached = (epoch + 1, now - self.started)
                self.model.stop_training = True

    timer = TimeToTarget()
    log.info(
        "%s on %d GPU(s), %s backend, %d train / %d held-out images, batch %d, up to %d epochs, precision %s",
        params.model.architecture,
        gpus,
        backend,
        len(train[1]),
        len(held_out[1]),
        params.training.batch_size,
        params.training.epochs,
        params.training.mixed_precision,
    )
    trained = train_model(
        params,
        train,
        held_out,
        mean=pixels.mean(axis=0).tolist(),
        variance=pixels.var(axis=0).tolist(),
        callbacks=[timer],
        verbose=2,
    )
    steady = timer.epoch_seconds[1:] or timer.epoch_seconds  # the first epoch also compiles
    rate = len(steady) * len(train[1]) / sum(steady)
    best = max(trained.history["val_accuracy"])
    accuracies = " ".join(f"{value:.4f}" for value in trained.history["val_accuracy"])
    print(f"{params.model.architecture}, {backend} backend, {gpus} GPU(s); held-out accuracy by epoch:")
    print(accuracies)
    if timer.reached:
        epoch, seconds = timer.reached
        print(f"target {args.target:.3f} reached at epoch {epoch} after {seconds:.1f} s; {rate:.0f} img/s")
    else:
        epochs = len(timer.epoch_seconds)
        print(f"target {args.target:.3f} not reached in {epochs} epochs (best {best:.4f}); {rate:.0f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
