"""Sustained mixed traffic against a running predictor and web app: statuses, latencies, memory over time.

Run from the repository root against ``make serve`` (or any predictor and web app):
``python bench/serving_load_bench.py --requests 5000 --clients 16 --predictor-pid P --web-pid W``.
Clients (keep-alive, as browsers) take turns at V1 (one image), V2 (two), ``POST /api/predict`` and
``POST /api/predictions`` (four, with heatmaps), CIFAKE images of ``--data``. It prints, per kind, the count,
p50/p99 and statuses, and (with the pids: the predictor's, gunicorn's master's) the resident memory, open
descriptors and threads of the predictor and of each web worker at the start, every quarter and the end: a
leak shows as growth across quarters. A 503 "busy" from the web app is its own limit (predictor calls per
worker); any other 5xx or a transport error is counted apart and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import collections
import itertools
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
KINDS = ("v1", "v2", "web", "web-batch")


def load_images(archive: Path, count: int = 16) -> list[bytes]:
    """The first ``count`` test images of a CIFAKE zip."""
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith((".jpg", ".png")))
        return [zf.read(name) for name in names[:: max(1, len(names) // count)][:count]]


def process_facts(pid: int) -> tuple[int, int, int]:
    """(resident MiB, open descriptors, threads) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rss_mib = int(fields["VmRSS"].split()[0]) // 1024
    return rss_mib, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def snapshot(predictor_pid: int | None, web_pid: int | None) -> dict[str, tuple[int, int, int]]:
    """The facts of the predictor and of each worker of the gunicorn master ``web_pid``."""
    pids = {"predictor": predictor_pid} if predictor_pid else {}
    if web_pid:
        children = Path(f"/proc/{web_pid}/task/{web_pid}/children").read_text().split()
        pids |= {f"web worker {child}": int(child) for child in children}
    return {name: process_facts(pid) for name, pid in pids.items()}


def sender(
    kind: str, predictor: str, web: str, images: list[bytes]
) -> Callable[[requests.Session, int], int]:
    """A function sending one request of ``kind`` (image ``i``) and returning its status."""
    encoded = [base64.b64encode(image).decode() for image in images]

    def send(session: requests.Session, i: int) -> int:
        a, b = i % len(images), (i + 1) % len(images)
        if kind == "v1":
            body = {"instances": [{"image": {"b64": encoded[a]}}]}
            return session.post(f"{predictor}/v1/models/deepguard:predict", json=body, timeout=60).status_code
        if kind == "v2":
            tensor = {"name": "image", "datatype": "BYTES", "shape": [2], "data": [encoded[a], encoded[b]]}
            url = f"{predictor}/v2/models/deepguard/infer"
            return session.post(url, json={"inputs": [tensor]}, timeout=60).status_code
        if kind == "web":
            return session.post(
                f"{web}/api/predict", files={"image": ("a.jpg", images[a])}, timeout=60
            ).status_code
        files = [("image", (f"{j}.jpg", images[(a + j) % len(images)])) for j in range(4)]
        url = f"{web}/api/predictions"
        return session.post(url, files=files, data={"explain": "true"}, timeout=60).status_code

    return send


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor-url", default="http://127.0.0.1:8080")
    parser.add_argument("--web-url", default="http://127.0.0.1:5000")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--predictor-pid", type=int, help="the predictor's pid, for its memory")
    parser.add_argument("--web-pid", type=int, help="gunicorn's master pid, for its workers' memory")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "cifake-sample.zip")
    args = parser.parse_args()
    images = load_images(args.data)
    senders = {kind: sender(kind, args.predictor_url, args.web_url, images) for kind in KINDS}
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    statuses: collections.Counter[tuple[str, int | str]] = collections.Counter()
    numbers, lock = itertools.count(), threading.Lock()
    quarter = max(1, args.requests // 4)
    print("start", snapshot(args.predictor_pid, args.web_pid), "(RSS MiB, descriptors, threads)", flush=True)

    def client() -> None:
        with requests.Session() as session:
            while (i := next(numbers)) < args.requests:
                kind, started = KINDS[i % len(KINDS)], time.perf_counter()
                try:
                    status: int | str = senders[kind](session, i)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                with lock:
                    latencies[kind].append(time.perf_counter() - started)
                    statuses[(kind, status)] += 1
                    if i and i % quarter == 0:
                        print(f"after {i}", snapshot(args.predictor_pid, args.web_pid), flush=True)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    print("end", snapshot(args.predictor_pid, args.web_pid), flush=True)
    rate = args.requests / elapsed
    print(f"{args.requests} requests from {args.clients} clients in {elapsed:.1f} s: {rate:.0f}/s")
    for kind in KINDS:
        times = sorted(latencies[kind])
        codes = {status: n for (k, status), n in sorted(statuses.items(), key=str) if k == kind}
        p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
        print(f"  {kind:9} n={len(times):5} p50={p50:5.0f} ms p99={p99:5.0f} ms {codes}")
    failed = sum(
        n
        for (kind, status), n in statuses.items()
        if not (status == 200 or (status == 503 and "web" in kind))
    )
    print(f"failures (5xx other than the web app's busy 503, transport errors): {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
