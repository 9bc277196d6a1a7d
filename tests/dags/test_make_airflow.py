"""`make airflow` end to end: the UI starts, a run triggered over REST completes, Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from dagtools import DAG_ID, ML_PYTHON, REPO, SAMPLE_ZIP

pytestmark = pytest.mark.slow

# What the UI's trigger form sends for a small run: one epoch on a few images per split and class.
CONF = {"epochs": 1, "data_source": "local", "sample_per_class": 40, "deploy": True}
STARTUP_TIMEOUT_S = 400
RUN_TIMEOUT_S = 900
STOP_TIMEOUT_S = 60
BANNER = re.compile(r"Airflow UI:\s+(http://\S+)\s+user: admin\s+password: (\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _failed_task_logs(home: Path, states: dict[str, str]) -> str:
    """The task states and the end of each failed task's log, for the assertion message."""
    logs = [f"task states: {states}"]
    for task_id in [task for task, state in states.items() if state == "failed"]:
        for log in sorted(home.glob(f"logs/dag_id={DAG_ID}/run_id=*/task_id={task_id}/*.log")):
            logs.append(f"{log}:\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(logs)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


class MakeAirflow:
    """A running `make airflow` and its output."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float) -> Any:
        """Poll ``check()`` until it returns something truthy; fail with make's output when it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"make airflow exited:\n{self.output()[-3000:]}"
            found = check()
            if found:
                return found
            time.sleep(2)
        pytest.fail(f"{what}: not within {timeout_s} s; make output:\n{self.output()[-3000:]}")


@pytest.fixture
def make_airflow(airflow_env: dict[str, str], tmp_path: Path) -> Iterator[MakeAirflow]:
    """`make airflow` on a free port, a throw-away home and workspace, the sample as a relative path."""
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP} not found: the run reads the shared CIFAKE sample (../shared/data)")
    if not ML_PYTHON.is_file():
        pytest.skip(f"{ML_PYTHON} not found: run `make setup` (the stages run in the ML environment)")
    # make airflow itself must set what the local UI needs: leave those settings out of the environment.
    env = {
        k: v
        for k, v in airflow_env.items()
        if k not in {"DEEPGUARD_SCHEDULE", "DEEPGUARD_LOCAL_RUNNER", "AIRFLOW__CORE__DAGS_FOLDER"}
    }
    data = os.path.relpath(SAMPLE_ZIP, REPO)
    assert not Path(data).is_absolute()
    # No predictor listens there: deploy --target local records that and succeeds.
    env.update({"DEEPGUARD_DATA": data, "PREDICTOR_URL": f"http://127.0.0.1:{_free_port()}"})
    log = tmp_path / "make-airflow.log"
    with log.open("wb") as out:
        # Its own session, like a terminal's foreground job: the test's Ctrl-C goes to that process group
        # (and, like one, SIGINT not ignored even when the tests run in a background job, which ignores it).
        process = subprocess.Popen(
            ["make", "--no-print-directory", "airflow", f"AIRFLOW_PORT={_free_port()}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        yield MakeAirflow(process, log)
    finally:
        if process.poll() is None:  # the test failed before its Ctrl-C: do not leave Airflow running
            leftovers = psutil.Process(process.pid).children(recursive=True)
            os.killpg(process.pid, signal.SIGKILL)
            for child in leftovers:
                with suppress(psutil.NoSuchProcess):
                    child.kill()
            process.wait()


def test_make_airflow_runs_a_triggered_dag_and_ctrl_c_stops_it_all(
    make_airflow: MakeAirflow, airflow_env: dict[str, str]
) -> None:
    started = time.monotonic()
    url, password = make_airflow.wait_for(
        "the URL and password",
        lambda: (m := BANNER.search(make_airflow.output())) and m.groups(),
        STARTUP_TIMEOUT_S,
    )
    startup_s = time.monotonic() - started
    api = httpx.Client(base_url=url, timeout=30)
    token = api.post("/auth/token", json={"username": "admin", "password": password})
    assert token.status_code == 201, token.text
    api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    dag = make_airflow.wait_for(
        "the DAG parsed",
        lambda: (r := api.get(f"/api/v2/dags/{DAG_ID}")).status_code == 200 and r.json(),
        STARTUP_TIMEOUT_S,
    )
    assert dag["timetable_summary"] in (None, "None"), "the local UI must not schedule runs"
    unpaused = api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    assert unpaused.status_code == 200 and unpaused.json()["is_paused"] is False, unpaused.text
    # As the trigger form does: no logical date, the params as conf.
    triggered = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF})
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["dag_run_id"]

    def finished() -> str | None:
        state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    state = make_airflow.wait_for("the run finished", finished, RUN_TIMEOUT_S)
    run_s = time.monotonic() - started - startup_s
    instances = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in instances}
    assert (state, states) == (
        "success",
        dict.fromkeys(
            ["ingest", "preprocess", "features", "train", "evaluate", "register", "deploy"], "success"
        ),
    ), _failed_task_logs(Path(airflow_env["AIRFLOW_HOME"]), states)
    runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
    assert [(r["dag_run_id"], r["run_type"]) for r in runs] == [(run_id, "manual")], "a scheduled run started"
    # The relative DEEPGUARD_DATA reached ingest, which read the sample (data_source local has no fallback).
    workspace = Path(airflow_env["DEEPGUARD_LOCAL_WORKSPACE"])
    (run_dir,) = (workspace / "runs").iterdir()
    assert json.loads((run_dir / "data" / "raw" / "index.json").read_text())["source"] == "local"
    assert json.loads((run_dir / "reports" / "deployment.json").read_text())["status"] == "no_predictor"

    # Ctrl-C while a second run's stage process runs (in a session of its own), as a terminal sends it:
    # SIGINT to the foreground process group.
    second = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF})
    assert second.status_code == 200, second.text
    make = psutil.Process(make_airflow.process.pid)

    def stage_running() -> list[psutil.Process] | None:
        tree = make.children(recursive=True)
        return tree if any("stages." in " ".join(_cmdline(p)) for p in tree) else None

    tree = make_airflow.wait_for("a stage process of the second run", stage_running, RUN_TIMEOUT_S)
    stop = time.monotonic()
    os.killpg(make_airflow.process.pid, signal.SIGINT)
    make_airflow.process.wait(timeout=STOP_TIMEOUT_S)
    stop_s = time.monotonic() - stop
    left = [p.pid for p in tree if _running(p)]
    assert left == [], f"still running after Ctrl-C: {left}"
    assert "stopped Airflow and its tasks" in make_airflow.output()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0, "the API still answers"
    assert stop_s < 45, "the launcher's SIGKILL comes 30 s after the SIGTERM"
    print(
        f"\nmake airflow: start to URL and password {startup_s:.0f} s, trigger to run succeeded "
        f"{run_s:.0f} s, Ctrl-C to every process gone {stop_s:.1f} s"
    )
