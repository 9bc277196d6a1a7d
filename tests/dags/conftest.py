"""Fixtures of the DAG tests, which run in the Airflow environment (`make test-dags`), not the ML one."""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
SHARED = REPO.parent / "shared"
SAMPLE_ZIP = SHARED / "data" / "cifake-sample.zip"
ML_PYTHON = REPO / ".venv" / "bin" / "python"
DAG_ID = "deepguard_pipeline"

# Airflow reads its configuration when first imported: point it at a throw-away home and our dags folder,
# and drop the deployment settings of the user's shell so that the DAG parses with its defaults.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="deepguard-airflow-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
for _name in [name for name in os.environ if name.startswith("DEEPGUARD_")]:
    del os.environ[_name]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _UnsetVariables:
    """Airflow's ``var.value`` accessor as it behaves with no Variable set: every lookup gets its default."""

    @staticmethod
    def get(key: str, default: Any = None) -> Any:
        return default


@pytest.fixture(scope="session")
def dag() -> Any:
    """The DAG as the scheduler loads it: from a DagBag over the dags folder, with no import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[DAG_ID]


def render_task(dag: Any, task_id: str, params: dict[str, Any] | None = None,
                run_id: str = "manual__2026-01-02T03:04:05.678901+00:00") -> Any:
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
    context = {"run_id": run_id, "params": resolved.validate(), "var": {"value": _UnsetVariables()},
               "dag": dag, "task": task}
    task.render_template_fields(context, jinja_env=dag.get_template_env())
    return task


@pytest.fixture
def airflow_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of an `airflow` command with the local runner, a fresh metadata DB and workspace."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DAGSHUB_", "KAGGLE_", "AWS_", "DEEPGUARD_", "AIRFLOW"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DEEPGUARD_LOCAL_RUNNER": "1",
        "DEEPGUARD_LOCAL_WORKSPACE": str(tmp_path / "workspace"),
        "DEEPGUARD_LOCAL_PYTHON": str(ML_PYTHON),
        "DEEPGUARD_TASK_RETRIES": "0",
        "DEEPGUARD_SCHEDULE": "none",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    yield env
