"""Unit tier: the MLflow run a stage continues (core/tracking.py), on a throwaway sqlite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from core import tracking
from core.config import MlflowParams


def test_a_run_is_continued_in_its_experiment_after_mlflow_experiment_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With mlflow.experiment changed after train, DVC reruns register alone: MLflow refused to resume the
    training run from the new experiment, and the stage logged to a bare new run, warning that the training
    run was "not in this tracking store" (the version lost the run with its params and metrics)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = tracking.setup(MlflowParams(experiment="first", model_name="deepguard"))
    with tracking.stage_run("train", first.experiment_id) as training:
        mlflow.log_param("trained", "yes")
    second = tracking.setup(MlflowParams(experiment="second", model_name="deepguard"))
    with tracking.stage_run("register", second.experiment_id, training.info.run_id) as continued:
        mlflow.log_metric("registered", 1.0)
    assert continued.info.run_id == training.info.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_run(training.info.run_id).data.metrics["registered"] == 1.0
    assert client.search_runs([second.experiment_id]) == []


def test_a_run_the_store_does_not_know_is_replaced_by_a_new_one_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracking.setup(MlflowParams(experiment="deepguard", model_name="deepguard"))
    with tracking.stage_run("evaluate", experiment.experiment_id, "0" * 32) as run:
        pass
    assert run.info.run_id != "0" * 32
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.tags["continued_from_run"] == "0" * 32
