"""Benchmark: proxy training runs, the configured recipe vs candidate changes (net, EMA, smoothing, mixup).

Every candidate trains through ``stages.train.train_model`` (the pipeline's one training path) on the same
CIFAKE subset with the same seeds, either for the same epochs or (``--budget-minutes``) for the same
wall-clock budget, the epochs fitted by the pipeline's own time budget; each is scored on held-out images
(the archive's ``test/``), clean and under every named web degradation of ``core.degrade`` (what the
predictor scores after a re-saved JPEG, a resize, blur, noise). Prints one table: mean over seeds, and
the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from architectures_bench import load_subset  # noqa: E402

from core.config import load_params  # noqa: E402
from core.degrade import DEGRADATIONS, degrade  # noqa: E402
from core.layers import in_float32, with_flip_averaging  # noqa: E402
from core.metrics import outcome_metrics  # noqa: E402
from stages.train import train_model  # noqa: E402

log = logging.getLogger("bench.recipe")
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "cifake.zip"
# What each candidate changes in params.yaml; the baseline is the configured recipe as it is.
CANDIDATES: dict[str, list[str]] = {
    "baseline": [],
    "no_degradations": ["augmentation.degradations={jpeg: 0, resample: 0, blur: 0, noise: 0}"],
    "DeepGuardCNN": ["model.architecture=DeepGuardCNN"],
    "SimpleBatchNormCNN": ["model.architecture=SimpleBatchNormCNN"],
    "DeeperCNN": ["model.architecture=DeeperCNN"],
    "ema": ["training.ema_momentum=0.99"],
    "label_smoothing": ["training.label_smoothing=0.1"],
    "mixup": ["augmentation.mixup_alpha=0.2"],
    "cutmix": ["augmentation.cutmix=0.5"],
    "dropout_0.5": ["model.dropout=0.5"],
    "spectrum": ["model.spectrum_branch=true"],
    "learning_rate_x2": ["training.learning_rate=0.006"],
    "light_degradations": [  # half of each probability of the former default
        "augmentation.degradations={jpeg: 0.15, resample: 0.15, blur: 0.075, noise: 0.075}"
    ],
    "former_degradations": [  # the default until 2026-12-04: more JPEG and noise
        "augmentation.degradations={jpeg: 0.3, resample: 0.3, blur: 0.15, noise: 0.15}"
    ],
    "laundering_pair_only": [  # resample and blur as the default has them; no JPEG, no noise
        "augmentation.degradations={jpeg: 0, resample: 0.3, blur: 0.15, noise: 0}"
    ],
}
# Issue 12's laundering target: at most 10 % of fakes called REAL after either of these.
LAUNDERING = ("blur_0.6", "upscale_4x")


@dataclass(frozen=True)
class Score:
    """One proxy run's numbers."""

    accuracy: float
    roc_auc: float
    degraded_accuracy: float  # mean over the named degradations other than clean
    degraded_roc_auc: float
    laundered: float  # the higher share of fakes called REAL after the LAUNDERING degradations
    images_per_second: float
    epochs: int  # trained (the budget's choice with --budget-minutes)


class _EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time (the first includes tracing and is left out of the rate)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def _scores(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Accuracy, ROC-AUC and the share of fakes called REAL, at threshold 0.5 (as evaluate reports them)."""
    outcome = outcome_metrics(labels, model.predict(images, batch_size=512, verbose=0)[:, 0], 0.5)
    return outcome["accuracy"], outcome["roc_auc"], outcome["fake_called_real"]


def run_one(
    overrides: list[str],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    held_out: dict[str, np.ndarray],
    labels: np.ndarray,
) -> Score:
    """Train one candidate with one seed and score it clean and degraded."""
    params = load_params(REPO / "params.yaml", overrides)
    pixels = train[0].reshape(-1, 3).astype(np.float64) / 255.0
    timer = _EpochTimer()
    trained = train_model(
        params,
        train,
        val,
        mean=pixels.mean(axis=0).tolist(),
        variance=pixels.var(axis=0).tolist(),
        callbacks=[timer],
    )
    model = in_float32(trained.model)  # scored as the pipeline saves it, whatever precision it trained in
    model = with_flip_averaging(model) if params.model.test_time_flip else model
    clean = _scores(model, held_out["clean"], labels)
    degraded = {name: _scores(model, images, labels) for name, images in held_out.items() if name != "clean"}
    seconds = timer.seconds[1:] or timer.seconds
    return Score(
        accuracy=clean[0],
        roc_auc=clean[1],
        degraded_accuracy=float(np.mean([d[0] for d in degraded.values()])),
        degraded_roc_auc=float(np.mean([d[1] for d in degraded.values()])),
        laundered=max(degraded[name][2] for name in LAUNDERING),
        images_per_second=len(seconds) * len(train[1]) / sum(seconds),
        epochs=len(timer.seconds),
    )


def main() -> None:
    """Parse arguments, run every candidate with every seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAKE zip (train|test/REAL|FAKE)")
    parser.add_argument("--train-per-class", type=int, default=2500)
    parser.add_argument("--val-per-class", type=int, default=500, help="validation, from the zip's train/")
    parser.add_argument("--test-per-class", type=int, default=1000, help="held out, from the zip's test/")
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs of every run; with --budget-minutes the most it may fit"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="train each run for this wall-clock budget (training.time_budget_minutes), not fixed epochs",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: params.yaml training.batch_size"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.data.is_file():
        sys.exit(f"bench/recipe_bench.py: error: no such archive: {args.data}")

    x, y = load_subset(args.data, "train", args.train_per_class + args.val_per_class, seed=1)
    n_val = 2 * args.val_per_class
    train, val = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
    test_x, test_y = load_subset(args.data, "test", args.test_per_class, seed=2)
    started = time.perf_counter()
    held_out = {name: degrade(test_x, name, seed=0) for name in DEGRADATIONS}
    log.info(
        "%d train / %d val / %d held-out images, %d degradations in %.0f s; load average %s",
        len(train[1]),
        len(val[1]),
        len(test_y),
        len(held_out),
        time.perf_counter() - started,
        " ".join(f"{v:.1f}" for v in os.getloadavg()),
    )
    order = ["baseline"] + [c for c in args.candidates if c != "baseline"]
    results: dict[str, list[Score]] = {}
    for candidate in order:
        for seed in args.seeds:
            overrides = [
                *CANDIDATES[candidate],
                f"training.time_budget_minutes={args.budget_minutes or 'null'}",
                f"training.epochs={args.epochs}",
                f"training.seed={seed}",
                *([f"training.batch_size={args.batch_size}"] if args.batch_size else []),
            ]
            log.info("%s, seed %d (load average %.1f)", candidate, seed, os.getloadavg()[0])
            results.setdefault(candidate, []).append(run_one(overrides, train, val, held_out, test_y))
            log.info("%s seed %d: %s", candidate, seed, results[candidate][-1])

    def mean(candidate: str, field: str) -> float:
        return float(np.mean([getattr(s, field) for s in results[candidate]]))

    length = (
        f"{args.budget_minutes:g}-minute budget (at most {args.epochs} epochs)"
        if args.budget_minutes
        else (f"{args.epochs} epochs")
    )
    print(
        f"\n{len(train[1])} train / {len(test_y)} held-out images, {length}, batch "
        f"{args.batch_size or 'from params.yaml'}, seeds "
        f"{' '.join(map(str, args.seeds))}; mean over seeds (min-max AUC); degraded = mean over "
        f"{len(held_out) - 1} web degradations; laundered = the higher share of fakes called REAL after "
        f"{' / '.join(LAUNDERING)}; x = ratio to baseline; load average now "
        f"{os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'candidate':18s} {'acc':>7s} {'auc':>7s} {'auc range':>15s} {'deg acc':>8s} {'deg auc':>8s} "
        f"{'x deg auc':>9s} {'laundered':>9s} {'img/s':>6s} {'x img/s':>7s} {'epochs':>6s}"
    )
    print(header)
    print("-" * len(header))
    for candidate in order:
        aucs = [s.roc_auc for s in results[candidate]]
        print(
            f"{candidate:18s} {mean(candidate, 'accuracy'):>7.4f} {mean(candidate, 'roc_auc'):>7.4f} "
            f"{min(aucs):>7.4f}-{max(aucs):.4f} {mean(candidate, 'degraded_accuracy'):>8.4f} "
            f"{mean(candidate, 'degraded_roc_auc'):>8.4f} "
            f"{mean(candidate, 'degraded_roc_auc') / mean('baseline', 'degraded_roc_auc'):>9.3f} "
            f"{mean(candidate, 'laundered'):>9.1%} "
            f"{mean(candidate, 'images_per_second'):>6.0f} "
            f"{mean(candidate, 'images_per_second') / mean('baseline', 'images_per_second'):>7.2f} "
            f"{mean(candidate, 'epochs'):>6.1f}"
        )


if __name__ == "__main__":
    main()
