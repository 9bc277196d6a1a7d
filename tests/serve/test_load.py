"""The web app and the predictor as real servers under load: what one upload costs a gunicorn worker."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from .monitoring_helpers import own_store
from .serving_helpers import free_port, running, start_predictor

TIMEOUT = 120
MIB = 1024 * 1024


def noise_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels: about 3 bytes a pixel, as large as an image of this size gets."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def only_worker(master: int) -> int:
    """The pid of the one worker of a gunicorn master (WEB_WORKERS=1)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture(scope="module")
def predictor_url(tiny_model, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("load")
    manager, url = start_predictor(own_store(tiny_model, root), root / "predictor.log", "--no-monitoring")
    with manager:
        yield url


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak memory from /proc")
def test_a_large_batch_costs_the_web_worker_about_one_copy_of_its_files(predictor_url, tmp_path):
    """A web worker peaked at 5.5x a batch's bytes (340 MB for 32 files of 1.9 MB: the base64 text, the JSON
    and its bytes), so two large uploads at once passed the chart's 512 MiB limit and got the pod OOM-killed,
    cutting every upload on it. The files now go to the predictor as they are (V2's binary extension), part by
    part: joined into one body they were a second copy."""
    files = [noise_png(800, seed) for seed in range(16)]  # 16 x 1.9 MB, under the 64 MiB batch limit
    batch_mib = sum(map(len, files)) / MIB
    port = free_port()
    env = {"PREDICTOR_URL": predictor_url, "WEB_PORT": str(port), "WEB_WORKERS": "1"}
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "flask_app"], f"{url}/livez", tmp_path / "web.log", env) as master:
        worker = only_worker(master.pid)
        before = peak_rss_mib(worker)
        response = requests.post(
            f"{url}/api/predictions",
            files=[("image", (f"{i}.png", data)) for i, data in enumerate(files)],
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text[:500]
        assert len(response.json()["results"]) == len(files)
        grew = peak_rss_mib(worker) - before
    # The files read from the form: ~1x. With the body joined, ~2x; base64 in JSON, ~5x.
    assert grew < 1.5 * batch_mib, f"the worker's peak grew {grew:.0f} MiB for a {batch_mib:.0f} MiB batch"


def test_as_many_clients_as_a_worker_has_predictor_slots_are_never_told_busy(predictor_url, tmp_path):
    """gunicorn hands each connection to whichever worker wakes first, not to the idle one: with the old
    default of 4 threads (3 predictor slots a worker, 6 for the server) six clients got 67 % of their uploads
    answered 503 busy on an idle machine, four got 6 %. With the default settings (2 workers), as many
    clients as the old server had slots are all answered, however gunicorn spreads them."""
    port = free_port()
    env = {"PREDICTOR_URL": predictor_url, "WEB_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    # The old default server's 6 predictor slots; the default's workers now hold that many each.
    clients, uploads = 6, 12
    image = noise_png(32, 0)

    def client(_: int) -> list[int]:
        with requests.Session() as session:  # keep-alive, as a browser: each client stays on one worker
            return [
                session.post(
                    f"{url}/api/predict", files={"image": ("a.png", image)}, timeout=TIMEOUT
                ).status_code
                for _ in range(uploads)
            ]

    with (
        running([sys.executable, "-m", "flask_app"], f"{url}/livez", tmp_path / "web.log", env),
        ThreadPoolExecutor(clients) as pool,
    ):
        statuses = [status for answers in pool.map(client, range(clients)) for status in answers]
    refused = statuses.count(503)
    assert statuses == [200] * clients * uploads, (
        f"{refused} of {len(statuses)} answered busy: {set(statuses)}"
    )
