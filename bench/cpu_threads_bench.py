"""Benchmark: training throughput on this CPU under TensorFlow's thread-pool and oneDNN settings.

Each setting runs in a fresh process (oneDNN and the thread pools are fixed when TensorFlow starts): the
default network fits random 32x32 images; the rate leaves out the first epoch (tracing). The defaults are the
baseline; every other row prints its ratio to them.
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

REPO = Path(__file__).resolve().parents[1]
# (label, environment, intra-op threads, inter-op threads); 0 = TensorFlow's default (all cores).
SETTINGS: list[tuple[str, dict[str, str], int, int]] = [
    ("default (oneDNN on, pools 0/0)", {}, 0, 0),
    ("intra 2, inter 1", {}, 2, 1),
    ("intra 1, inter 1", {}, 1, 1),
    ("intra 2, inter 2", {}, 2, 2),
    ("oneDNN off", {"TF_ENABLE_ONEDNN_OPTS": "0"}, 0, 0),
]


def child(images: int, epochs: int, intra: int, inter: int) -> None:
    """Fit and print ``{"images_per_second": ...}`` as the last line of stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from core.config import load_params
    from stages.architectures import build_model

    params = load_params(REPO / "params.yaml")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(images) % 2).astype("float32")
    model = build_model(
        params.model.architecture,
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
    seconds: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.__setitem__(-1, seconds[-1] + time.perf_counter()),
    )
    model.fit(x, y, batch_size=params.training.batch_size, epochs=epochs, verbose=0, callbacks=[timer])
    steady = seconds[1:]
    print(json.dumps({"images_per_second": len(steady) * images / sum(steady)}))


def main() -> None:
    """Run every setting in its own process (twice, interleaved, to see the load's noise); print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3, help="the first is left out of the rate")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, type=int, metavar=("INTRA", "INTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.images, args.epochs, *args.child)
        return
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    simd = sorted({f for f in flags.split() if f.startswith(("avx", "amx"))})
    print(
        f"{os.cpu_count()} CPUs; SIMD: {' '.join(simd) or 'unknown'}; load average {os.getloadavg()[0]:.1f}"
    )
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, env, intra, inter in SETTINGS:
            command = [sys.executable, __file__, "--images", str(args.images), "--epochs", str(args.epochs)]
            result = subprocess.run(
                [*command, "--child", str(intra), str(inter)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            rate = json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]
            rates.setdefault(label, []).append(rate)
            print(f"  {label}: {rate:.0f} img/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    base = statistics.median(rates[SETTINGS[0][0]])
    print(f"\n{'setting':32s} {'median img/s':>12s} {'x':>5s}  runs")
    for label, values in rates.items():
        median = statistics.median(values)
        print(f"{label:32s} {median:>12.0f} {median / base:>5.2f}  {' '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
