"""``make serve``: run the predictor and the web app together on this machine; Ctrl-C or SIGTERM stops both.

The predictor serves ``--model-uri`` (default: the champion) on ``PREDICTOR_PORT`` (8080); the web app runs
under gunicorn on ``WEB_PORT`` (5000) and calls the predictor over loopback. Each runs in its own process, as
in the cluster, so the web app never loads TensorFlow. Both listen on 127.0.0.1 unless ``WEB_HOST`` says
otherwise (the predictor always: only the web app talks to it). A predictor that exits is started again, up to
``MAX_RESTARTS`` times in a row with a doubling wait; the web app answers 503 meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from core.cli import configure_logging
from core.config import load_params
from core.errors import DeepGuardError
from core.names import (
    AIRFLOW_PORT,
    GRPC_PORT,
    MODEL_NAME_ENV,
    PREDICTOR_PORT_ENV,
    PREDICTOR_URL_ENV,
    SERVED_MODEL_NAME,
    WEB_PORT,
    WEB_PORT_ENV,
    champion_uri,
)
from core.settings import SettingsError, settings

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
# Restarts of a predictor that keeps failing before it is ready again; the count resets once it is.
MAX_RESTARTS = 5
FIRST_BACKOFF_S = 1.0


def port_in_use(port: int) -> bool:
    """Whether a program already accepts connections on ``port`` of this machine (IPv4 or IPv6 loopback).

    A server that binds the port anyway beside a wildcard listener (BSD allows it) would share
    ``localhost`` with it: macOS resolves that name to ::1 first, where the other program answers.
    """
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                if probe.connect_ex((host, port)) == 0:
                    return True
        except OSError:  # no IPv6 on this machine
            continue
    return False


def _free_port_after(port: int, taken: set[int]) -> int | None:
    """The first port above ``port`` that no program holds and that is not in ``taken``."""
    for candidate in range(port + 1, min(port + 100, 65536)):
        if candidate not in taken and not port_in_use(candidate):
            return candidate
    return None


def busy_ports(predictor_port: int, web_port: int, command: str = "make serve") -> list[str]:
    """A line for each of the two ports another program holds: what may hold it, `command` on a free port.

    A newcomer told to "set WEB_PORT" may not know it is a variable of the command line, so the line ends
    with the command to type, on a port that is free now.
    """
    busy = []
    for setting, port in ((PREDICTOR_PORT_ENV, predictor_port), (WEB_PORT_ENV, web_port)):
        if port_in_use(port):
            line = f"{setting}={port}: the port is in use"
            if setting == PREDICTOR_PORT_ENV:
                line += " (a `make serve` already running? `make pipeline` updates it in place)"
            if port == WEB_PORT and sys.platform == "darwin":
                line += " (macOS: AirPlay Receiver listens on 5000; turn it off in System Settings)"
            line += f"; stop that program or set {setting} to a free port"
            # Never a port another of our servers takes by default: the next one up from 8080 is gRPC's.
            ours = {predictor_port, web_port, GRPC_PORT, AIRFLOW_PORT}
            if (free := _free_port_after(port, ours)) is not None:
                line += f", e.g. `{setting}={free} {command}`"
            busy.append(line)
    return busy


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL we built)
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(name: str, process: subprocess.Popen, url: str, stopping: list[bool]) -> bool:
    """Poll ``url`` until it answers 200; False when the process exits, a signal arrives or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and not stopping:
        if process.poll() is not None:
            log.error("%s exited with status %s before it was ready", name, process.returncode)
            return False
        if _ready(url):
            return True
        time.sleep(0.5)
    if not stopping:
        log.error("%s not ready after %d s (%s)", name, STARTUP_TIMEOUT_S, url)
    return False


def _stop(processes: list[tuple[str, subprocess.Popen]]) -> None:
    """SIGTERM the children one at a time, web app first; SIGKILL any that outstays ``STOP_TIMEOUT_S``.

    One at a time because the web app holds keep-alive connections to the predictor: stopping both at once
    makes the predictor wait for those while the web app waits for its workers.
    """
    for name, process in reversed(processes):
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %d s; killing it", name, STOP_TIMEOUT_S)
            process.kill()
            process.wait()
    log.info("stopped the predictor and the web app")


def _start_predictor(model_uri: str, port: int) -> subprocess.Popen:
    # Own session: a terminal's Ctrl-C reaches only this supervisor, which stops the children in order.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model-uri",
            model_uri,
            "--http_port",
            str(port),
        ],
        start_new_session=True,
    )
    log.info("starting the predictor (pid %d) for %s on port %d", process.pid, model_uri, port)
    return process


def serve(model_uri: str, predictor_port: int, web_port: int, web_host: str) -> int:
    """Start the predictor, then the web app; restart a predictor that exits; return on a signal.

    Returns:
        0 after a clean stop on SIGINT/SIGTERM, 1 when a port is taken, a server failed to start, the web
        app died or the predictor failed ``MAX_RESTARTS`` times in a row.
    """
    busy = busy_ports(predictor_port, web_port)
    for line in busy:
        log.error("%s", line)
    if busy:
        return 1
    stopping: list[bool] = []

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    processes: list[tuple[str, subprocess.Popen]] = []
    repo = Path(__file__).resolve().parents[1]
    predictor_url = f"http://127.0.0.1:{predictor_port}"
    predictor_ready_url = f"{predictor_url}/v2/models/{SERVED_MODEL_NAME}/ready"
    web_url = f"http://{'localhost' if web_host in ('0.0.0.0', '127.0.0.1') else web_host}:{web_port}"
    try:
        processes.append(("predictor", _start_predictor(model_uri, predictor_port)))
        if not _wait_ready("predictor", processes[0][1], predictor_ready_url, stopping):
            return 0 if stopping else 1
        web_env = {
            **os.environ,
            PREDICTOR_URL_ENV: predictor_url,
            MODEL_NAME_ENV: SERVED_MODEL_NAME,
            WEB_PORT_ENV: str(web_port),
            "WEB_HOST": web_host,
        }
        # From the repository root, `python -m flask_app` finds the package without installing it.
        web = subprocess.Popen(
            [sys.executable, "-m", "flask_app"], env=web_env, cwd=repo, start_new_session=True
        )
        processes.append(("web app", web))
        if not _wait_ready("web app", web, f"http://127.0.0.1:{web_port}/healthz", stopping):
            return 0 if stopping else 1
        log.info("DeepGuard is serving the model %s", model_uri)
        log.info("  web page:  %s/", web_url)
        log.info(
            "  predictor: http://localhost:%d (V1 /v1/models/%s:predict, V2 /v2/models/%s/infer)",
            predictor_port,
            SERVED_MODEL_NAME,
            SERVED_MODEL_NAME,
        )
        log.info("press Ctrl-C to stop both")
        failures = 0
        while not stopping:
            if web.poll() is not None:
                log.error("web app exited with status %s; stopping", web.returncode)
                return 1
            predictor = processes[0][1]
            if predictor.poll() is not None:
                failures += 1
                if failures > MAX_RESTARTS:
                    log.error("predictor exited %d times in a row; stopping", failures)
                    return 1
                backoff = FIRST_BACKOFF_S * 2 ** (failures - 1)
                log.error(
                    "predictor exited with status %s; restart %d of %d in %.0f s (the web app answers "
                    "503 meanwhile)",
                    predictor.returncode,
                    failures,
                    MAX_RESTARTS,
                    backoff,
                )
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.1)
                if stopping:
                    break
                processes[0] = ("predictor", _start_predictor(model_uri, predictor_port))
                if _wait_ready("predictor", processes[0][1], predictor_ready_url, stopping):
                    log.info("predictor is serving again")
                    failures = 0
                continue
            time.sleep(0.5)
        return 0
    finally:
        _stop(processes)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments (defaults from PREDICTOR_PORT, WEB_PORT, WEB_HOST, MODEL_URI) and serve."""
    parser = argparse.ArgumentParser(prog="python -m serving.serve", description=__doc__)
    try:
        env = settings()
    except SettingsError as exc:
        parser.error(str(exc))
    parser.add_argument(
        "--model-uri",
        default=env.model_uri,
        help="model to serve (default: MODEL_URI, else the champion of params.yaml's mlflow.model_name)",
    )
    parser.add_argument("--predictor-port", type=int, default=env.predictor_port)
    parser.add_argument("--web-port", type=int, default=env.web_port)
    parser.add_argument(
        "--web-host",
        default=env.web_host,
        help="address the web app listens on (default: %(default)s)",
    )
    parser.add_argument(
        "--check-ports",
        action="store_true",
        help="only check that both ports are free, and exit (make run does, before the pipeline)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    if args.check_ports:
        busy = busy_ports(args.predictor_port, args.web_port, "make run")
        if busy:
            parser.exit(2, "".join(f"{parser.prog}: error: {line}\n" for line in busy))
        return 0
    try:
        model_uri = args.model_uri or champion_uri(load_params().mlflow.model_name)
    except DeepGuardError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return serve(model_uri, args.predictor_port, args.web_port, args.web_host)


if __name__ == "__main__":
    sys.exit(main())
