"""What a person sees first: the data source and the archive beside the checkout, and progress with an ETA."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages import train

REPO = Path(__file__).resolve().parents[1]


def _locate(checkout: Path, **env: str) -> list[str]:
    """Run ``python -m stages.ingest --locate`` in ``checkout`` with no credentials; its stdout lines."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DEEPGUARD_"))}
    clean.update(PYTHONPATH=str(REPO), KAGGLE_CONFIG_DIR=str(checkout / ".no-kaggle"), **env)
    result = subprocess.run(
        [sys.executable, "-m", "stages.ingest", "--locate", "--params", str(REPO / "params.yaml")],
        cwd=checkout,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def _checkout_beside_shared(tmp_path: Path) -> Path:
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (data / "cifake.zip").write_bytes(b"")  # only its presence matters to --locate
    checkout = tmp_path / "deepguard"
    checkout.mkdir()
    return checkout


def test_newcomer_with_shared_beside_is_offered_the_archive_in_the_first_lines(tmp_path: Path) -> None:
    lines = _locate(_checkout_beside_shared(tmp_path))
    first = "\n".join(lines[:3])
    assert "data source: synthetic" in first
    assert "SYNTHETIC DATA" in first
    assert " stages.ingest: " in first and "__main__" not in first  # the logger is named after the stage
    assert "run: DEEPGUARD_DATA=../shared/data/cifake.zip make run" in first


def test_no_archive_offered_when_none_is_beside_or_one_is_chosen(tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    lines = _locate(alone)
    assert "data source: synthetic" in lines[0]
    assert not any("DEEPGUARD_DATA=" in line for line in lines)

    checkout = _checkout_beside_shared(tmp_path)
    lines = _locate(checkout, DEEPGUARD_DATA="../shared/data/cifake.zip")
    assert "data source: local" in lines[0]
    assert not any("make run" in line for line in lines)


def test_epoch_progress_says_how_long_is_left(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    clock = iter([0.0, 130.0])  # train begins; the first of 18 epochs ends 2m10s later
    monkeypatch.setattr(train.time, "monotonic", lambda: next(clock))
    callback = train.epoch_progress_logger()
    callback.set_params({"epochs": 18, "steps": 625})
    with caplog.at_level(logging.INFO, logger="stages.train"):
        callback.on_train_begin()
        callback.on_epoch_end(0, {"loss": 0.5, "val_auc": 0.91, "learning_rate": 0.003})
    assert caplog.messages == ["epoch 1/18: loss 0.5000 val_auc 0.9100 | 2m10s elapsed, about 36m50s left"]


def test_fit_logs_one_progress_line_per_epoch(caplog) -> None:
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
    with caplog.at_level(logging.INFO, logger="stages.train"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[train.epoch_progress_logger()])
    assert [m.split(":")[0] for m in caplog.messages] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert caplog.messages[-1].endswith("about 0s left")
    assert "loss " in caplog.messages[0]
