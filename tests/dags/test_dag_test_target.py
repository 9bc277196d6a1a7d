"""`make dag-test` as a user types it: what the Makefile hands to `airflow dags test` (a dry run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


def _dag_test_in(checkout: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``make dag-test`` (environments treated as built) in ``checkout``: a copy of the Makefile alone."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    checkout.mkdir()
    shutil.copy(REPO / "Makefile", checkout / "Makefile")
    dropped = ("DAG_TEST_", "CI", "MAKE", "MFLAGS")
    return subprocess.run(
        ["make", "-o", ".venv/.installed", "-o", ".venv-airflow/.installed", "dag-test"],
        cwd=checkout,
        env={**{k: v for k, v in os.environ.items() if not k.startswith(dropped)}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_shared_sample_dag_test_is_skipped_so_make_test_runs_on(tmp_path: Path) -> None:
    # No ../shared beside a newcomer's clone: `make test` stopped at dag-test with "Error 2" and never ran
    # the main test suite, whose tests that read the sample skip with a reason.
    done = _dag_test_in(tmp_path / "deepguard")
    missing = tmp_path / "shared" / "data" / "cifake-sample.zip"
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        done.stdout == f"dag-test: skipped: {missing} not found; set DAG_TEST_DATA to a CIFAKE zip or folder "
        "(Kaggle layout)\n"
    )


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_dag_test_data_that_was_set_or_ci_must_exist(tmp_path: Path, ci: str) -> None:
    env = {"CI": "true"} if ci else {"DAG_TEST_DATA": "cifake-smaple.zip"}
    done = _dag_test_in(tmp_path / "deepguard", **env)
    assert done.returncode == 2
    assert "no such archive or folder" in done.stdout and "skipped" not in done.stdout
    assert "airflow" not in done.stdout  # stopped before the Airflow home was made
