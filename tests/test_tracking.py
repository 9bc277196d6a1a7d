"""Unit tier: the MLflow run a stage continues, a busy registry retried (core/tracking.py), on sqlite."""

from __future__ import annotations

import os
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


def test_a_registry_that_is_busy_is_retried_not_reported_as_no_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy said "no champion for model 'deepguard' in the registry: database is locked" and exited 2, which
    the DAG fails at once: a store busy for a moment (here another process's lock on the real sqlite file)
    is worth the task's retries (exit 75), as a 5xx of the tracking server is."""
    import sqlite3

    from core.errors import TransientError
    from deploy.manifest import DeployError
    from deploy.registry import read_champion

    for name in [n for n in os.environ if n.startswith(("DAGSHUB_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(DeployError) as raised:  # no champion: the same on every try
        read_champion("deepguard", None)
    assert str(raised.value).startswith("no champion for model 'deepguard' in the registry: ")
    assert not isinstance(raised.value, TransientError)
    lock = sqlite3.connect(database, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TransientError) as raised:
            read_champion("deepguard", None)
    finally:
        lock.close()
    assert str(raised.value).startswith("the registry failed reading the champion of model 'deepguard': ")
    assert "database is locked" in str(raised.value)


def test_register_does_not_promote_unopposed_while_the_registry_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """register read a failing or busy registry (here a real sqlite store another process has locked) as
    "no champion yet", so the gate promoted the new model without comparing it to the champion it replaced."""
    import sqlite3

    from core.errors import TransientError
    from stages import register

    database = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}", registry_uri=f"sqlite:///{database}")
    client.create_registered_model("deepguard")
    assert register._champion_score(client, "deepguard", "accuracy", "split", None).version is None
    lock = sqlite3.connect(database, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(
            TransientError, match="the registry failed reading the champion of model 'deepguard'"
        ):
            register._champion_score(client, "deepguard", "accuracy", "split", None)
    finally:
        lock.close()


def test_monitor_does_not_say_run_the_pipeline_while_the_registry_is_busy(tmp_path: Path) -> None:
    """monitor answered a busy registry (a real sqlite store another process has locked) with "no champion
    ... run the pipeline first" and exit 2: untrue, and the scheduled check was not retried."""
    import sqlite3

    from core.errors import TransientError
    from stages.monitor import MonitorError, champion_reference

    database = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}", registry_uri=f"sqlite:///{database}")
    client.create_registered_model("deepguard")
    with pytest.raises(MonitorError, match="run the pipeline first"):
        champion_reference(client, "deepguard")
    lock = sqlite3.connect(database, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(
            TransientError, match="the registry failed reading the champion of model 'deepguard'"
        ):
            champion_reference(client, "deepguard")
    finally:
        lock.close()
