"""The drift monitor DAG: its structure and pod, and end to end with the local runner on CIFAKE records."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagtools import DAGS_DIR, ML_PYTHON, REPO, RUN_AFTER, SAMPLE_ZIP, render_task, run_airflow

from core.pipeline import MONITOR

MONITOR_DAG = "deepguard_monitor"
DRIFT_WORLD = REPO / "tests" / "drift_world.py"


@pytest.fixture(scope="module")
def monitor_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[MONITOR_DAG]


def test_monitor_dag_runs_the_monitor_then_triggers_the_pipeline_only_on_drift(monitor_dag: Any) -> None:
    assert monitor_dag.schedule == "@hourly", "params.yaml monitoring.schedule"
    assert monitor_dag.max_active_runs == 1 and monitor_dag.catchup is False
    assert monitor_dag.get_task("monitor").upstream_task_ids == set()
    assert monitor_dag.get_task("drift_detected").upstream_task_ids == {"monitor"}
    assert monitor_dag.get_task("trigger_pipeline").upstream_task_ids == {"drift_detected"}
    assert type(monitor_dag.get_task("drift_detected")).__name__ == "ShortCircuitOperator"
    trigger = monitor_dag.get_task("trigger_pipeline")
    assert trigger.trigger_dag_id == "deepguard_pipeline" and trigger.skip_when_already_exists
    assert "reason" in trigger.conf


@pytest.mark.parametrize(
    ("pushed", "expected"), [({"drift": True}, True), ({"drift": False}, False), (None, False)]
)
def test_the_short_circuit_reads_the_monitors_decision(monitor_dag: Any, pushed: Any, expected: bool) -> None:
    ti = SimpleNamespace(xcom_pull=lambda task_ids: pushed if task_ids == "monitor" else {"drift": True})
    assert monitor_dag.get_task("drift_detected").python_callable(ti=ti) is expected


def test_a_trigger_conf_fails_the_monitor_saying_it_takes_no_params(monitor_dag: Any) -> None:
    # The message listed the DAG's params, which for the monitor ended in "... are " and nothing.
    from airflow.sdk.exceptions import AirflowFailException

    task = render_task(monitor_dag, "monitor")
    context = {"params": {}, "dag_run": SimpleNamespace(conf={"window_hours": 2})}
    with pytest.raises(AirflowFailException) as failed:
        task.execute(context)
    assert str(failed.value) == (
        "unknown trigger param(s) window_hours: deepguard_monitor takes no params (trigger it without conf)"
    )


def test_monitor_pod_writes_its_decision_to_the_xcom_file(monitor_dag: Any) -> None:
    task = render_task(monitor_dag, "monitor")
    pod = task.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.command == MONITOR.command == ["python", "-m", "stages.monitor"]
    assert container.args == [
        "--params",
        "/app/params.yaml",
        "--workdir",
        "/workspace/monitor",
        "--xcom",
        "/airflow/xcom/return.json",
        # The window ends when the run was due, not when the pod starts: a late, retried or cleared run looks
        # at the same hour of records (and triggers the retraining named after that day).
        "--now",
        RUN_AFTER.isoformat(),
    ]
    env = {var.name: var.value for var in container.env}
    assert env["DEEPGUARD_MONITORING_DIR"] == "/workspace/monitoring"
    assert task.do_xcom_push and [c.name for c in pod.spec.containers][1:] == ["airflow-xcom-sidecar"]
    assert (
        pod.spec.service_account_name == "deepguard-pipeline" and not pod.spec.automount_service_account_token
    )
    assert pod.metadata.name.startswith("deepguard-monitor-")


def test_every_container_of_the_monitor_pod_meets_the_restricted_pod_security_standard(
    monitor_dag: Any,
) -> None:
    # The namespace warns and audits at "restricted" (k8s/namespace.yaml): the XCom sidecar the operator adds
    # must drop privileges like the stage container, or every hourly pod is flagged.
    pod = render_task(monitor_dag, "monitor").build_pod_request_obj(dry_run=True)
    assert len(pod.spec.containers) == 2
    for container in pod.spec.containers:
        context = container.security_context
        assert context is not None, container.name
        assert context.allow_privilege_escalation is False, container.name
        assert context.capabilities.drop == ["ALL"], container.name
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"


def test_monitor_schedule_is_configurable_by_environment() -> None:
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from airflow.dag_processing.dagbag import DagBag;"
        "print(repr(DagBag(dag_folder=sys.argv[1]).dags['deepguard_monitor'].schedule))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPGUARD_")}
    for value, expected in (("*/15 * * * *", "'*/15 * * * *'"), ("none", "None")):
        done = subprocess.run(
            [sys.executable, "-c", probe, str(DAGS_DIR)],
            env={**env, "DEEPGUARD_MONITOR_SCHEDULE": value},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected


# --- end to end: airflow dags test with the local runner ---------------------------------------------


def _pipeline_runs(airflow_home: Path) -> list[tuple[str, dict]]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute("SELECT run_id, conf FROM dag_run WHERE dag_id = 'deepguard_pipeline'").fetchall()
    return [(run_id, json.loads(conf) if isinstance(conf, str) else conf) for run_id, conf in rows]


@pytest.mark.slow
def test_monitor_dag_end_to_end_clean_then_degraded(airflow_env: dict[str, str], tmp_path: Path) -> None:
    if not SAMPLE_ZIP.is_file():
        pytest.skip(
            f"{SAMPLE_ZIP} not found: the records are made from the shared CIFAKE sample (../shared/data)"
        )
    if not ML_PYTHON.is_file():
        pytest.skip(f"{ML_PYTHON} not found: run `make setup` (the monitor runs in the ML environment)")
    workspace = Path(airflow_env["DEEPGUARD_LOCAL_WORKSPACE"])
    tracking = f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}"  # the local runner's store
    now = datetime.now(UTC).isoformat()

    def serve(scenario: str) -> None:
        records = workspace / "monitoring" / "records"
        for old in records.glob("*.jsonl") if records.is_dir() else []:
            old.unlink()
        made = subprocess.run(
            [str(ML_PYTHON), str(DRIFT_WORLD), tracking, str(workspace / "monitoring"), scenario, now],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert made.returncode == 0, made.stderr[-3000:]

    assert run_airflow(airflow_env, "db", "migrate", log=tmp_path / "migrate.log").returncode == 0
    # Both DAGs in the metadata DB, as the DAG processor keeps them: the trigger needs deepguard_pipeline.
    assert run_airflow(airflow_env, "dags", "reserialize", log=tmp_path / "reserialize.log").returncode == 0

    serve("clean")
    clean = run_airflow(airflow_env, "dags", "test", MONITOR_DAG, log=tmp_path / "clean.log")
    assert clean.returncode == 0, clean.stdout[-5000:]
    report = json.loads((workspace / "monitor" / "reports" / "drift.json").read_text())
    print(f"clean: PSI {report['psi']:.3f}, KS {_ks(report)}")
    assert report["status"] == "ok" and report["records"] == 500
    assert "monitor done: deepguard v1 ok over 500 served images" in clean.stdout
    assert _pipeline_runs(Path(airflow_env["AIRFLOW_HOME"])) == [], "no drift, no retraining"

    serve("upscale_4x")
    drifted = run_airflow(airflow_env, "dags", "test", MONITOR_DAG, log=tmp_path / "drift.log")
    assert drifted.returncode == 0, drifted.stdout[-5000:]
    report = json.loads((workspace / "monitor" / "reports" / "drift.json").read_text())
    print(
        f"upscale_4x: PSI {report['psi']:.3f}, KS {_ks(report)}, OOD {report['out_of_domain']['share']:.0%}"
    )
    assert report["status"] == "drift" and report["out_of_domain"]["share"] == 1.0
    ((run_id, conf),) = _pipeline_runs(Path(airflow_env["AIRFLOW_HOME"]))
    assert run_id.startswith("drift__")
    assert conf["reason"].startswith("drift: ") and "out-of-domain inputs: 100.0%" in conf["reason"]


def _ks(report: dict) -> str:
    return ", ".join(f"{name} {r['statistic']:.3f}" for name, r in report["ks"].items())
