"""Extra evaluation sets (``evaluation.extra_sets``): other photos or generators, scored like uploads.

Each set is a folder or zip with ``REAL/`` and ``FAKE/`` image folders (an optional top folder is allowed),
images of any pixel size in a format the predictor reads (``core.imaging.READ_FORMATS``). Every file is
decoded the way the predictor decodes an upload (``core.imaging.decode_for_model``) and scored with
evaluate's threshold; the results sit beside ``test`` in ``reports/metrics.json``. Sets are checked by
:func:`check` before evaluate scores anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import ConfigError, ExtraSetParams
from core.imaging import ImageError, decode_for_model
from core.labels import CLASS_NAMES, label_of
from core.metrics import format_metric, outcome_metrics
from core.modelstore import predict_fake_probability
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


def score(model, extra: ExtraSet, threshold: float, size: int) -> dict:
    """Score one set as the predictor would score its files.

    A file that does not decode, or is over ``stages.sources.MAX_IMAGE_BYTES`` (never read past it), is
    left out with a warning naming the set and the file: the predictor would refuse it too.

    Args:
        model: The Keras model.
        extra: From :func:`check`.
        threshold: evaluate's threshold.
        size: The model's input side.

    Returns:
        ``{"accuracy", "roc_auc", "count", "fake_called_real"}`` over the images that decoded.

    Raises:
        ConfigError: when no file of a class decodes, naming the set, the class and the first file left out.
    """
    labels: list[int] = []
    probabilities: list[np.ndarray] = []
    left_out: list[tuple[str, str]] = []  # (class name, why)
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
                images.append(decode_for_model(data, size))
            except ImageError as exc:
                left_out.append((class_name, f"{getattr(member, 'filename', member)}: {exc}"))
                continue
            labels.append(label_of(class_name))
        if images:
            probabilities.append(predict_fake_probability(model, np.stack(images)))
    # check() saw files of both classes by their names; if every file of a class failed to decode, the set
    # is one class (no ROC-AUC, no fakes to miss) and the numbers would be null: refused like an empty class.
    undecoded = [name for name in CLASS_NAMES if label_of(name) not in labels]
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
