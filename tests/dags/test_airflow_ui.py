"""The settings and the shutdown of `make airflow` (tools/airflow_ui.py), without starting Airflow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from dagtools import REPO

from tools.airflow_ui import LaunchError, resolve_data, run, standalone_env


def test_relative_data_is_resolved_where_it_was_given(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    archive = tmp_path / "shared" / "sample.zip"
    archive.write_bytes(b"")
    given_in = tmp_path / "repo"
    given_in.mkdir()
    assert resolve_data("../shared/sample.zip", given_in) == str(archive)
    assert resolve_data(str(archive), tmp_path / "elsewhere") == str(archive)


def test_missing_data_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"DEEPGUARD_DATA=nope\.zip: no such archive or folder"):
        resolve_data("nope.zip", tmp_path)


def test_environment_of_standalone(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_bytes(b"")
    user = {"PATH": "/usr/bin", "DEEPGUARD_DATA": "data.zip", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    env = standalone_env(user, port=18123, home=tmp_path / "home", cwd=tmp_path)
    # (a) task supervisors call the execution API on the API server's port, not on 8080.
    assert env["AIRFLOW__API__PORT"] == "18123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    # (b) an absolute data path before any stage changes folder.
    assert env["DEEPGUARD_DATA"] == str(tmp_path / "data.zip")
    # (c) manual runs only, unless the user asks for a schedule.
    assert env["DEEPGUARD_SCHEDULE"] == "none"
    assert (
        standalone_env({**user, "DEEPGUARD_SCHEDULE": "@daily"}, port=1, home=tmp_path, cwd=tmp_path)[
            "DEEPGUARD_SCHEDULE"
        ]
        == "@daily"
    )
    assert env["DEEPGUARD_LOCAL_RUNNER"] == "1"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent), "standalone runs `airflow`"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", "the shell's credentials reach the stages"


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError, match=rf"AIRFLOW_PORT={port}: the port is in use"):
            run(port, tmp_path / "home", {"PATH": os.defpath}, tmp_path)
    assert not (tmp_path / "home").exists()


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DEEPGUARD_DATA": "no/such.zip", "AIRFLOW_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tools.airflow_ui", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == "make airflow: error: DEEPGUARD_DATA=no/such.zip: no such archive or folder\n"


def test_a_bad_airflow_port_is_one_line_naming_it(tmp_path: Path) -> None:
    """`AIRFLOW_PORT=x make airflow` ended in a traceback (int() while building the parser's default)."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.airflow_ui"],
        cwd=REPO,
        env={**os.environ, "AIRFLOW_PORT": "80a", "AIRFLOW_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (
        2,
        "make airflow: error: AIRFLOW_PORT=80a: not a port number (1-65535)\n",
    )


# A process tree like a running Airflow's: an orphan in a session of its own (a stage process whose task
# supervisor died) and a child that ignores SIGTERM. Prints their pids, then stops them all.
_TREE = """
import subprocess, sys
from tools.airflow_ui import become_subreaper, stop_descendants
become_subreaper()
ORPHAN = "import subprocess; print(subprocess.Popen(['sleep', '300'], start_new_session=True).pid)"
subprocess.run([sys.executable, "-c", ORPHAN], check=True)
DEAF = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print(flush=True); time.sleep(300)"
stubborn = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE, text=True)
stubborn.stdout.readline()
print(stubborn.pid, flush=True)
stop_descendants(timeout_s=1)
"""


def test_stop_descendants_stops_orphans_and_sigterm_ignorers() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _TREE], cwd=REPO, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    pids = [int(line) for line in done.stdout.split()]
    assert len(pids) == 2
    assert [pid for pid in pids if psutil.pid_exists(pid)] == [], "a process outlived the stop"
    assert took < 30, "the SIGKILL after the timeout did not come"
