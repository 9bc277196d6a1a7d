"""Benchmark: does more inference compute buy clean accuracy? Shifted views and ensembles of trained models.

Scores a workspace's validation and test splits (``data/processed``, as evaluate reads them) with one or more
trained models (``models/model.keras`` of pipeline runs, e.g. copies kept from runs with other seeds):

- baseline: the first model as served (its net on each image and its mirror image, calibrated);
- the first model's net on the image alone, and on the mirror pair at whole-pixel shifts: 1 px left and
  right (6 views), 1 px along each axis (10), every shift of at most 1 px (18); edges mirrored as the
  training shift mirrors them (``core.layers.RandomShift``);
- the mean served P(FAKE) of every combination of two or more of the models (an ensemble).

Each way gets its threshold from validation as evaluate chooses it (``evaluation.threshold_metric``) and is
measured on test. The script prints each way's accuracy and ROC-AUC beside the baseline's, the differences,
and its inference compute relative to the baseline (forward passes per image).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import numpy as np  # noqa: E402

EVERY_SHIFT = list(itertools.product((-1, 0, 1), repeat=2))  # (rows, columns): every shift of at most 1 px
SHIFTS = {  # name -> the (rows, columns) shifts whose mirror pairs are averaged
    "mirror pair, shifts of 1 px left and right": [(0, 0), (0, -1), (0, 1)],
    "mirror pair, shifts of 1 px along each axis": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    "mirror pair, every shift of at most 1 px": EVERY_SHIFT,
}


def shifted(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """``images`` (N, H, W, C) moved down by ``rows`` and right by ``columns`` pixels, the edge mirrored
    (``d c b a | a b c d``, as ``core.layers.RandomShift`` pads in training)."""
    reach = max(abs(rows), abs(columns))
    if reach == 0:
        return images
    padded = np.pad(images, ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="symmetric")
    height, width = images.shape[1:3]
    return padded[:, reach - rows : reach - rows + height, reach - columns : reach - columns + width]


def view_scores(net, images: np.ndarray) -> dict[tuple[int, int, bool], np.ndarray]:
    """P(FAKE) of ``net`` for every view the ways average, each scored once: ``(rows, columns, mirrored)``."""
    from core.modelstore import predict_fake_probability

    scores = {}
    for rows, columns in EVERY_SHIFT:
        view = shifted(images, rows, columns)
        scores[rows, columns, False] = predict_fake_probability(net, view)
        scores[rows, columns, True] = predict_fake_probability(net, view[:, :, ::-1])
    return scores


def mean_of(
    scores: dict[tuple[int, int, bool], np.ndarray], shifts: list[tuple[int, int]], mirror: bool = True
) -> np.ndarray:
    """The mean score over ``shifts`` of the image (and of its mirror image, with ``mirror``)."""
    flips = (False, True) if mirror else (False,)
    return np.mean([scores[rows, columns, flip] for rows, columns in shifts for flip in flips], axis=0)


def bare_net(model):
    """The network inside a served model: below its calibration and its flip-averaging wrappers."""
    import keras

    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return bare_net(inner[0]) if inner else model


def main() -> int:
    """Parse arguments, score every way, print the table against the baseline."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workspace", type=Path, default=REPO, help="a workspace after preprocess (default: .)"
    )
    parser.add_argument(
        "--models",
        type=Path,
        nargs="+",
        default=[Path("models/model.keras")],
        help="trained .keras files, relative to the workspace or absolute; the first is the baseline",
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    processed = args.workspace / "data" / "processed"
    paths = [path if path.is_absolute() else args.workspace / path for path in args.models]
    if not processed.is_dir():
        parser.error(f"--workspace: no {processed}: run the pipeline there up to preprocess first")
    if missing := [str(path) for path in paths if not path.is_file()]:
        parser.error(f"--models: no such file: {', '.join(missing)}")

    from core.config import load_params
    from core.metrics import classification_metrics
    from core.modelstore import load_keras, predict_fake_probability
    from stages.evaluate import choose_threshold
    from stages.shards import load_split

    metric = load_params(args.params).evaluation.threshold_metric
    val_x, val_y = (np.asarray(a) for a in load_split(processed, "val"))
    test_x, test_y = (np.asarray(a) for a in load_split(processed, "test"))
    models = [load_keras(path) for path in paths]
    served = [(predict_fake_probability(m, val_x), predict_fake_probability(m, test_x)) for m in models]
    net = bare_net(models[0])

    ways: list[tuple[str, float, tuple[np.ndarray, np.ndarray]]] = [("served (baseline)", 1.0, served[0])]
    views = [view_scores(net, x) for x in (val_x, test_x)]
    ways.append(("the net alone, no mirror", 0.5, tuple(mean_of(v, [(0, 0)], mirror=False) for v in views)))
    for name, shifts in SHIFTS.items():
        ways.append((name, len(shifts), tuple(mean_of(v, shifts) for v in views)))
    for size in range(2, len(models) + 1):
        for combo in itertools.combinations(range(len(models)), size):
            scores = tuple(np.mean([served[i][split] for i in combo], axis=0) for split in (0, 1))
            ways.append((f"ensemble of models {'+'.join(str(i + 1) for i in combo)}", float(size), scores))

    print(f"{len(val_y)} validation, {len(test_y)} test images; models: {', '.join(map(str, args.models))}")
    header = ("compute", "val acc", "test acc", "ROC-AUC", "Δ acc", "Δ AUC")
    print(f"{'way':46s} " + " ".join(f"{h:>8s}" for h in header))
    base = None
    for name, compute, (val_p, test_p) in ways:
        threshold = choose_threshold(val_y, val_p, metric)
        val = classification_metrics(val_y, val_p, threshold)
        test = classification_metrics(test_y, test_p, threshold)
        base = base or test
        figures = (val["accuracy"], test["accuracy"], test["roc_auc"])
        changes = (test["accuracy"] - base["accuracy"], test["roc_auc"] - base["roc_auc"])
        print(
            f"{name:46s} {compute:7.1f}x "
            + " ".join(f"{f:8.4f}" for f in figures)
            + " "
            + " ".join(f"{c:+8.4f}" for c in changes)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
