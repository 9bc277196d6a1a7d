"""`make bench` and `make bench-full` on a machine without the CIFAKE archive beside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", ["bench", "bench-full"])  # bench-gpu: "no GPU" comes first
def test_a_missing_bench_archive_names_bench_data_before_any_benchmark(tmp_path: Path, target: str) -> None:
    # The first script said "pass --data with a CIFAKE zip": a flag that make sets and the user cannot.
    if shutil.which("make") is None:
        pytest.skip("no make")
    checkout = tmp_path / "deepguard"  # a copy of the Makefile alone, with no ../shared beside it
    checkout.mkdir()
    shutil.copy(REPO / "Makefile", checkout / "Makefile")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "MAKE", "MFLAGS"))}
    done = subprocess.run(
        # -o: the environments count as built, so nothing is set up.
        ["make", "-o", ".venv/.installed", "-o", ".venv-airflow/.installed", target],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    missing = tmp_path / "shared" / "data" / "cifake.zip"
    assert done.returncode == 2
    assert done.stdout == (
        f"{target}: BENCH_DATA={missing}: no such archive or folder; set BENCH_DATA to CIFAKE (a zip or "
        "folder in the Kaggle layout)\n"
    )
    assert "bench/" not in done.stdout + done.stderr  # no benchmark started
