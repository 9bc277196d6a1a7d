"""Shared fixtures: one real pipeline run on the CIFAKE sample per session."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 (the hook: under CI a skip fails)
from workspace import TrainedWorkspace, dvc, make_workspace, require_sample, run_stage, stage_env

# tests/dags needs Airflow, which lives in its own environment: `make test-dags` runs it there.
collect_ignore = ["dags"]


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkspace:
    """Run the real pipeline once per session: `dvc repro` on cifake-sample.zip, one epoch."""
    sample = require_sample()
    root = make_workspace(tmp_path_factory.mktemp("pipeline") / "ws")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  epochs: ", "  epochs: 1  # test run; was ", 1))
    env = stage_env(root, DEEPGUARD_DATA=str(sample))
    dvc(root, env, "init", "--no-scm", "-q")
    run_stage("ingest", root, env, "--locate")
    result = dvc(root, env, "repro")
    return TrainedWorkspace(
        root=root,
        tracking_uri=env["MLFLOW_TRACKING_URI"],
        model_name="deepguard",
        env=env,
        repro_output=result.stdout + result.stderr,
    )


@pytest.fixture()
def workspace_copy(trained_workspace: TrainedWorkspace, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the trained workspace with its own, empty MLflow store."""
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace.root, root, ignore=shutil.ignore_patterns("mlruns"))
    return root, stage_env(root, DEEPGUARD_DATA=trained_workspace.env["DEEPGUARD_DATA"])


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Give the root logger back as pytest set it up (the stage CLI reconfigures it with force=True)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
