"""`make serve`'s supervisor: both servers answer, a killed predictor is restarted, SIGTERM stops both."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from ci_skips import on_this_machine

from serving.serve import port_in_use

from .serving_helpers import REPO, free_port


def _predict(web_port: int, image: bytes) -> requests.Response:
    url = f"http://127.0.0.1:{web_port}/api/predict"
    return requests.post(url, timeout=60, files={"image": ("a.jpg", image)})


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_starts_both_and_sigterm_stops_both(registered_model, sample_images, tmp_path):
    predictor_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered_model.tracking_uri,
        "DAGSHUB_USERNAME": "",
        "DAGSHUB_TOKEN": "",
        "DAGSHUB_REPO": "",
    }
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as log:
        command = [
            sys.executable,
            "-m",
            "serving.serve",
            "--predictor-port",
            str(predictor_port),
            "--web-port",
            str(web_port),
            "--web-host",
            "127.0.0.1",
        ]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "press Ctrl-C" not in log_file.read_text():
            assert process.poll() is None, log_file.read_text()
            time.sleep(0.5)
        output = log_file.read_text()
        assert f"http://localhost:{web_port}/" in output and f"http://localhost:{predictor_port}" in output
        response = requests.post(
            f"http://127.0.0.1:{web_port}/api/predict",
            timeout=60,
            files={"image": ("a.jpg", sample_images.probe[0])},
        )
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == registered_model.version

        # A crashed predictor: the web app answers 503 (and stays alive) until the supervisor restarts it.
        pid = int(re.findall(r"starting the predictor \(pid (\d+)\)", output)[-1])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _predict(web_port, sample_images.probe[0]).status_code == 200:
            assert time.monotonic() < deadline, "the web app still answers 200 with the predictor killed"
            time.sleep(0.2)
        down = _predict(web_port, sample_images.probe[0])
        assert down.status_code == 503 and "not available" in down.json()["error"], down.text
        assert requests.get(f"http://127.0.0.1:{web_port}/livez", timeout=5).status_code == 200
        deadline = time.monotonic() + 240
        while "predictor is serving again" not in log_file.read_text():
            assert process.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.5)
        assert "restart 1 of 5" in log_file.read_text()
        assert _predict(web_port, sample_images.probe[0]).status_code == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log_file.read_text()
        assert not _listening(predictor_port) and not _listening(web_port)
        assert "stopped the predictor and the web app" in log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def test_serve_asks_for_the_champion_of_the_model_named_in_params(tmp_path):
    """`make serve` without MODEL_URI serves models:/<mlflow.model_name>@champion, whatever that name is."""
    params, default = (REPO / "params.yaml").read_text(), "  model_name: deepguard\n"
    assert default in params
    (tmp_path / "params.yaml").write_text(params.replace(default, "  model_name: renamed\n"))
    env = {
        **{key: value for key, value in os.environ.items() if key != "MODEL_URI"},
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}",  # a real, empty registry
        "PYTHONPATH": str(REPO),
        "DAGSHUB_USERNAME": "",
        "DAGSHUB_TOKEN": "",
        "DAGSHUB_REPO": "",
    }
    command = [sys.executable, "-m", "serving.serve", "--predictor-port", str(free_port())]
    command += ["--web-port", str(free_port())]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "serving: error: models:/renamed@champion: cannot resolve alias" in output
    # A first `make serve` before any pipeline run is told what to do.
    assert f"(in sqlite:///{tmp_path / 'empty.db'}; `make pipeline` trains and registers one)" in output
    assert "models:/deepguard@champion" not in output


@contextlib.contextmanager
def _taken_port(family: socket.AddressFamily = socket.AF_INET) -> Iterator[int]:
    """A port another program listens on, on the loopback address of ``family``."""
    with socket.socket(family, socket.SOCK_STREAM) as other:
        other.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    free = free_port()
    with _taken_port() as taken:
        check = [sys.executable, "-m", "serving.serve", "--check-ports"]
        done = subprocess.run(
            [*check, "--predictor-port", str(free), "--web-port", str(taken)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stdout) == (2, "")
        # It ends with the command to type on a port that is free (a newcomer may not know WEB_PORT's syntax).
        suggested = re.fullmatch(
            rf"python -m serving.serve: error: WEB_PORT={taken}: the port is in use; stop that program or "
            r"set WEB_PORT to a free port, e\.g\. `WEB_PORT=(\d+) make run`\n",
            done.stderr,
        )
        assert suggested is not None, done.stderr
        assert int(suggested[1]) not in (taken, free) and not port_in_use(int(suggested[1]))
        # serve itself refuses before it starts either server (once the other program held /ready with 200)
        served = subprocess.run(
            [sys.executable, "-m", "serving.serve", "--model-uri", "models:/deepguard/1"]
            + ["--predictor-port", str(taken), "--web-port", str(free)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    log = served.stdout + served.stderr
    assert served.returncode == 1, log
    assert f"PREDICTOR_PORT={taken}: the port is in use" in log
    assert "`make pipeline` updates it in place" in log
    assert re.search(
        r"; stop that program or set PREDICTOR_PORT to a free port, e\.g\. `PREDICTOR_PORT=\d+ make serve`",
        log,
    )
    assert "starting the predictor" not in log
    free_check = subprocess.run(
        [*check, "--predictor-port", str(free), "--web-port", str(taken)], cwd=REPO, env=env, timeout=120
    )
    assert free_check.returncode == 0


def test_a_program_on_the_ipv6_loopback_alone_holds_the_port():
    """macOS' AirPlay Receiver holds 5000 on ::1 too, where `localhost` goes first."""
    if not socket.has_ipv6:
        pytest.skip(on_this_machine("no IPv6"))
    try:
        with _taken_port(socket.AF_INET6) as port:
            assert port_in_use(port)
    except OSError as exc:
        pytest.skip(on_this_machine(f"no IPv6 loopback: {exc}"))
    assert not port_in_use(port)


def test_make_run_names_a_taken_port_before_the_pipeline(tmp_path):
    """The pipeline takes up to 45 minutes; a taken port must fail `make run` at once, not after it."""
    if not (REPO / ".venv" / ".installed").is_file():
        pytest.skip("`make setup` has not run in this checkout")
    with _taken_port() as taken:
        done = subprocess.run(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            # a data path that fails ingest at once, should the check let the pipeline start
            env={**os.environ, "WEB_PORT": str(taken), "DEEPGUARD_DATA": str(tmp_path / "missing.zip")},
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"error: WEB_PORT={taken}: the port is in use" in output
    assert "stages.ingest" not in output and "dvc repro" not in output


def test_a_taken_port_is_never_advised_onto_another_of_our_default_ports(monkeypatch):
    """8080 taken advised `PREDICTOR_PORT=8081 make run`: the predictor's opt-in gRPC port."""
    from serving import serve

    with _taken_port() as taken:
        monkeypatch.setattr(serve, "GRPC_PORT", taken + 1)
        monkeypatch.setattr(serve, "AIRFLOW_PORT", taken + 2)
        (line,) = serve.busy_ports(taken, free_port())
    assert f"PREDICTOR_PORT={taken + 1} " not in line and f"PREDICTOR_PORT={taken + 2} " not in line, line
    assert "e.g. `PREDICTOR_PORT=" in line, line


def test_on_macos_a_taken_default_web_port_names_airplay(monkeypatch):
    """macOS' AirPlay Receiver listens on 5000, the default WEB_PORT: the error says what holds it."""
    from serving import serve

    with _taken_port() as taken:
        monkeypatch.setattr(serve, "WEB_PORT", taken)  # the default, as 5000 is
        monkeypatch.setattr(serve.sys, "platform", "darwin")
        (line,) = serve.busy_ports(free_port(), taken)
        assert "AirPlay Receiver listens on 5000" in line
        monkeypatch.setattr(serve.sys, "platform", "linux")
        (line,) = serve.busy_ports(free_port(), taken)
        assert "AirPlay" not in line
