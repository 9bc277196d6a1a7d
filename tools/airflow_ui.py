"""``make airflow``: Airflow standalone with the local runner; prints URL and password; Ctrl-C stops it all.

Runs in the Airflow environment (``.venv-airflow``): it starts ``airflow standalone`` (scheduler, API server,
DAG processor, triggerer) with the settings the DAG needs on one machine, waits for the API, prints where to
log in, and on Ctrl-C or SIGTERM stops every process below it, the stage processes of running tasks included.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import psutil

from core.cli import configure_logging
from core.names import AIRFLOW_PORT, DATA_ENV

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".airflow" / "standalone"
DAG_ID = "deepguard_pipeline"
# Written by the simple auth manager the first time it starts in an Airflow home: {"admin": "<password>"}.
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
# The local UI's schedule unless DEEPGUARD_SCHEDULE says otherwise: the DAG's word for manual runs only.
MANUAL_ONLY = "none"
STARTUP_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class LaunchError(Exception):
    """A setting that keeps Airflow from starting; the message names it."""


def resolve_data(value: str, cwd: Path) -> str:
    """``DEEPGUARD_DATA`` as an absolute path, relative to the folder where it was given.

    Each stage changes into its run folder before it reads the variable, so a relative path must be
    resolved here, once, before any task runs.

    Args:
        value: The path as the user wrote it (``../shared/data/cifake-sample.zip``).
        cwd: The folder it is relative to (where ``make airflow`` runs).

    Returns:
        The absolute path.

    Raises:
        LaunchError: The path does not exist.
    """
    path = (cwd / Path(value).expanduser()).resolve()
    if not path.exists():
        raise LaunchError(f"{DATA_ENV}={value}: no such archive or folder")
    return str(path)


def standalone_env(environ: Mapping[str, str], *, port: int, home: Path, cwd: Path) -> dict[str, str]:
    """The environment of ``airflow standalone``: the user's, plus what the local runner needs.

    Args:
        environ: The user's environment (credentials, ``DEEPGUARD_*`` and ``AIRFLOW__*`` settings).
        port: Port of the API server, which also serves the execution API that task supervisors call.
        home: ``AIRFLOW_HOME``.
        cwd: The folder relative paths in ``environ`` were given in.

    Returns:
        The complete environment.

    Raises:
        LaunchError: ``DEEPGUARD_DATA`` names no archive or folder.
    """
    env = dict(environ)
    env.update(
        {
            # Standalone starts its components as `airflow ...`: this environment's first.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)]),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__PORT": str(port),
            # Task supervisors call the execution API, which defaults to port 8080 whatever the API port is.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "DEEPGUARD_LOCAL_RUNNER": "1",
        }
    )
    # Defaults the user may override with the same variables.
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    # Each stage is a whole TensorFlow process: a laptop runs one or two at a time.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "2")
    # The first parse imports the cncf.kubernetes provider, which can pass the 30 s default on a busy laptop.
    env.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "300")
    # Manual runs only: with the cluster's @weekly schedule, unpausing the DAG to trigger a run would also
    # start a scheduled run of the full default recipe beside it.
    env.setdefault("DEEPGUARD_SCHEDULE", MANUAL_ONLY)
    if environ.get(DATA_ENV):
        env[DATA_ENV] = resolve_data(environ[DATA_ENV], cwd)
    return env


def _check_port(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise LaunchError(f"AIRFLOW_PORT={port}: the port is in use (choose another)") from None


def _api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def become_subreaper() -> None:
    """Adopt the orphans of the tree (Linux), so that :func:`stop_descendants` still finds them.

    A stage process whose task supervisor died first would otherwise be re-parented to init.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _live(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap() -> None:
    with suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop_descendants(timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every process below this one, SIGKILL those left after ``timeout_s``; return when none is.

    Stage processes run in sessions of their own (the operator stops them with their group), so a process
    group signal would miss them: this walks the process tree instead, again and again, because a dying
    component may still start a process.
    """
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    signalled: set[psutil.Process] = set()
    while True:
        _reap()
        alive = [process for process in me.children(recursive=True) if _live(process)]
        if not alive:
            return
        kill = time.monotonic() >= deadline
        for process in alive:
            if kill or process not in signalled:
                with suppress(psutil.NoSuchProcess):
                    if kill:
                        process.kill()
                    else:
                        process.terminate()
                signalled.add(process)
        time.sleep(0.2)


def _banner(url: str, home: Path, env: Mapping[str, str]) -> None:
    # Standalone writes the file before it starts the API server, unless users are configured otherwise.
    password_file = home / PASSWORD_FILE
    password = (
        json.loads(password_file.read_text()).get("admin", "?")
        if password_file.is_file()
        else "(none generated: see [core] simple_auth_manager_users)"
    )
    schedule = env["DEEPGUARD_SCHEDULE"]
    rule = "=" * 72
    log.info(rule)
    log.info("Airflow UI:  %s   user: admin   password: %s", url, password)
    log.info(
        "DAG %s: schedule %s; unpause it, then Trigger it with parameters",
        DAG_ID,
        f"{MANUAL_ONLY} (manual runs only)" if schedule == MANUAL_ONLY else schedule,
    )
    log.info("data: %s", env.get(DATA_ENV, f"({DATA_ENV} unset: Kaggle or synthetic)"))
    log.info("Airflow home: %s (log: standalone.log)", home)
    log.info("Ctrl-C stops Airflow and every task it started")
    log.info(rule)


def run(port: int, home: Path, environ: Mapping[str, str], cwd: Path) -> int:
    """Start ``airflow standalone``; return when a signal arrives or it exits.

    Args:
        port: API server port.
        home: ``AIRFLOW_HOME``.
        environ: The user's environment.
        cwd: Where relative paths were given.

    Returns:
        0 after a stop on SIGINT/SIGTERM, 1 when Airflow failed to start or died.
    """
    env = standalone_env(environ, port=port, home=home, cwd=cwd)
    _check_port(port)
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    become_subreaper()
    log_path = home / "standalone.log"
    log.info("starting Airflow standalone on %s (Airflow home %s; output in %s)", url, home, log_path)
    with log_path.open("ab") as output:
        # Its own session: a terminal's Ctrl-C reaches only this process, which stops the whole tree in order
        # (standalone itself does not stop its components on Ctrl-C).
        airflow = Path(sys.executable).parent / "airflow"
        standalone = subprocess.Popen(
            [str(airflow), "standalone"],
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        shown = False
        while not stopping:
            if standalone.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                log.error(
                    "airflow standalone exited with status %s; last lines of %s:\n%s",
                    standalone.returncode,
                    log_path,
                    "\n".join(tail),
                )
                return 1
            if not shown and _api_ready(url):
                _banner(url, home, env)
                shown = True
            elif not shown and time.monotonic() > deadline:
                log.error(
                    "the API server did not answer on %s within %d s; see %s",
                    url,
                    STARTUP_TIMEOUT_S,
                    log_path,
                )
                return 1
            time.sleep(0.5)
        log.info("received %s: stopping Airflow", signal.Signals(stopping[0]).name)
        return 0
    finally:
        stop_descendants()
        log.info("stopped Airflow and its tasks")


def environment_port(environ: Mapping[str, str]) -> int:
    """``AIRFLOW_PORT``, else the default port.

    Raises:
        LaunchError: naming the variable when its value is not a port number.
    """
    text = environ.get("AIRFLOW_PORT") or str(AIRFLOW_PORT)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise LaunchError(f"AIRFLOW_PORT={text}: not a port number (1-65535)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments (port from AIRFLOW_PORT, home from AIRFLOW_HOME) and run."""
    parser = argparse.ArgumentParser(prog="python -m tools.airflow_ui", description=__doc__)
    parser.add_argument(
        "--port",
        type=int,
        default=None,  # AIRFLOW_PORT is read in the try below: a bad one is one line, not a traceback
        help=f"API server and UI port (default: AIRFLOW_PORT or {AIRFLOW_PORT})",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("AIRFLOW_HOME") or DEFAULT_HOME),
        help="Airflow home (default: AIRFLOW_HOME or .airflow/standalone)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        port = args.port if args.port is not None else environment_port(os.environ)
        return run(port, args.home.resolve(), os.environ, Path.cwd())
    except LaunchError as exc:
        print(f"make airflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
