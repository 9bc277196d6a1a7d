"""Benchmark: run-to-run spread of the promotion metric (test ROC-AUC) over seeds, and the gate it implies.

Trains the configured architecture with the pipeline's recipe several times on one CIFAKE subset, changing
only the seed, scores each on the same test images, and prints the spread. Two runs of one configuration
differ by noise alone, so the gate's ``promotion.min_improvement`` must sit above their typical difference:
we take 2 x the standard deviation of the difference of two runs (sqrt(2) x the per-run standard deviation),
so a rerun of the same configuration passes the gate by chance about 2 % of the time. The baseline is the
old default 0.0, which such a rerun passes half of the time.

A full-scale run (40 minutes on a CPU) is too long to repeat here, so the script also reports the spread
relative to the error mass, sd / (1 - mean ROC-AUC), and scales it to the ROC-AUC of the full run
(``--full-auc``, measured by ``make bench-full``): the spread of ROC-AUC shrinks as the errors it counts do.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from architectures_bench import load_subset  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from core.config import load_params  # noqa: E402
from core.layers import with_flip_averaging  # noqa: E402
from stages.architectures import build_model  # noqa: E402
from stages.train import _compile  # noqa: E402  the pipeline's optimiser and schedule, not a copy

log = logging.getLogger("bench.gate_noise")


def one_run(
    seed: int, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], epochs: int
) -> float:
    """Train with ``seed`` (initialisation, shuffling, augmentation) and return the test ROC-AUC."""
    params = load_params(REPO / "params.yaml", [f"training.epochs={epochs}"])
    keras.utils.set_random_seed(seed)
    x, y = train
    pixels = x.reshape(-1, 3).astype(np.float32) / 255.0
    model = build_model(
        params.model.architecture,
        image_size=x.shape[1],
        dropout=params.model.dropout,
        pretrained_weights="none",
        augmentation=params.augmentation,
        mean=pixels.mean(axis=0).tolist(),
        variance=pixels.var(axis=0).tolist(),
        seed=seed,
        spectrum_branch=params.model.spectrum_branch,
    )
    _compile(model, params.training, -(-len(y) // params.training.batch_size), epochs)
    model.fit(x, y, batch_size=params.training.batch_size, epochs=epochs, shuffle=True, verbose=0)
    if params.model.test_time_flip:
        model = with_flip_averaging(model)
    scores = model.predict(test[0], batch_size=512, verbose=0)[:, 0]
    return float(roc_auc_score(test[1], scores))


def main() -> None:
    """Parse arguments, train once per seed, print the spread and the gate's minimum it implies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifake.zip")
    # 10,000 images x 4 epochs is ~300 steps: BatchNorm models need a few hundred before they settle.
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=2500, help="CIFAKE's test/ has 5,000 per class")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--full-auc", type=float, default=0.9975, help="test ROC-AUC of the full-scale run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.data.is_file():
        sys.exit(f"bench/gate_noise_bench.py: error: no such archive: {args.data}")

    train = load_subset(args.data, "train", args.train_per_class, seed=1)
    test = load_subset(args.data, "test", args.test_per_class, seed=2)
    aucs = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        aucs.append(one_run(seed, train, test, args.epochs))
        log.info("seed %d: test ROC-AUC %.5f (%.0f s)", seed, aucs[-1], time.perf_counter() - started)

    values = np.asarray(aucs)
    sd = float(values.std(ddof=1))
    gains = [b - a for a, b in itertools.permutations(values, 2)]  # every "rerun" against every "champion"
    threshold = 2 * math.sqrt(2) * sd
    print(
        f"\n{len(train[1])} train / {len(test[1])} test images, {args.epochs} epochs, {args.seeds} seeds: "
        f"test ROC-AUC mean {values.mean():.5f}, sd {sd:.5f}, range {values.min():.5f}-{values.max():.5f} "
        f"(spread {values.max() - values.min():.5f})"
    )
    print(f"per seed: {', '.join(f'{v:.5f}' for v in values)}")
    relative = sd / (1 - values.mean())
    print(f"gate minimum here 2*sqrt(2)*sd = {threshold:.5f}; relative spread sd/(1-auc) = {relative:.3f}")
    print(
        f"scaled to the full run's ROC-AUC {args.full_auc}: sd {relative * (1 - args.full_auc):.6f}, "
        f"gate minimum {2 * math.sqrt(2) * relative * (1 - args.full_auc):.6f}"
    )
    for name, minimum in (("baseline min_improvement 0.0", 0.0), (f"ours {threshold:.5f}", threshold)):
        promoted = sum(gain > 0 and gain >= minimum for gain in gains) / len(gains)
        print(f"{name:34s} same-config reruns promoted by noise: {promoted:.0%} of {len(gains)} pairs")


if __name__ == "__main__":
    main()
