""".ci/run installs the Debian packages the tests use and `make test` does not (fake apt-get and sudo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDER = '#!/bin/sh\necho "{name} $* CI=$CI" >> "{log}"\n'


def _ci_run(tmp_path: Path, present: list[str], ci: str | None = None) -> list[str]:
    """Run .ci/run with only ``present`` of the tools on PATH; the commands it ran, one a line."""
    log = tmp_path / "commands.log"
    log.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(sys.executable)  # has venv and ensurepip
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root: apt-get runs under sudo
    (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "sudo $1" >> "{log}"\nexec "$@"\n')
    for name in ("apt-get", "make", *[tool for tool in present if tool != "chromium"]):
        (bin_dir / name).write_text(RECORDER.format(name=name, log=log))
    chromium = bin_dir / "chromium"
    if "chromium" in present:
        chromium.write_text("#!/bin/sh\n")
    for path in bin_dir.iterdir():
        if not path.is_symlink():
            path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=str(bin_dir), CHROMIUM=str(chromium))
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [str(bin_dir / "bash"), str(REPO / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_ci_run_installs_what_is_missing_with_a_fake_apt_get(tmp_path: Path) -> None:
    commands = _ci_run(tmp_path, present=["git", "prometheus"])  # promtool is in the same package
    packages = "curl chromium fonts-liberation prometheus"
    install = f"apt-get install -y -q --no-install-recommends {packages} CI=true"
    assert commands == [
        "sudo apt-get",
        "apt-get update -q CI=true",
        "sudo apt-get",
        install,
        "make test CI=true",
    ]


@pytest.mark.parametrize("ci", ["1", None])
def test_ci_run_with_every_tool_present_installs_nothing_and_sets_ci(tmp_path: Path, ci: str | None) -> None:
    # CI set by the runner is kept; unset, .ci/run sets it, so that no test skips there (tests/ci_skips.py).
    present = ["git", "curl", "chromium", "prometheus", "promtool"]
    assert _ci_run(tmp_path, present, ci) == [f"make test CI={ci or 'true'}"]


def test_every_pytest_run_of_make_test_reports_its_slowest_tests() -> None:
    # CI's log is where the maintainer sees which tests take its 90 minutes.
    built = ["-o", ".venv/.installed", "-o", ".venv-airflow/.installed", "-o", ".cache/k8s-tools/bin/helm"]
    done = subprocess.run(
        ["make", "-n", *built, "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    runs = [line for line in done.stdout.splitlines() if " -m pytest " in line]
    assert len(runs) == 3, runs  # k8s-check, test-dags, the rest
    assert all("--durations=" in line for line in runs), runs
