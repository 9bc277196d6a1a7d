"""`make dag-test` as a user types it: what the Makefile hands to `airflow dags test` (a dry run)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from dagtools import REPO


def _dry_run(**env: str) -> tuple[str, str]:
    """``make -n dag-test`` with ``env``: all it prints, and the line that runs ``airflow dags test``."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    done = subprocess.run(
        # -o: treat the environments as built, so that the dry run plans no setup.
        ["make", "-n", "-o", ".venv/.installed", "-o", ".venv-airflow/.installed", "dag-test"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (dags_test,) = [line for line in done.stdout.splitlines() if "airflow dags test" in line]
    return done.stdout, dags_test


def test_relative_dag_test_data_reaches_the_stages_as_an_absolute_path() -> None:
    # Each stage changes into its run folder before it reads DEEPGUARD_DATA: a relative path passed the
    # Makefile's existence check and then failed in ingest with "no such archive or folder".
    output, dags_test = _dry_run(DAG_TEST_DATA="../shared/data/cifake-sample.zip")
    absolute = os.path.abspath(REPO.parent / "shared" / "data" / "cifake-sample.zip")
    assert f" DEEPGUARD_DATA={absolute} " in dags_test
    assert f"test -e {absolute} " in output


def test_the_shells_kaggle_credentials_stay_out_of_the_dag_test() -> None:
    # With credentials, data.source auto picks Kaggle: a DAG_TEST_CONF without "data_source" downloaded the
    # full dataset instead of using DAG_TEST_DATA.
    _, dags_test = _dry_run(DAG_TEST_CONF='{"epochs": 2}')
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert f" -u {name} " in dags_test
    # Nor a kaggle.json in ~/.kaggle: the config folder is the test's own, empty Airflow home subfolder.
    assert f" KAGGLE_CONFIG_DIR={REPO}/.airflow/dag-test/no-kaggle " in dags_test
