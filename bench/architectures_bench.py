"""Benchmark: train every architecture briefly on a CIFAKE subset; compare params, img/s, accuracy, AUC."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from core.config import NO_AUGMENTATION, load_params  # noqa: E402
from core.imaging import decode_for_model  # noqa: E402
from core.labels import CLASS_NAMES, decide, label_of  # noqa: E402
from stages.architectures import ARCHITECTURES, build_model  # noqa: E402

log = logging.getLogger("bench.architectures")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifake.zip"
TRANSFER = {"EfficientNetB0Transfer", "XceptionTransfer"}


@dataclass(frozen=True)
class Result:
    """One architecture's numbers."""

    architecture: str
    params: int
    train_images_per_s: float
    val_accuracy: float
    val_roc_auc: float


class _EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def load_subset(archive: Path, split: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode a seeded random ``per_class`` images of each class of ``split`` from a CIFAKE zip."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    with zipfile.ZipFile(archive) as zf:
        for class_name in CLASS_NAMES:
            prefix = f"{split}/{class_name}/"
            names = sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))
            for name in rng.choice(names, size=min(per_class, len(names)), replace=False):
                images.append(decode_for_model(zf.read(name), 32))
                labels.append(label_of(class_name))
    order = rng.permutation(len(labels))
    return np.stack(images)[order], np.asarray(labels, dtype=np.float32)[order]


def bench_one(
    architecture: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> Result:
    """Train ``architecture`` with the pipeline's recipe (AdamW, warm-up + cosine decay) and score it."""
    x, y = train
    pixels = x.reshape(-1, 3).astype(np.float32) / 255.0
    model = build_model(
        architecture,
        image_size=x.shape[1],
        dropout=0.2,
        pretrained_weights="none",
        augmentation=NO_AUGMENTATION.model_copy(update={"horizontal_flip": True}),
        mean=pixels.mean(axis=0).tolist(),
        variance=pixels.var(axis=0).tolist(),
        seed=42,
    )
    steps = epochs * -(-len(y) // batch_size)
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.1, steps - warmup, warmup_target=learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss="binary_crossentropy")
    timer = _EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    # The first epoch includes tracing and XLA compilation: leave it out of the throughput when we can.
    seconds = timer.seconds[1:] or timer.seconds
    scores = model.predict(val[0], batch_size=512, verbose=0)[:, 0]
    return Result(
        architecture=architecture,
        params=model.count_params(),
        train_images_per_s=len(seconds) * len(y) / sum(seconds),
        val_accuracy=float(np.mean(decide(scores, 0.5) == val[1])),
        val_roc_auc=float(roc_auc_score(val[1], scores)),
    )


def main() -> None:
    """Parse arguments, train each architecture, print the table with ratios to the default."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAKE zip (train|test/REAL|FAKE)")
    parser.add_argument("--train-per-class", type=int, default=10000)
    parser.add_argument("--val-per-class", type=int, default=1000, help="drawn from the zip's test/ split")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.data.is_file():
        sys.exit(f"bench/architectures_bench.py: error: no such archive: {args.data}")

    keras.utils.set_random_seed(0)
    train = load_subset(args.data, "train", args.train_per_class, seed=1)
    val = load_subset(args.data, "test", args.val_per_class, seed=2)
    log.info("decoded %d train and %d held-out images from %s", len(train[1]), len(val[1]), args.data)
    default = load_params(Path(__file__).resolve().parents[1] / "params.yaml").model.architecture
    order = [default] + [a for a in args.architectures if a != default]
    results = []
    for architecture in order:
        log.info("training %s for %d epochs", architecture, args.epochs)
        results.append(bench_one(architecture, train, val, args.epochs, args.batch_size, args.learning_rate))
        log.info("%s", results[-1])

    base = results[0]
    print(
        f"\n{len(train[1])} train / {len(val[1])} held-out images (zip test/), {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.learning_rate}; ratios relative to {base.architecture}"
    )
    header = (
        f"{'architecture':34s} {'params':>10s} {'img/s':>7s} {'x':>5s} {'acc':>7s} {'auc':>7s} {'x auc':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        label = r.architecture + (" (random init)" if r.architecture in TRANSFER else "")
        print(
            f"{label:34s} {r.params:>10,d} {r.train_images_per_s:>7.0f} "
            f"{r.train_images_per_s / base.train_images_per_s:>5.2f} {r.val_accuracy:>7.4f} "
            f"{r.val_roc_auc:>7.4f} {r.val_roc_auc / base.val_roc_auc:>6.3f}"
        )


if __name__ == "__main__":
    main()
