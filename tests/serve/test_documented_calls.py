"""The curl calls of docs/serving.md, pasted as a reader would, against the real predictor with a photo."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .serving_helpers import Server

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
DOCUMENTED_PORT = "localhost:8080"

# macOS' base64 knows -b -D -d -h -i -o, never writes line breaks unless told, and calls GNU's -w an invalid
# option; this stand-in behaves so, to run the docs as a Mac user does (the only fake here).
MACOS_BASE64 = f"""#!{sys.executable}
import base64, getopt, sys
try:
    options, rest = getopt.getopt(sys.argv[1:], "b:Ddhi:o:")
except getopt.GetoptError as exc:
    sys.exit(f"base64: invalid option -- {{exc.opt}}")
if rest:
    sys.exit("base64: extra operand")
source = dict(options).get("-i", "-")
data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
sys.stdout.write(base64.b64encode(data).decode() + "\\n")
"""


def _documented_calls() -> dict[str, str]:
    """The bash blocks that call the predictor, by the path they post to."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    calls = {}
    for block in blocks:
        if (path := re.search(rf"{DOCUMENTED_PORT}(/\S+)", block)) is not None:
            calls[path.group(1)] = block
    return calls


def _photo(path: Path) -> Path:
    """A photo-sized JPEG: its base64 is over the 128 KiB one command-line argument may hold."""
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    path.write_bytes(buffer.getvalue())
    assert len(buffer.getvalue()) * 4 / 3 > 128 * 1024
    return path


@pytest.mark.parametrize("platform", ["linux", "macos-base64-fake"])
def test_the_documented_curl_calls_answer_for_a_photo(
    predictor: Server, tmp_path: Path, platform: str
) -> None:
    # `base64 -w0 photo.jpg` inside `-d '...'`: "Argument list too long" for any photo over ~96 KB, and
    # "invalid option -- w" on a Mac.
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    calls = _documented_calls()
    assert set(calls) == {
        "/v2/models/deepguard/infer",
        "/v1/models/deepguard:predict",
        "/v1/models/deepguard:explain",
    }
    _photo(tmp_path / "photo.jpg")
    path = str(Path("/usr/bin:/bin"))
    if platform != "linux":
        shims = tmp_path / "bin"
        shims.mkdir()
        (shims / "base64").write_text(MACOS_BASE64)
        (shims / "base64").chmod(0o755)
        path = f"{shims}:{path}"
    address = predictor.url.removeprefix("http://")
    for endpoint, block in calls.items():
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.replace(DOCUMENTED_PORT, address)],
            cwd=tmp_path,
            env={"PATH": path, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and not done.stderr, f"{endpoint}: {done.stderr}"
        answer = json.loads(done.stdout)
        if endpoint.endswith("infer"):
            outputs = {tensor["name"]: tensor["data"] for tensor in answer["outputs"]}
            assert outputs["input_size"] == [640, 480] and outputs["label"][0] in ("REAL", "FAKE")
        else:
            (result,) = answer["explanations" if endpoint.endswith("explain") else "predictions"]
            assert result["label"] in ("REAL", "FAKE"), answer
