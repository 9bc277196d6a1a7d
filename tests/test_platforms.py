"""The environments a laptop installs (`make setup`, `make setup-airflow`) resolve on each supported platform.

TensorFlow's CPU-only package has wheels for x86-64 Linux alone, so a lock resolved there failed `make run`
on every Mac and every arm64 Linux machine. The two laptop locks are universal (`uv pip compile --universal`);
the image locks stay linux/amd64, the platform the images are built for. `uv.lock` (uv itself, which
`make setup` installs with pip first) is universal too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
UV = REPO / ".cache" / "uv-bin" / "bin" / "uv"
LAPTOP_LOCKS = ("dev.lock", "airflow.lock", "uv.lock")  # uv.lock: uv itself, installed by pip
# uv's platform name -> the marker environment of a CPython 3.11 there
PLATFORMS = {
    "x86_64-unknown-linux-gnu": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "aarch64-unknown-linux-gnu": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "aarch64-apple-darwin": {"sys_platform": "darwin", "platform_machine": "arm64"},
}


def _pins(lock: str, platform: dict[str, str]) -> dict[str, str]:
    """The lock's ``name -> version`` pins whose markers hold on ``platform``."""
    pins = {}
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            requirement = Requirement(line.rstrip(" \\"))
            environment = {"python_version": "3.11", "python_full_version": "3.11.9", **platform}
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pins[requirement.name] = str(requirement.specifier).removeprefix("==")
    return pins


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_stage_environment_gets_one_tensorflow_of_the_locked_version_everywhere(platform: str) -> None:
    pins = _pins("dev.lock", PLATFORMS[platform])
    tensorflows = {name: pins[name] for name in ("tensorflow", "tensorflow-cpu") if name in pins}
    expected = "tensorflow-cpu" if platform.startswith("x86_64-unknown-linux") else "tensorflow"
    assert list(tensorflows) == [expected], f"{platform}: {tensorflows}"
    stages_lock = _pins("stages.lock", PLATFORMS["x86_64-unknown-linux-gnu"])
    assert tensorflows[expected] == stages_lock["tensorflow-cpu"], "images and laptops run one TensorFlow"


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("lock", LAPTOP_LOCKS)
def test_every_pin_of_a_laptop_lock_has_a_distribution_for_the_platform(
    lock: str, platform: str, tmp_path: Path
) -> None:
    """Asks the package index, as `make setup` would there: a wheel for the platform or a source archive."""
    if not UV.is_file():
        pytest.skip(f"{UV} missing: `make setup` installs it")
    done = subprocess.run(
        [str(UV), "pip", "install", "--dry-run", "--no-deps", "--require-hashes", "--python-version", "3.11"]
        + ["--python-platform", platform, "--target", str(tmp_path), "-r", str(REPO / "requirements" / lock)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and re.search(r"Failed to fetch|dns error|connect|timed out", done.stderr):
        reason = f"the package index is out of reach: {done.stderr.strip().splitlines()[-1]}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI installs from it")  # as tests/serve/test_prometheus.py does
        pytest.skip(reason)
    assert done.returncode == 0, done.stderr
    assert re.search(r"Would install \d+ packages?\b", done.stderr), done.stderr
