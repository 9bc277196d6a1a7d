"""Backfills: Airflow refuses one of either DAG; a manual run is still accepted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dagtools import DAG_ID, run_airflow

MONITOR_DAG = "deepguard_monitor"


def _runs(airflow_home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        return db.execute("SELECT dag_id, run_type FROM dag_run ORDER BY dag_id").fetchall()


def test_a_backfill_of_either_dag_is_refused_and_a_manual_run_is_not(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    # A backfill's runs obey its own max_active_runs (10 by default), not the DAG's 1: weekly retrainings of
    # a year ran ten at a time, each training the same model on today's data and racing to register it.
    env = {name: value for name, value in airflow_env.items() if name != "DEEPGUARD_SCHEDULE"}  # @weekly
    home = Path(env["AIRFLOW_HOME"])
    assert run_airflow(env, "db", "migrate", log=tmp_path / "migrate.log").returncode == 0
    assert run_airflow(env, "dags", "reserialize", log=tmp_path / "reserialize.log").returncode == 0

    for dag_id in (DAG_ID, MONITOR_DAG):
        backfill = run_airflow(
            env,
            *(
                "backfill",
                "create",
                "--dag-id",
                dag_id,
                "--from-date",
                "2026-01-01",
                "--to-date",
                "2026-02-01",
            ),
            log=tmp_path / f"backfill-{dag_id}.log",
        )
        assert backfill.returncode != 0, backfill.stdout[-3000:]
        assert f"Dag with dag_id: '{dag_id}' does not allow backfill runs" in backfill.stdout
    assert _runs(home) == []

    trigger = run_airflow(env, "dags", "trigger", DAG_ID, log=tmp_path / "trigger.log")
    assert trigger.returncode == 0, trigger.stdout[-3000:]
    assert _runs(home) == [(DAG_ID, "manual")]
