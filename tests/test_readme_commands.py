"""The README's main command in a fresh clone beside ../shared: `make run` trains, serves, stops on Ctrl-C.

Runs in a real ``git clone`` of this checkout's committed HEAD (uncommitted changes are not in it): DVC
behaves differently in a git checkout than in a temporary folder with ``--no-scm``. The edits are a user's:
``training.epochs: 1`` in the clone's params.yaml for a quick run, then ``evaluation.band_precision`` while it
serves.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests
from workspace import REPO, SAMPLE_ZIP, SHARED, free_port, require_sample

README_COMMAND = ["make", "run"]  # with DEEPGUARD_DATA=../shared/data/cifake-sample.zip, as in the README
SERVING_TIMEOUT_S = 1800  # setup from the warm uv cache + the pipeline (1 epoch) + both servers ready
STOP_TIMEOUT_S = 120


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _user_env(root: Path, predictor_port: int, web_port: int) -> dict[str, str]:
    """A user's shell: no credentials, no active virtualenv or outer make; free loopback ports."""
    dropped = ("KAGGLE_", "DAGSHUB_", "MLFLOW_", "DEEPGUARD_", "MAKE", "MFLAGS", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    # Drop this checkout's .venv/bin (`make test` puts it first): the clone must build and use its own.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))
    env.update(
        DEEPGUARD_DATA="../shared/data/cifake-sample.zip",
        KAGGLE_CONFIG_DIR=str(root / "no-kaggle"),  # a developer's ~/.kaggle would make `auto` pick Kaggle
        PREDICTOR_PORT=str(predictor_port),
        WEB_PORT=str(web_port),
        WEB_HOST="127.0.0.1",
    )
    warm_cache = REPO / ".cache" / "uv"
    if warm_cache.is_dir():
        # A real `uv pip sync` from the lock file, served from this checkout's cache instead of the network.
        env["UV_CACHE_DIR"] = str(warm_cache.resolve())
    return env


def _clone(root: Path) -> Path:
    """``git clone`` this checkout's HEAD into ``root/deepguard``, with ``root/shared`` beside it."""
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make on PATH")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: nothing to clone")
    (root / "shared").symlink_to(SHARED.resolve(), target_is_directory=True)
    clone = root / "deepguard"
    for command in (
        ["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)],
        ["git", "-C", str(clone), "checkout", "--quiet", "--detach", head.stdout.strip()],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    params = clone / "params.yaml"
    text = params.read_text()
    assert "\n  epochs: " in text
    params.write_text(text.replace("\n  epochs: ", "\n  epochs: 1  # quick run; was ", 1))
    return clone


def _wait_for(log_file: Path, marker: str, process: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = log_file.read_text()
        if marker in output:
            return output
        assert process.poll() is None, f"make run exited {process.returncode}:\n{output[-6000:]}"
        time.sleep(2)
    raise AssertionError(f"{marker!r} not seen after {timeout_s} s:\n{log_file.read_text()[-6000:]}")


def _probe_image() -> bytes:
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        return archive.read(sorted(n for n in archive.namelist() if n.startswith("test/FAKE/"))[1])


@pytest.mark.slow
def test_make_run_in_a_fresh_clone_serves_stops_on_ctrl_c_and_reruns_nothing(tmp_path: Path) -> None:
    require_sample()
    clone = _clone(tmp_path)
    predictor_port, web_port = free_port(), free_port()
    env = _user_env(tmp_path, predictor_port, web_port)
    log_file = tmp_path / "make-run.log"
    with log_file.open("w") as log:
        # Its own session and process group, like a terminal's foreground job, so Ctrl-C reaches all of it;
        # and, like one, SIGINT not ignored even when this test runs in a background job (which ignores it).
        process = subprocess.Popen(
            README_COMMAND,
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        output = _wait_for(log_file, "press Ctrl-C to stop both", process, SERVING_TIMEOUT_S)
        assert "data source: local (" in output and "cifake-sample.zip" in output
        # Progress under a pipe: make's output here is a file, not a terminal.
        assert re.search(r"epoch 1/1: .*val_auc 0\.\d{4}.* \| \S+ elapsed, about 0s left", output)

        web, predictor = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{predictor_port}"
        page = requests.get(f"{web}/", timeout=30)
        assert page.status_code == 200 and "DeepGuard" in page.text
        image = _probe_image()
        encoded = base64.b64encode(image).decode("ascii")
        v1 = requests.post(
            f"{predictor}/v1/models/deepguard:predict",
            json={"instances": [{"image": {"b64": encoded}}]},
            timeout=60,
        )
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"][0]["label"] in ("REAL", "FAKE")
        v2 = requests.post(
            f"{predictor}/v2/models/deepguard/infer",
            json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]},
            timeout=60,
        )
        assert v2.status_code == 200, v2.text
        outputs = {tensor["name"]: tensor["data"] for tensor in v2.json()["outputs"]}
        assert outputs["label"][0] in ("REAL", "FAKE")
        upload = requests.post(f"{web}/api/predict", files={"image": ("fake.jpg", image)}, timeout=60)
        assert upload.status_code == 200, upload.text
        assert upload.json()["model_version"] == "1"

        # An evaluation setting changed while it serves: `make pipeline` beside it reruns evaluate and
        # register on the same weights, and its deploy step has the running predictor serve the new champion.
        params, setting = clone / "params.yaml", "\n  band_precision: "
        assert f"{setting}0.99" in params.read_text()
        params.write_text(params.read_text().replace(f"{setting}0.99", f"{setting}0.6", 1))
        rerun = subprocess.run(
            ["make", "pipeline"], cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )
        rerun_output = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, rerun_output[-4000:]
        assert "Running stage 'evaluate'" in rerun_output and "Running stage 'train'" not in rerun_output
        assert "deepguard v2 is the new champion" in rerun_output, rerun_output[-4000:]
        assert requests.get(f"{predictor}/v2/models/deepguard", timeout=30).json()["versions"] == ["2"]
        upload = requests.post(f"{web}/api/predict", files={"image": ("fake.jpg", image)}, timeout=60)
        assert upload.status_code == 200 and upload.json()["model_version"] == "2", upload.text

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        status = process.wait(timeout=STOP_TIMEOUT_S)
        output = log_file.read_text()
        # Clean: the supervisor stopped both servers and exited 0 ("Error" would name a failed recipe);
        # make itself then re-raises SIGINT, as every interrupted make does (a shell shows 130).
        assert status == -signal.SIGINT, output[-4000:]
        assert "stopped the predictor and the web app" in output
        assert "Error" not in output.split("press Ctrl-C to stop both")[-1] and "Traceback" not in output
        assert not _listening(predictor_port) and not _listening(web_port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_S)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    again = subprocess.run(
        ["make", "pipeline"], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "Data and pipelines are up to date." in again.stdout + again.stderr
    assert "Running stage" not in again.stdout + again.stderr
    assert "no predictor is running" in again.stdout + again.stderr  # deploy: nothing to reload
    # DVC ran in the git checkout and touched nothing tracked; dvc.lock waits to be committed.
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    )
    assert sorted(status.stdout.splitlines()) == [" M params.yaml", "?? dvc.lock"]
