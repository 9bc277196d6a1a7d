"""Matplotlib set-up for headless stages and an atomic PNG save."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run without a display: pods, CI, DVC

import matplotlib.pyplot as plt  # noqa: E402

from core.atomic import atomic_path  # noqa: E402


def save_figure(figure: plt.Figure, path: Path) -> None:
    """Save ``figure`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
