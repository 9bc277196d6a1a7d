"""bench/gpu_bench.py without a GPU, and the GPU params profile it trains with."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_without_a_gpu_says_so_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--data", "/nonexistent/cifake.zip"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no GPU visible to Keras (tensorflow backend): nothing to measure" in result.stdout


def test_gpu_profile_overrides_only_its_keys() -> None:
    base = load_params(REPO / "params.yaml")
    gpu = load_params(REPO / "params.yaml", profile=REPO / "params-gpu.yaml")
    assert gpu.training.batch_size == 512 and gpu.training.mixed_precision == "on"
    assert gpu.training.time_budget_minutes is None
    assert gpu.model == base.model and gpu.augmentation == base.augmentation
    # Command-line overrides still win over the profile.
    assert (
        load_params(REPO / "params.yaml", ["training.epochs=3"], REPO / "params-gpu.yaml").training.epochs
        == 3
    )


def test_a_profile_with_an_unknown_key_names_the_profile_and_the_key(tmp_path: Path) -> None:
    profile = tmp_path / "params-odd.yaml"
    profile.write_text("training:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"params-odd.yaml: .*unknown key training.batch_sise"):
        load_params(REPO / "params.yaml", profile=profile)


SAMPLE = REPO / ".." / "shared" / "data" / "cifake-sample.zip"


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"needs {SAMPLE} (../shared is not in a user's clone)")
def test_gpu_bench_on_the_cpu_trains_the_profile_and_prints_its_figures() -> None:
    """--cpu: the script's own training path, here on TensorFlow; the GPU run differs only in its device."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [
            *(sys.executable, "bench/gpu_bench.py", "--cpu", "--data", str(SAMPLE), "--per-class", "150"),
            *("--set", "training.epochs=2", "--set", 'training.mixed_precision="off"'),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "SimpleCNN, tensorflow backend, 0 GPU(s); held-out accuracy by epoch:" in lines
    assert len(lines[lines.index(next(line for line in lines if "by epoch" in line)) + 1].split()) == 2
    assert re.fullmatch(r"target 0\.985 not reached in 2 epochs \(best 0\.\d{4}\); \d+ img/s", lines[-1])
