"""Benchmark: training throughput on this CPU under TensorFlow's thread-pool, oneDNN and precision settings.

Each setting runs in a fresh process (oneDNN and the thread pools are fixed when TensorFlow starts): the
default network (or ``--architecture``) fits random 32x32 images fed the way the pipeline feeds them
(``stages.augment``'s ``tf.data`` pipeline with the configured degradations, one ``fit``); the rate leaves out
the first epoch (tracing). Each row also prints the cores the process kept busy (CPU time / wall time), which
tells a slow setting from a slow machine. The defaults in float32 are the baseline; every other row prints its
ratio to them. The mixed bfloat16 row is what ``training.mixed_precision: auto`` picks on CPUs with AMX.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from core.config import Architecture  # noqa: E402  (light: no TensorFlow in the parent process)

# (label, environment, intra-op threads, inter-op threads, Keras dtype policy); 0 threads = TensorFlow's
# default (all cores).
SETTINGS: list[tuple[str, dict[str, str], int, int, str]] = [
    ("default (oneDNN on, pools 0/0)", {}, 0, 0, "float32"),
    ("intra 2, inter 1", {}, 2, 1, "float32"),
    ("intra 1, inter 1", {}, 1, 1, "float32"),
    ("intra 2, inter 2", {}, 2, 2, "float32"),
    ("oneDNN off", {"TF_ENABLE_ONEDNN_OPTS": "0"}, 0, 0, "float32"),
    ("mixed bfloat16", {}, 0, 0, "mixed_bfloat16"),
]


def child(images: int, epochs: int, intra: int, inter: int, policy: str, architecture: str | None) -> None:
    """Fit and print ``{"images_per_second": ...}`` as the last line of stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from core.config import load_params
    from stages.architectures import build_model
    from stages.augment import training_dataset

    params = load_params(REPO / "params.yaml")
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(images) % 2).astype("float32")
    model = build_model(
        architecture or params.model.architecture,
        image_size=32,
        dropout=params.model.dropout,
        pretrained_weights="none",
        augmentation=params.augmentation,
        mean=[0.5] * 3,
        variance=[0.06] * 3,
        seed=0,
        spectrum_branch=params.model.spectrum_branch,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
    dataset = training_dataset(
        x,
        y,
        batch_size=params.training.batch_size,
        seed=0,
        degradations=params.augmentation.degradations,
        mixup_alpha=params.augmentation.mixup_alpha,
        cutmix=params.augmentation.cutmix,
    )
    marks: list[tuple[float, float]] = []  # (wall, process CPU) at the end of each epoch

    def mark(*_) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    timer = keras.callbacks.LambdaCallback(on_epoch_end=mark)
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
    wall, cpu = (marks[-1][i] - marks[0][i] for i in (0, 1))  # epochs 2.. (the first traces)
    print(json.dumps({"images_per_second": (len(marks) - 1) * images / wall, "cores": cpu / wall}))


def main() -> None:
    """Run every setting in its own process (twice, interleaved, to see the load's noise); print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3, help="the first is left out of the rate")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--architecture", choices=get_args(Architecture), help="default: params.yaml's")
    parser.add_argument(
        "--settings", nargs="+", type=int, metavar="N", help="rows of the table to run (0: the baseline)"
    )
    parser.add_argument("--child", nargs=3, metavar=("INTRA", "INTER", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first (tracing) is left out of the rate")
    if args.child:
        intra, inter, policy = args.child
        child(args.images, args.epochs, int(intra), int(inter), policy, args.architecture)
        return
    settings = [SETTINGS[i] for i in sorted({0, *(args.settings or range(len(SETTINGS)))})]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    simd = sorted({f for f in flags.split() if f.startswith(("avx", "amx"))})
    print(
        f"{os.cpu_count()} CPUs; SIMD: {' '.join(simd) or 'unknown'}; load average {os.getloadavg()[0]:.1f}; "
        f"{args.architecture or 'the default network'}"
    )
    rates: dict[str, list[float]] = {}
    cores: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, env, intra, inter, policy in settings:
            command = [sys.executable, __file__, "--images", str(args.images), "--epochs", str(args.epochs)]
            command += ["--architecture", args.architecture] if args.architecture else []
            result = subprocess.run(
                [*command, "--child", str(intra), str(inter), policy],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            rates.setdefault(label, []).append(measured["images_per_second"])
            cores.setdefault(label, []).append(measured["cores"])
            print(
                f"  {label}: {measured['images_per_second']:.0f} img/s on {measured['cores']:.2f} cores "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    base = statistics.median(rates[SETTINGS[0][0]])
    print(f"\n{'setting':32s} {'median img/s':>12s} {'x':>5s} {'cores':>5s}  runs")
    for label, values in rates.items():
        median = statistics.median(values)
        print(
            f"{label:32s} {median:>12.0f} {median / base:>5.2f} {statistics.median(cores[label]):>5.2f}  "
            f"{' '.join(f'{v:.0f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
