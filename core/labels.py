"""Class names, the label encoding and the decision rule: the only place these facts live."""

from __future__ import annotations

import numpy as np

# Index = label. FAKE (AI-generated) is the positive class, so model outputs are P(FAKE).
CLASS_NAMES: tuple[str, str] = ("REAL", "FAKE")
REAL, FAKE = 0, 1
# The three-way verdict: a decided class name, or UNCERTAIN between the two band edges.
UNCERTAIN = "UNCERTAIN"
VERDICTS: tuple[str, str, str] = (*CLASS_NAMES, UNCERTAIN)
# The edges of an empty band, one no edge made precise enough on validation: outside [0, 1], so no probability
# reaches them and the band decides nothing. Not 0.0 and 1.0: a saturated calibrated float32 score is exactly
# 0.0 or 1.0, and would be decided. An edge pushed further out (serving.domain's margin) stays empty.
EMPTY_REAL_BAND = -1.0
EMPTY_FAKE_BAND = 2.0


def label_of(class_name: str) -> int:
    """Return the integer label of a class folder name (``REAL`` or ``FAKE``)."""
    return CLASS_NAMES.index(class_name)


def decide(fake_probability: np.ndarray, threshold: float) -> np.ndarray:
    """Turn P(FAKE) into integer labels: FAKE when the probability reaches the threshold."""
    return (np.asarray(fake_probability) >= threshold).astype(np.int64)


def names(labels: np.ndarray) -> list[str]:
    """Map integer labels to class names."""
    return [CLASS_NAMES[int(label)] for label in labels]


def band_edge(edge: float) -> float | None:
    """A band edge as reports show it: None for an empty band (an edge outside [0, 1]), else the edge."""
    return float(edge) if 0.0 <= edge <= 1.0 else None


def band_edge_text(edge: float) -> str:
    """A band edge for a reader (log line, model card): four places, or that the band is empty."""
    shown = band_edge(edge)
    return "none (empty band: decides nothing)" if shown is None else f"{shown:.4f}"


def verdicts(fake_probability: np.ndarray, real_below: float, fake_above: float) -> list[str]:
    """Three-way verdict: FAKE at or above ``fake_above``, REAL at or below ``real_below``, else UNCERTAIN.

    The band edges are chosen on validation by evaluate (``real_below <= threshold <= fake_above``); with
    both equal to the threshold there is no uncertain band and the verdict is the binary label. An empty
    band's edge (``EMPTY_REAL_BAND``, ``EMPTY_FAKE_BAND``) lies outside [0, 1]: that side decides nothing.
    """
    p = np.asarray(fake_probability)
    out = np.full(p.shape, UNCERTAIN, dtype=object)
    out[p <= real_below] = CLASS_NAMES[REAL]
    out[p >= fake_above] = CLASS_NAMES[FAKE]
    return [str(v) for v in out.reshape(-1)]
