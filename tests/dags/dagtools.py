"""Helpers of the DAG tests: where things are, and a DAG task rendered for a run (no Airflow import here)."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
SHARED = REPO.parent / "shared"
SAMPLE_ZIP = SHARED / "data" / "cifake-sample.zip"
ML_PYTHON = REPO / ".venv" / "bin" / "python"
DAG_ID = "deepguard_pipeline"
# When the rendered run was due (a scheduled run: the end of its data interval).
RUN_AFTER = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
AIRFLOW = Path(sys.executable).parent / "airflow"  # in the Airflow environment that runs these tests


def run_airflow(env: dict[str, str], *args: str, log: Path) -> subprocess.CompletedProcess[str]:
    """``airflow <args>`` from the repository with ``env``; its output goes to ``log`` and into ``stdout``."""
    with log.open("w") as out:
        done = subprocess.run(
            [str(AIRFLOW), *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
    return subprocess.CompletedProcess(done.args, done.returncode, log.read_text(), "")


class _UnsetVariables:
    """Airflow's ``var.value`` accessor as it behaves with no Variable set: every lookup gets its default."""

    @staticmethod
    def get(key: str, default: Any = None) -> Any:
        return default


def render_task(
    dag: Any,
    task_id: str,
    params: dict[str, Any] | None = None,
    run_id: str = "manual__2026-01-02T03:04:05.678901+00:00",
) -> Any:
    """A copy of the task with its templates rendered for a run with these DAG params.

    Args:
        dag: The loaded DAG.
        task_id: Which task.
        params: DAG params of the run (validated against the DAG's schema); defaults otherwise.
        run_id: The run id the templates see.

    Returns:
        The rendered copy (the DAG's own task is left as parsed).
    """
    resolved = copy.deepcopy(dag.params)
    for key, value in (params or {}).items():
        resolved[key] = value
    task = copy.deepcopy(dag.get_task(task_id))
    context = {
        "run_id": run_id,
        "dag_run": SimpleNamespace(run_id=run_id, run_after=RUN_AFTER),
        "params": resolved.validate(),
        "var": {"value": _UnsetVariables()},
        "dag": dag,
        "task": task,
    }
    task.render_template_fields(context, jinja_env=dag.get_template_env())
    return task
