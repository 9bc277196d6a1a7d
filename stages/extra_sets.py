"""Extra evaluation sets (``evaluation.extra_sets``): other photos or generators, scored like uploads.

Each set is a folder or zip with ``REAL/`` and ``FAKE/`` image folders (an optional top folder is allowed),
images of any pixel size in a format the predictor reads (``core.imaging.READ_FORMATS``). Every file is
decoded the way the predictor decodes an upload (``core.imaging.decode_for_model``) and scored with
evaluate's threshold; the results sit beside ``test`` in ``reports/metrics.json``. Sets are checked by
:func:`check` before evaluate scores anything.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import ConfigError, ExtraSetParams
from core.imaging import ImageError, decode_for_model
from core.labels import CLASS_NAMES, label_of
from core.metrics import format_metric, outcome_metrics
from core.modelstore import predict_fake_probability
from stages.shards import load_split
from stages.sources import Member, SourceError, list_labelled, read_each

log = logging.getLogger(__name__)

CHUNK = 512  # images decoded, then scored, at a time: memory stays flat for a set of any size


@dataclass(frozen=True)
class ExtraSet:
    """A checked extra set: its name, where it is, and its image files with their class names."""

    name: str
    path: Path
    members: list[tuple[str, Member]]


def check(sets: list[ExtraSetParams]) -> list[ExtraSet]:
    """List every configured set without reading an image; refuse a missing path or a wrong layout.

    Args:
        sets: ``evaluation.extra_sets``.

    Returns:
        The sets, ready for :func:`score`.

    Raises:
        ConfigError: one line naming the set and its path (relative paths are from the workspace).
    """
    checked = []
    for entry in sets:
        path = Path(entry.path).expanduser()
        try:
            checked.append(ExtraSet(entry.name, path, list_labelled(path)))
        except SourceError as exc:  # a missing path names its near misses, or the folder it is read from
            raise ConfigError(f"evaluation.extra_sets {entry.name!r}: {exc}") from None
    return checked  # two sets of one name are refused with the rest of params.yaml (core.config)


def _pixels_digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).digest()


def seen_in_training(processed_dir: Path) -> frozenset[bytes]:
    """Digests of the pixels of every image the model was fitted or calibrated on (train and val).

    An extra set measures the model on images it has not seen; a team pointing one at photos that are also in
    its training data got inflated numbers without a word. Pixels, not bytes: the same image saved again as
    PNG is still the same image.
    """
    digests: set[bytes] = set()
    for split in ("train", "val"):
        images = load_split(processed_dir, split)[0]
        for start in range(0, len(images), CHUNK * 8):
            digests.update(_pixels_digest(image) for image in np.asarray(images[start : start + CHUNK * 8]))
    return frozenset(digests)


def score(model, extra: ExtraSet, threshold: float, size: int, seen: frozenset[bytes] = frozenset()) -> dict:
    """Score one set as the predictor would score its files.

    A file that does not decode, or is over ``stages.sources.MAX_IMAGE_BYTES`` (never read past it), is
    left out with a warning naming the set and the file: the predictor would refuse it too. So is an image
    whose pixels are those of a training image (``seen``): it would measure memory, not generalisation.

    Args:
        model: The Keras model.
        extra: From :func:`check`.
        threshold: evaluate's threshold.
        size: The model's input side.
        seen: From :func:`seen_in_training`.

    Returns:
        ``{"accuracy", "roc_auc", "count", "fake_called_real"}`` over the images that decoded.

    Raises:
        ConfigError: when no file of a class decodes, naming the set, the class and the first file left out.
    """
    labels: list[int] = []
    probabilities: list[np.ndarray] = []
    left_out: list[tuple[str, str]] = []  # (class name, why)
    in_training: list[tuple[str, str]] = []  # (class name, file): images the model was trained on
    members = extra.members
    for start in range(0, len(members), CHUNK):
        chunk = members[start : start + CHUNK]
        images = []
        for (class_name, member), data in zip(
            chunk, read_each(extra.path, [m for _, m in chunk]), strict=True
        ):
            if isinstance(data, SourceError):  # over the size limit or unreadable; the message names it
                left_out.append((class_name, str(data)))
                continue
            try:
                pixels = decode_for_model(data, size)
            except ImageError as exc:
                left_out.append((class_name, f"{getattr(member, 'filename', member)}: {exc}"))
                continue
            if _pixels_digest(pixels) in seen:
                in_training.append((class_name, f"{getattr(member, 'filename', member)}"))
                continue
            images.append(pixels)
            labels.append(label_of(class_name))
        if images:
            probabilities.append(predict_fake_probability(model, np.stack(images)))
    # check() saw files of both classes by their names; if every file of a class failed to decode, the set
    # is one class (no ROC-AUC, no fakes to miss) and the numbers would be null: refused like an empty class.
    if in_training:
        log.warning(
            "extra set %s: %d files left out, the same pixels as images train or val holds (first: %s): an "
            "extra set measures the model on images it has not seen; remove them from the set or from train",
            extra.name,
            len(in_training),
            in_training[0][1],
        )
    undecoded = [name for name in CLASS_NAMES if label_of(name) not in labels]
    if undecoded and all(class_name != undecoded[0] for class_name, _ in left_out):
        first = next(file for class_name, file in in_training if class_name == undecoded[0])
        raise ConfigError(
            f"evaluation.extra_sets {extra.name!r}: {extra.path}: every image in {undecoded[0]} is also in "
            f"the training data (first: {first}): the set measures nothing the model has not seen; remove "
            "them from the set or from train"
        )
    if undecoded:
        first = next(why for class_name, why in left_out if class_name == undecoded[0])
        raise ConfigError(
            f"evaluation.extra_sets {extra.name!r}: {extra.path}: no image in {', '.join(undecoded)} decodes "
            f"({len(left_out)} files left out; first: {first})"
        )
    if left_out:
        log.warning(
            "extra set %s: %d files left out, not decodable or over the size limit (first: %s)",
            extra.name,
            len(left_out),
            left_out[0][1],
        )
    scores = np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)
    result = outcome_metrics(np.asarray(labels), scores, threshold)
    log.info(
        "extra set %s: %d images, accuracy %s, ROC-AUC %s, fakes called REAL %s",
        extra.name,
        result["count"],
        *(format_metric(result[key]) for key in ("accuracy", "roc_auc", "fake_called_real")),
    )
    return {key: result[key] for key in ("accuracy", "roc_auc", "count", "fake_called_real")}


def log_to_mlflow(results: dict[str, dict]) -> None:
    """Log each set's numbers to the active MLflow run as ``extra_<name>_<metric>``."""
    import mlflow

    mlflow.log_metrics(
        {
            f"extra_{name}_{metric}": value
            for name, result in results.items()
            for metric, value in result.items()
            if value is not None
        }
    )
