"""Fixtures of the DAG tests, which run in the Airflow environment (`make test-dags`), not the ML one."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 (the hook: under CI a skip fails)
from dagtools import DAG_ID, DAGS_DIR, ML_PYTHON, REPO

# Airflow reads its configuration when first imported: point it at a throw-away home and our dags folder,
# and drop the deployment settings of the user's shell so that the DAG parses with its defaults.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="deepguard-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# The first parse imports the cncf.kubernetes provider: on 2 busy CI cores it can pass the 30 s default.
IMPORT_TIMEOUT = {"AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300"}
os.environ.update(IMPORT_TIMEOUT)
for _name in [name for name in os.environ if name.startswith("DEEPGUARD_")]:
    del os.environ[_name]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def dag() -> Any:
    """The DAG as the scheduler loads it: from a DagBag over the dags folder, with no import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[DAG_ID]


@pytest.fixture
def airflow_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of an `airflow` command with the local runner, a fresh metadata DB and workspace."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DAGSHUB_", "KAGGLE_", "AWS_", "DEEPGUARD_", "AIRFLOW"))
    }
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}",
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **IMPORT_TIMEOUT,
            "DEEPGUARD_LOCAL_RUNNER": "1",
            "DEEPGUARD_LOCAL_WORKSPACE": str(tmp_path / "workspace"),
            "DEEPGUARD_LOCAL_PYTHON": str(ML_PYTHON),
            "DEEPGUARD_TASK_RETRIES": "0",
            "DEEPGUARD_SCHEDULE": "none",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    yield env
