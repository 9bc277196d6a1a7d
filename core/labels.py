"""Class names, the label encoding and the decision rule: the only place these facts live."""

from __future__ import annotations

import numpy as np

# Index = label. FAKE (AI-generated) is the positive class, so model outputs are P(FAKE).
CLASS_NAMES: tuple[str, str] = ("REAL", "FAKE")
REAL, FAKE = 0, 1
DEFAULT_THRESHOLD = 0.5


def label_of(class_name: str) -> int:
    """Return the integer label of a class folder name (``REAL`` or ``FAKE``)."""
    return CLASS_NAMES.index(class_name)


def decide(fake_probability: np.ndarray, threshold: float) -> np.ndarray:
    """Turn P(FAKE) into integer labels: FAKE when the probability reaches the threshold."""
    return (np.asarray(fake_probability) >= threshold).astype(np.int64)


def names(labels: np.ndarray) -> list[str]:
    """Map integer labels to class names."""
    return [CLASS_NAMES[int(label)] for label in labels]
