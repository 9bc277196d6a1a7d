"""Stage 2, preprocess: decode to uint8 arrays at native resolution, stratified train/validation split.

Output ``data/processed/``: ``{train,val,test}_{images,labels}.npy`` (see stages/shards.py) and
``summary.json``. Images are streamed from the archive into the arrays chunk by chunk, so peak memory does not
grow with the number of images; there is no float copy and no upsampling on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.atomic import atomic_path, read_json, write_json
from core.cli import run_stage, stage_parser
from core.config import Params, SplitParams
from core.errors import DeepGuardError
from core.imaging import to_model_input
from core.labels import CLASS_NAMES, label_of
from core.pipeline import ARCHIVE, INDEX, PROCESSED_DIR, RAW_DIR, SPLIT_SUMMARY, missing_input
from stages.shards import NpyWriter, images_path, labels_path

log = logging.getLogger(__name__)


class SplitError(DeepGuardError):
    """The raw data cannot be split into train and validation with every class in both."""


CHUNK = 2048  # images decoded before each write: bounds memory at ~6 MB of pixels at 32x32
# Warn when one class has fewer than 1/IMBALANCE of the other's train images. Nothing reweights classes, so
# the model learns the majority, and the validation split evaluate picks the threshold on holds a handful.
IMBALANCE = 10


def split_names(names: list[str], params: SplitParams) -> dict[str, list[str]]:
    """Assign archive members to train/val/test: test as given, val a seeded stratified draw from train.

    Args:
        names: Members ``<split>/<CLASS>/<file>``.
        params: Validation fraction and seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; train and val in a seeded shuffled order
        (classes interleaved), test sorted. Each class keeps at least one image in train and one in val.

    Raises:
        SplitError: naming the class and split when a class has fewer than 2 train images.
    """
    by_class: dict[str, list[str]] = {name: [] for name in CLASS_NAMES}
    result: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in sorted(names):
        split, class_name, _ = name.split("/")
        if split == "test":
            result["test"].append(name)
        else:
            by_class.setdefault(class_name, []).append(name)
    rng = np.random.default_rng(params.seed)
    for class_name in sorted(by_class):
        members = by_class[class_name]
        if len(members) < 2:
            # Without one image in each, train's statistics are NaN and training dies far from the cause.
            raise SplitError(
                f"train/{class_name}: {len(members)} image(s); each class needs at least 2 train images, "
                "one for train and one for validation"
            )
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, round(len(members) * params.validation_fraction)))
        result["val"] += [members[i] for i in order[:n_val]]
        result["train"] += [members[i] for i in order[n_val:]]
    for split in ("train", "val"):
        result[split] = [result[split][i] for i in rng.permutation(len(result[split]))]
    return result


def write_split(archive: zipfile.ZipFile, names: list[str], size: int, out_dir: Path, split: str) -> None:
    """Decode ``names`` through the shared preprocessing function into the split's arrays, streaming."""
    with (
        NpyWriter(images_path(out_dir, split), len(names), (size, size, 3), np.uint8) as images,
        NpyWriter(labels_path(out_dir, split), len(names), (), np.uint8) as labels,
    ):
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            pixels = np.stack(
                [to_model_input(Image.open(io.BytesIO(archive.read(name))), size) for name in chunk]
            )
            images.write(pixels)
            labels.write(np.array([label_of(name.split("/")[1]) for name in chunk], dtype=np.uint8))


def run(params: Params) -> dict:
    """Run preprocess in the current workspace.

    Returns:
        The summary (counts per split and class, image size, data hash).
    """
    index = read_json(RAW_DIR / INDEX)
    size = params.data.image_size
    if index["image_size"] != size:
        log.warning(
            "raw images are %dx%d; resizing to %dx%d", index["image_size"], index["image_size"], size, size
        )
    if not (RAW_DIR / ARCHIVE).is_file():
        raise missing_input(RAW_DIR / ARCHIVE)
    with zipfile.ZipFile(RAW_DIR / ARCHIVE) as archive, atomic_path(PROCESSED_DIR) as tmp:
        tmp.mkdir()
        try:
            splits = split_names(archive.namelist(), params.split)
        except SplitError as exc:
            raise SplitError(f"{RAW_DIR / ARCHIVE}: {exc}") from None
        for split, names in splits.items():
            log.info("preprocess: %s: %d images", split, len(names))
            write_split(archive, names, size, tmp, split)
        summary = {
            "image_size": size,
            "data_hash": index["data_hash"],
            "synthetic": index["synthetic"],
            "source": index["source"],
            # Identifies the test set, so register compares champion and challenger on the same images.
            "test_hash": hashlib.sha256("\n".join(splits["test"]).encode()).hexdigest(),
            "counts": {
                split: {cls: sum(1 for n in names if n.split("/")[1] == cls) for cls in CLASS_NAMES}
                for split, names in splits.items()
            },
        }
        write_json(tmp / SPLIT_SUMMARY.name, summary)
    _warn_if_unbalanced(summary["counts"])
    log.info("preprocess done: %s", {split: sum(c.values()) for split, c in summary["counts"].items()})
    return summary


def _warn_if_unbalanced(counts: dict[str, dict[str, int]]) -> None:
    """Say so when the train split is dominated by one class: it trains, but on little of the other."""
    train = {cls: counts["train"][cls] + counts["val"][cls] for cls in CLASS_NAMES}
    few, many = sorted(CLASS_NAMES, key=lambda cls: train[cls])
    if train[few] * IMBALANCE < train[many]:
        log.warning(
            "preprocess: train holds %d %s images and %d %s (1:%d); the model learns mostly %s, and "
            "validation, where evaluate picks the threshold and bands, has %d %s: add %s images to train/%s",
            train[few],
            few,
            train[many],
            many,
            round(train[many] / max(train[few], 1)),
            many,
            counts["val"][few],
            few,
            few,
            few,
        )


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.preprocess``."""
    return run_stage("preprocess", _main, stage_parser("preprocess", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
