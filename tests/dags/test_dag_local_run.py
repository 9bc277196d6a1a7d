"""The DAG end to end with the local runner: a stage fails, and a rerun after the fix completes."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from dagtools import DAG_ID, ML_PYTHON, REPO, SAMPLE_ZIP, run_airflow

pytestmark = pytest.mark.slow

# Small enough for CI, large enough for a real split: per split and class.
CONF = {"epochs": 1, "data_source": "local", "sample_per_class": 40, "deploy": True}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _runs(workspace: Path) -> set[Path]:
    runs = workspace / "runs"
    return set(runs.iterdir()) if runs.is_dir() else set()


def test_failing_stage_fails_the_run_then_a_rerun_after_the_fix_completes(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP} not found: the run reads the shared CIFAKE sample (../shared/data)")
    if not ML_PYTHON.is_file():
        pytest.skip(f"{ML_PYTHON} not found: run `make setup` (the stages run in the ML environment)")
    workspace = Path(airflow_env["DEEPGUARD_LOCAL_WORKSPACE"])
    # The deploy task reloads the predictor at PREDICTOR_URL (default: the local one on 8080); point it where
    # nothing listens, so a user's running `make run` is neither reloaded nor asked for the test's version.
    predictor = f"http://127.0.0.1:{_closed_port()}"
    env = {**airflow_env, "DEEPGUARD_DATA": str(SAMPLE_ZIP), "PREDICTOR_URL": predictor}
    migrate = run_airflow(env, "db", "migrate", log=tmp_path / "migrate.log")
    assert migrate.returncode == 0, migrate.stdout[-3000:]

    # The tracking server is down: train, the first stage that needs it, fails.
    broken = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}
    failed = run_airflow(broken, "dags", "test", DAG_ID, "-c", json.dumps(CONF), log=tmp_path / "failed.log")
    assert failed.returncode != 0, "a failed stage must fail the run"
    # Transient (core/errors.py): retried, unlike a bad input's exit 2 (retries are off here).
    assert "stage train exited with code 75" in failed.stdout
    assert "unreachable" in failed.stdout
    (run,) = _runs(workspace)
    assert (run / "data" / "raw").is_dir() and (run / "data" / "features").is_dir(), "upstream stages ran"
    assert not (run / "models").exists(), "the failed stage left an output"
    assert list(run.rglob("*.tmp")) == [], "a temporary output was left behind"
    assert not (run / "reports" / "metrics.json").exists(), "a stage after the failed one ran"

    # Fixed: the same DAG with the tracking store back completes, registers and deploys (locally).
    fixed = run_airflow(env, "dags", "test", DAG_ID, "-c", json.dumps(CONF), log=tmp_path / "fixed.log")
    assert fixed.returncode == 0, fixed.stdout[-5000:]
    (rerun,) = _runs(workspace) - {run}
    registration = json.loads((rerun / "reports" / "registration.json").read_text())
    assert registration["promoted"] is True
    champion = subprocess.run(
        [
            str(ML_PYTHON),
            str(REPO / "tests" / "dags" / "champion.py"),
            f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert champion.returncode == 0, champion.stderr
    found = json.loads(champion.stdout)
    assert found["version"] == registration["version"]
    assert found["tags"]["data_source"] == "local"
    assert "Local runner:" in fixed.stdout and "-m deploy --params" in fixed.stdout
    assert f"no predictor is running at {predictor}: nothing to reload" in fixed.stdout
