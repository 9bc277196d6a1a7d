"""Under CI a skip fails (tests/ci_skips.py), except one for what the machine itself lacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ci_skips
import pytest

TESTS = Path(__file__).resolve().parent
EXAMPLE = """
import shutil

import pytest
from ci_skips import on_this_machine


def test_needs_a_tool():
    if shutil.which("no-such-tool-deepguard") is None:
        pytest.skip("no-such-tool-deepguard not found")


@pytest.mark.skipif(True, reason=on_this_machine("no AMX tiles"))
def test_needs_amx():
    pass


@pytest.mark.xfail(reason="a known failure is no skip")
def test_known_to_fail():
    raise AssertionError


def test_runs():
    pass
"""


def _run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from ci_skips import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_a_missing_tool_fails_and_only_the_machine_may_skip(tmp_path: Path) -> None:
    done = _run(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in done.stdout, done.stdout
    assert "skipped under CI, where every tool is installed and ../shared is present" in done.stdout
    assert "no-such-tool-deepguard not found" in done.stdout
    assert "FAILED test_example.py::test_needs_a_tool" in done.stdout, done.stdout


def test_outside_ci_a_missing_tool_skips(tmp_path: Path) -> None:
    done = _run(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout, done.stdout


def test_this_session_fails_its_skips_under_ci(pytestconfig: pytest.Config) -> None:
    # tests/conftest.py (and tests/dags/conftest.py, for the Airflow environment's run) import the hook.
    hooks = pytestconfig.pluginmanager.hook.pytest_runtest_makereport.get_hookimpls()
    assert ci_skips.pytest_runtest_makereport in [hook.function for hook in hooks]
