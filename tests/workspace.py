"""Test helpers: where ../shared is, pipeline workspaces, and running stages and DVC in them as processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    import keras

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE_ZIP = SHARED / "data" / "cifake-sample.zip"
FULL_ZIP = SHARED / "data" / "cifake.zip"
# Copied into a workspace so that dvc.yaml's code dependencies resolve there, as in a clone.
WORKSPACE_FILES = ("core", "stages", "params.yaml", "dvc.yaml", ".dvcignore")


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, including those of the models nested in it."""
    import keras  # here, not at the top: most tests that use this module never load a model

    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def require_sample() -> Path:
    """The shared CIFAKE sample, or a skip that says why."""
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP} not found: these tests read the shared CIFAKE sample (../shared/data)")
    return SAMPLE_ZIP


def stage_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for stage processes: this interpreter first on PATH, the workspace's MLflow store,
    no credentials inherited from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAGGLE_", "DAGSHUB_", "MLFLOW_", "DEEPGUARD_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        KAGGLE_CONFIG_DIR=str(root / ".no-kaggle"),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_stage(
    name: str, root: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stages.<name>`` in a workspace, as DVC or a pod would."""
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"stages.{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def make_workspace(root: Path) -> Path:
    """Lay out a pipeline workspace (the code, params.yaml, dvc.yaml) in ``root``, as a clone has it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    return root


def dvc(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the DVC of this environment in a workspace."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


@dataclass(frozen=True)
class TrainedWorkspace:
    """A workspace where `dvc repro` ran all six stages on the CIFAKE sample with one epoch."""

    root: Path
    tracking_uri: str
    model_name: str
    env: dict[str, str]
    repro_output: str


STARTUP_TIMEOUT_S = 180


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now: the kernel's pick, or with DEEPGUARD_TEST_PORTS=FIRST-LAST one
    of that range not given before in this session (a machine shared with others who keep to theirs; a port
    given to a server that has not bound it yet must not be given again)."""
    span = os.environ.get("DEEPGUARD_TEST_PORTS")
    first, last = (int(end) for end in span.split("-")) if span else (0, 0)
    for port in range(first, last + 1):
        if port in _GIVEN_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port:
                _GIVEN_PORTS.add(port)
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port left in DEEPGUARD_TEST_PORTS={span}")


@contextlib.contextmanager
def running(
    command: list[str],
    ready_url: str,
    log_file: Path,
    env: dict[str, str],
    cwd: Path = REPO,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """Start a server process, wait (bounded) until ``ready_url`` answers 200, and stop it afterwards.

    Args:
        command: The server's command line.
        ready_url: Polled until it answers 200.
        log_file: Receives the server's stdout and stderr; quoted when it dies or never gets ready.
        env: The complete environment of the server.
        cwd: Its working folder (default: the repository).
        timeout_s: How long it may take to become ready.
    """
    with log_file.open("w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                log = log_file.read_text()[-4000:]
                raise RuntimeError(f"server exited with {process.returncode}:\n{log}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                log = log_file.read_text()[-4000:]
                raise RuntimeError(f"{ready_url} not ready after {timeout_s} s:\n{log}")
            time.sleep(0.25)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
