"""`make dag-test` as a user types it: what the Makefile hands to `airflow dags test` (a dry run)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from dagtools import REPO


def test_relative_dag_test_data_reaches_the_stages_as_an_absolute_path() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    # Each stage changes into its run folder before it reads DEEPGUARD_DATA: a relative path passed the
    # Makefile's existence check and then failed in ingest with "no such archive or folder".
    done = subprocess.run(
        # -o: treat the environments as built, so that the dry run plans no setup.
        ["make", "-n", "-o", ".venv/.installed", "-o", ".venv-airflow/.installed", "dag-test"],
        cwd=REPO,
        env={**os.environ, "DAG_TEST_DATA": "../shared/data/cifake-sample.zip"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (dags_test,) = [line for line in done.stdout.splitlines() if "airflow dags test" in line]
    absolute = os.path.abspath(REPO.parent / "shared" / "data" / "cifake-sample.zip")
    assert f" DEEPGUARD_DATA={absolute} " in dags_test
    assert f"test -e {absolute} " in done.stdout
