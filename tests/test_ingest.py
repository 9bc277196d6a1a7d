"""Data tier: ingest's sources, validation, deduplication, leakage checks and one-line errors."""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workspace import make_workspace, require_sample, run_stage, stage_env

from core.config import load_params
from core.pipeline import ARCHIVE
from stages import sources
from stages.ingest import ingest

REPO = Path(__file__).resolve().parents[1]


def jpeg(seed: int, size: int = 32, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 4 if mode == "RGBA" else 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture()
def defective_zip(tmp_path: Path) -> Path:
    """Three good images per split/class plus one of each defect ingest must catch."""
    files = {
        f"{split}/{cls}/{i}.jpg": jpeg(hash((split, cls, i)) % 2**32)
        for split in ("train", "test")
        for cls in ("REAL", "FAKE")
        for i in range(3)
    }
    files["train/FAKE/dup.jpg"] = files["train/FAKE/0.jpg"]  # duplicate within train
    files["test/FAKE/leak.jpg"] = files["train/FAKE/1.jpg"]  # test image that is also in train
    files["train/REAL/corrupt.jpg"] = jpeg(99)[:150]
    files["train/REAL/alpha.png"] = jpeg(98, mode="RGBA", fmt="PNG")
    files["test/REAL/big.jpg"] = jpeg(97, size=40)
    files["train/REAL/notes.txt"] = b"not an image: skipped by suffix"
    return make_zip(tmp_path / "defective.zip", files)


def _ingest(path: Path, tmp_path: Path, **overrides: str) -> dict:
    params = load_params(REPO / "params.yaml", [f"data.{k}={v}" for k, v in overrides.items()])
    source = sources.Source("local", str(path), "test", "test")
    return ingest(sources.iter_entries(path), params.data, source, tmp_path / "raw")


def test_defects_are_dropped_and_counted(defective_zip: Path, tmp_path: Path) -> None:
    report = _ingest(defective_zip, tmp_path)
    assert report["duplicates_within_split"] == {"train": {"FAKE": 1}}
    assert report["test_in_train"] == {"test": {"FAKE": 1}}
    assert report["rejected"] == {
        "corrupt or truncated image": 1,
        "mode RGBA, expected RGB": 1,
        "size 40x40, expected 32x32": 1,
    }
    assert report["kept"] == {"test": {"FAKE": 3, "REAL": 3}, "train": {"FAKE": 3, "REAL": 3}}
    names = zipfile.ZipFile(tmp_path / "raw" / ARCHIVE).namelist()
    assert len(names) == 12 and all(n.count("/") == 2 for n in names)
    assert any("alpha.png" in example for example in report["examples"]["mode RGBA, expected RGB"])


def test_a_folder_works_like_a_zip(defective_zip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    zipfile.ZipFile(defective_zip).extractall(folder)
    assert _ingest(folder, tmp_path / "a")["kept"] == _ingest(defective_zip, tmp_path / "b")["kept"]


def test_sample_per_class_caps_each_split_and_class(defective_zip: Path, tmp_path: Path) -> None:
    report = _ingest(defective_zip, tmp_path, sample_per_class="2")
    assert report["kept"] == {"test": {"FAKE": 2, "REAL": 2}, "train": {"FAKE": 2, "REAL": 2}}


def test_ingest_is_deterministic(defective_zip: Path, tmp_path: Path) -> None:
    first = _ingest(defective_zip, tmp_path / "a")
    second = _ingest(defective_zip, tmp_path / "b")
    assert first["data_hash"] == second["data_hash"]
    assert (tmp_path / "a/raw" / ARCHIVE).read_bytes() == (tmp_path / "b/raw" / ARCHIVE).read_bytes()
    # The hash is the lineage of the labelled data: one image moved to the other class is other data.
    with zipfile.ZipFile(defective_zip) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["train/FAKE/moved.jpg"] = files.pop("train/REAL/0.jpg")
    relabelled = _ingest(make_zip(tmp_path / "relabelled.zip", files), tmp_path / "c")
    assert relabelled["kept"] == {"test": {"FAKE": 3, "REAL": 3}, "train": {"FAKE": 4, "REAL": 2}}
    assert relabelled["data_hash"] != first["data_hash"]


def test_synthetic_source_is_deterministic_and_says_so(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml", ["data.synthetic_per_class=20"])
    source = sources.Source("synthetic", "generated", "x", "test")
    from stages.synthetic import generate

    first = ingest(generate(20, 32), params.data, source, tmp_path / "a")
    second = ingest(generate(20, 32), params.data, source, tmp_path / "b")
    assert first["synthetic"] is True and "SYNTHETIC" in first["notice"]
    assert first["kept"] == {"test": {"FAKE": 4, "REAL": 4}, "train": {"FAKE": 20, "REAL": 20}}
    assert first["data_hash"] == second["data_hash"]


@pytest.mark.parametrize("size", [48, 100, 256, 512])
def test_synthetic_data_has_every_image_size_params_accepts(size: int, tmp_path: Path) -> None:
    """data.image_size takes 8-512; the generator made only powers of two (a 100-pixel run had every FAKE
    image rejected as 64x64) and the photo crops died on a ValueError traceback from 213 pixels up."""
    params = load_params(REPO / "params.yaml", [f"data.image_size={size}", "data.synthetic_per_class=10"])
    source = sources.Source("synthetic", "generated", "x", "test")
    from stages.synthetic import generate

    report = ingest(generate(10, size), params.data, source, tmp_path)
    assert report["rejected"] == {}
    assert report["kept"] == {"test": {"FAKE": 2, "REAL": 2}, "train": {"FAKE": 10, "REAL": 10}}


def test_auto_source_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml").data
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "DEEPGUARD_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert sources.locate(params).kind == "synthetic"
    monkeypatch.setenv("DEEPGUARD_DATA", str(tmp_path))
    assert sources.locate(params).kind == "local"
    (tmp_path / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    chosen = sources.locate(params)
    assert chosen.kind == "kaggle" and chosen.reason.startswith("Kaggle credentials found")
    assert f"for {tmp_path} set data.source: local" in chosen.reason  # the archive left aside is named
    monkeypatch.delenv("DEEPGUARD_DATA")
    assert sources.locate(params).reason == "Kaggle credentials found"


def test_a_data_path_the_configured_source_does_not_use_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DEEPGUARD_DATA", str(tmp_path / "cifake.zip"))
    params = load_params(REPO / "params.yaml", ["data.source=synthetic"]).data
    with caplog.at_level("WARNING", logger="stages.sources"):
        assert sources.locate(params).kind == "synthetic"
    expected = f"DEEPGUARD_DATA={tmp_path / 'cifake.zip'} is set but not used: data.source is synthetic"
    assert expected in caplog.text


def test_no_valid_images_left_says_why(tmp_path: Path) -> None:
    """The data report is not written when ingest fails: the error itself must say why every image went."""
    files = {
        f"{split}/{cls}/{i}.jpg": jpeg(hash((split, cls, i)) % 2**32, size=64)
        for split in ("train", "test")
        for cls in ("REAL", "FAKE")
        for i in range(3)
    }
    with pytest.raises(sources.SourceError) as error:
        _ingest(make_zip(tmp_path / "large.zip", files), tmp_path)
    message = str(error.value)
    assert "no valid images left in train/REAL" in message
    assert "3 found, 3 rejected (3 size 64x64, expected 32x32)" in message, message


def test_a_folder_sources_fingerprint_changes_with_its_images(
    monkeypatch: pytest.MonkeyPatch, defective_zip: Path, tmp_path: Path
) -> None:
    """DVC reruns ingest only when data/source.json changes: a folder's own mtime misses edits inside it."""
    folder = tmp_path / "cifake"
    with zipfile.ZipFile(defective_zip) as archive:
        archive.extractall(folder)
    params = load_params(REPO / "params.yaml", ["data.source=local"]).data
    monkeypatch.setenv("DEEPGUARD_DATA", str(folder))
    before = sources.locate(params).fingerprint
    (folder / "train" / "FAKE" / "new.jpg").write_bytes(jpeg(1234))
    added = sources.locate(params).fingerprint
    assert added != before
    (folder / "test" / "REAL" / "0.jpg").unlink()
    removed = sources.locate(params).fingerprint
    assert removed not in (before, added)
    (folder / "train" / "REAL" / "more-notes.txt").write_text("not an image: skipped")
    assert sources.locate(params).fingerprint == removed


def test_kaggle_path_with_a_fake_kaggle_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Kaggle is unreachable here: a fake KaggleApi at the network boundary 'downloads' the sample zip."""
    sample = require_sample()
    kaggle_api = importlib.import_module("kaggle.api.kaggle_api_extended")  # kaggle.api is shadowed

    calls = []

    class FakeKaggleApi:
        def authenticate(self) -> None:
            calls.append("authenticate")

        def dataset_download_files(self, dataset: str, path: str, unzip: bool, quiet: bool) -> None:
            calls.append(dataset)
            shutil.copy(sample, Path(path) / f"{dataset.split('/')[-1]}.zip")

    monkeypatch.setattr(kaggle_api, "KaggleApi", FakeKaggleApi)
    archive = sources.download_kaggle("birdy654/cifake-real-and-ai-generated-synthetic-images", tmp_path)
    assert calls == ["authenticate", "birdy654/cifake-real-and-ai-generated-synthetic-images"]
    assert sum(1 for _ in sources.iter_entries(archive)) == 2500


def test_kaggle_download_failure_from_a_fake_offline_api_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kaggle_api = importlib.import_module("kaggle.api.kaggle_api_extended")  # kaggle.api is shadowed

    class FakeOfflineKaggleApi:
        def authenticate(self) -> None:
            pass

        def dataset_download_files(self, *args, **kwargs) -> None:
            raise ConnectionError("network unreachable")

    monkeypatch.setattr(kaggle_api, "KaggleApi", FakeOfflineKaggleApi)
    # Offline may pass: transient (exit 75), so the Airflow task retries it.
    with pytest.raises(sources.SourceUnavailableError, match="Kaggle download of .* failed: ConnectionError"):
        sources.download_kaggle("owner/data", tmp_path)


@pytest.mark.parametrize(("status", "transient"), [(403, False), (404, False), (429, True), (503, True)])
def test_kaggle_refusing_is_final_and_failing_on_its_side_is_transient_fake_kaggle_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: int, transient: bool
) -> None:
    import requests

    kaggle_api = importlib.import_module("kaggle.api.kaggle_api_extended")

    class FakeRefusingKaggleApi:
        def authenticate(self) -> None:
            pass

        def dataset_download_files(self, *args, **kwargs) -> None:
            response = requests.Response()
            response.status_code = status
            raise requests.HTTPError(f"{status} Client Error", response=response)

    monkeypatch.setattr(kaggle_api, "KaggleApi", FakeRefusingKaggleApi)
    with pytest.raises(sources.SourceError, match=f"failed: HTTPError: {status}") as error:
        sources.download_kaggle("owner/data", tmp_path)
    assert isinstance(error.value, sources.SourceUnavailableError) is transient


@pytest.fixture()
def workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = make_workspace(tmp_path / "ws")
    return root, stage_env(root)


def _fails_with_one_line(result, pattern: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stages.ingest: error: "), result.stderr
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]


def test_missing_kaggle_credentials_cli(workspace) -> None:
    root, env = workspace
    result = run_stage("ingest", root, env, "--set", "data.source=kaggle", check=False)
    _fails_with_one_line(result, "KAGGLE_USERNAME and KAGGLE_KEY")


@pytest.mark.parametrize("kaggle_json", ["", '{"username": "someone"}'])
def test_unusable_kaggle_json_is_one_clear_error_cli(workspace, tmp_path: Path, kaggle_json: str) -> None:
    """auto picks Kaggle for a kaggle.json that the kaggle package then cannot use: it calls exit(1)."""
    root, env = workspace
    config = tmp_path / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(kaggle_json)
    result = run_stage("ingest", root, {**env, "KAGGLE_CONFIG_DIR": str(config)}, check=False)
    _fails_with_one_line(result, rf"Kaggle found no usable credentials.*{config}")
    assert "Authentication required" not in result.stdout  # the package's own page of help stays out


def test_empty_folder_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    (tmp_path / "empty").mkdir()
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(tmp_path / "empty")}, check=False)
    _fails_with_one_line(result, r"not in the Kaggle layout.*no images in test/FAKE")


def test_wrong_layout_zip_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    bad = make_zip(tmp_path / "flat.zip", {f"images/{i}.jpg": jpeg(i) for i in range(4)})
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(bad)}, check=False)
    _fails_with_one_line(result, r"flat\.zip: not in the Kaggle layout")


def test_a_missing_local_source_says_which_setting_named_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stale DEEPGUARD_DATA beside an edited data.local_path said only 'x.zip: no such archive or folder':
    not that the variable, which wins over params.yaml, had named it."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "DEEPGUARD_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    local = load_params(
        REPO / "params.yaml", ["data.source=local", f"data.local_path={tmp_path / 'mine.zip'}"]
    )
    with pytest.raises(sources.SourceError) as raised:
        sources.locate(local.data)
    assert (
        str(raised.value) == f"{tmp_path / 'mine.zip'}: no such archive or folder (named by data.local_path)"
    )
    monkeypatch.setenv("DEEPGUARD_DATA", str(tmp_path / "old.zip"))
    with pytest.raises(sources.SourceError) as raised:
        sources.locate(local.data)
    assert str(raised.value) == (
        f"{tmp_path / 'old.zip'}: no such archive or folder (named by DEEPGUARD_DATA, which wins over "
        "data.local_path)"
    )


def test_not_a_zip_and_missing_path_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    (tmp_path / "data.zip").write_text("not a zip")
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(tmp_path / "data.zip")}, check=False)
    _fails_with_one_line(result, "not a zip archive or a folder")
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(tmp_path / "absent.zip")}, check=False)
    _fails_with_one_line(result, "absent.zip: no such archive or folder")


def test_an_error_is_one_line_on_a_terminal_and_also_logged_for_a_pod_cli(workspace, tmp_path: Path) -> None:
    """`make run` shows stdout (the log) and stderr in one terminal: the error was there twice."""
    root, env = workspace
    env = {**env, "DEEPGUARD_DATA": str(tmp_path / "absent.zip")}
    command = [sys.executable, "-m", "stages.ingest", "--locate"]
    merged = subprocess.run(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert merged.returncode == 2
    named = "(named by DEEPGUARD_DATA, which wins over data.local_path)"
    assert (
        merged.stdout
        == f"stages.ingest: error: {tmp_path / 'absent.zip'}: no such archive or folder {named}\n"
    )
    # Apart, as a pod's container log keeps them, the log has it too, with its time.
    apart = run_stage("ingest", root, env, "--locate", check=False)
    assert "ERROR core.cli: ingest failed: " in apart.stdout and apart.stderr.count("\n") == 1


NAMED_BY_ENV = r"\(named by DEEPGUARD_DATA, which wins over data\.local_path\)"


def test_a_mistyped_data_path_names_what_is_there_cli(workspace, tmp_path: Path) -> None:
    """A typo or a missing ``.zip`` said only "no such archive or folder"; the archive beside it is named."""
    root, env = workspace
    data = tmp_path / "data"
    data.mkdir()
    for name in ("cifake-sample.zip", "notes.txt"):
        (data / name).write_text("x")
    for typed in ("cifake-smaple.zip", "cifake-sample"):
        result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(data / typed)}, check=False)
        _fails_with_one_line(
            result,
            rf"{typed}: no such archive or folder {NAMED_BY_ENV}; did you mean {data}/cifake-sample\.zip\?$",
        )
    # Nothing close: a relative path says where it was read from (the checkout, not the shell's folder).
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": "shared/cifake.zip"}, check=False)
    _fails_with_one_line(
        result,
        rf"shared/cifake\.zip: no such archive or folder {NAMED_BY_ENV}; a relative path, read from {root}$",
    )


def test_workdir_keeps_the_paths_typed_relative_to_the_current_folder_cli(
    workspace, defective_zip: Path
) -> None:
    """`python -m stages.ingest --workdir DIR` in a checkout: params.yaml and DEEPGUARD_DATA are read there"""
    root, env = workspace
    data = Path("..") / defective_zip.relative_to(root.parent)  # relative to the checkout, not to DIR
    env = {**env, "DEEPGUARD_DATA": str(data)}
    result = run_stage("ingest", root, env, "--workdir", "runs/one", check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    report = json.loads((root / "runs" / "one" / "reports" / "data_report.json").read_text())
    assert report["source"]["location"] == str(defective_zip.resolve())


def test_unknown_params_key_cli(workspace) -> None:
    root, env = workspace
    result = run_stage("ingest", root, env, "--set", "data.sorce=local", check=False)
    _fails_with_one_line(result, r"unknown key data\.sorce")


def test_under_dvc_ingest_refuses_a_source_other_than_the_recorded_one(
    workspace, defective_zip: Path, tmp_path: Path
) -> None:
    """`dvc repro` rerunning ingest (a data param changed) in a shell without the DEEPGUARD_DATA it was
    recorded with would ingest synthetic data and rewrite data/source.json, its DVC dependency, mid-run."""
    root, env = workspace
    recorded = {**env, "DEEPGUARD_DATA": str(defective_zip)}
    run_stage("ingest", root, recorded, "--locate")
    run_stage("ingest", root, {**recorded, "DVC_STAGE": "ingest"})  # the recorded source: runs
    marker, index = (root / "data/source.json").read_text(), (root / "data/raw/index.json").read_text()
    other = shutil.copyfile(defective_zip, tmp_path / "other.zip")
    for elsewhere in (
        {k: v for k, v in env.items() if k != "DEEPGUARD_DATA"},
        {**env, "DEEPGUARD_DATA": str(other)},
    ):
        result = run_stage("ingest", root, {**elsewhere, "DVC_STAGE": "ingest"}, check=False)
        _fails_with_one_line(result, r"data/source\.json records local .*defective\.zip.*--locate")
    assert (root / "data/source.json").read_text() == marker
    assert (root / "data/raw/index.json").read_text() == index
    run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(other)})  # run alone: the source it locates
    assert str(other) in (root / "reports/data_report.json").read_text()


def test_failed_ingest_keeps_the_previous_good_output(workspace, defective_zip: Path, tmp_path: Path) -> None:
    root, env = workspace
    run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(defective_zip)})
    before = (root / "data/raw/index.json").read_text()
    only_train = make_zip(
        tmp_path / "half.zip", {f"train/{c}/{i}.jpg": jpeg(i) for c in ("REAL", "FAKE") for i in range(2)}
    )
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(only_train)}, check=False)
    assert result.returncode == 2
    assert (root / "data/raw/index.json").read_text() == before
    assert json.loads(before)["kept"]["train"]["REAL"] == 3
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".")], "no temporary leftovers"


def _patch_headers(archive: Path, member: str, central_at: int, local_at: int, value: bytes) -> Path:
    """Overwrite a field of ``member``'s central-directory and local headers (offsets from each signature)."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    for signature, field_at, name_at in ((b"PK\x01\x02", central_at, 46), (b"PK\x03\x04", local_at, 30)):
        start = data.find(signature)
        while start != -1:
            if data[start + name_at : start + name_at + len(name)] == name:
                data[start + field_at : start + field_at + len(value)] = value
            start = data.find(signature, start + 4)
    archive.write_bytes(bytes(data))
    return archive


def _claim_size(archive: Path, member: str, size: int) -> Path:
    """Rewrite the uncompressed size the zip's headers declare for ``member`` (how a zip bomb lies)."""
    return _patch_headers(archive, member, 24, 22, size.to_bytes(4, "little"))


def _bomb_zip(path: Path, bomb: bytes, claimed: int | None = None) -> Path:
    """Three good images per split/class plus ``train/FAKE/bomb.png`` (deflated), optionally lying about
    its size."""
    files = {
        f"{split}/{cls}/{i}.jpg": jpeg(hash((split, cls, i)) % 2**32)
        for split in ("train", "test")
        for cls in ("REAL", "FAKE")
        for i in range(3)
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("train/FAKE/bomb.png", bomb)
    return path if claimed is None else _claim_size(path, "train/FAKE/bomb.png", claimed)


def test_zip_bomb_claiming_gigabytes_is_refused_from_the_header_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    bomb = _bomb_zip(tmp_path / "bomb.zip", b"\0" * 1000, claimed=4_000_000_000)
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(bomb)}, check=False)
    _fails_with_one_line(result, r"bomb\.zip: train/FAKE/bomb\.png: 4000000000 bytes, over the \d+-byte")
    assert "MemoryError" not in result.stdout + result.stderr
    assert not (root / "data/raw").exists()


def test_zip_bomb_inflating_past_the_limit_is_refused(tmp_path: Path) -> None:
    bomb = _bomb_zip(tmp_path / "bomb.zip", b"\0" * (sources.MAX_IMAGE_BYTES + 1))  # deflates to ~16 KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(sources.SourceError, match=r"bomb\.png: 16777217 bytes, over the 16777216-byte limit"):
        list(sources.iter_entries(bomb))


def test_zip_member_inflating_past_its_declared_size_is_refused_while_reading(tmp_path: Path) -> None:
    """The header claims 1 KB: the bytes are counted while reading, never trusted from the header."""
    bomb = _bomb_zip(tmp_path / "bomb.zip", b"\0" * (sources.MAX_IMAGE_BYTES + 1), claimed=1000)
    with pytest.raises(sources.SourceError, match=r"bomb\.png: unreadable archive member"):
        list(sources.iter_entries(bomb))


def test_oversized_file_in_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    zipfile.ZipFile(_bomb_zip(tmp_path / "bomb.zip", b"x")).extractall(folder)
    with (folder / "train/FAKE/bomb.png").open("wb") as file:
        file.truncate(sources.MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(sources.SourceError, match=r"bomb\.png: 16777217 bytes, over the"):
        list(sources.iter_entries(folder))


def test_encrypted_zip_member_is_one_clear_error_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    archive = _bomb_zip(tmp_path / "locked.zip", jpeg(5))
    _patch_headers(archive, "train/FAKE/bomb.png", 8, 6, (1).to_bytes(2, "little"))  # flag bit 0: encrypted
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(archive)}, check=False)
    _fails_with_one_line(result, r"locked\.zip: train/FAKE/bomb\.png: unreadable archive member \(.*encrypt")


def _sample_files(per_folder: int) -> dict[str, bytes]:
    """The first ``per_folder`` images of each split/class folder of the real CIFAKE sample."""
    with zipfile.ZipFile(require_sample()) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
        picked: dict[str, bytes] = {}
        for split in ("train", "test"):
            for cls in ("REAL", "FAKE"):
                for name in [n for n in names if n.split("/")[-3:-1] == [split, cls]][:per_folder]:
                    picked[f"{split}/{cls}/{Path(name).name}"] = archive.read(name)
    return picked


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _ingest_and_preprocess_cli(root: Path, env: dict[str, str], data: Path) -> dict:
    env = {**env, "DEEPGUARD_DATA": str(data)}
    run_stage("ingest", root, env)
    run_stage("preprocess", root, env)
    return json.loads((root / "reports" / "data_report.json").read_text())


def test_a_folder_assembled_from_symlinks_with_a_link_loop_is_read_once_cli(
    workspace, tmp_path: Path
) -> None:
    """A team links train/REAL to where their images live; a link back up must not recurse forever."""
    root, env = workspace
    real = _write_folder(tmp_path / "real", _sample_files(5))
    linked = tmp_path / "linked"
    for split in ("train", "test"):
        (linked / split).mkdir(parents=True)
        for cls in ("REAL", "FAKE"):
            (linked / split / cls).symlink_to(real / split / cls, target_is_directory=True)
    (real / "train" / "REAL" / "loop").symlink_to(linked, target_is_directory=True)
    report = _ingest_and_preprocess_cli(root, env, linked)
    assert report["kept"] == {"test": {"FAKE": 5, "REAL": 5}, "train": {"FAKE": 5, "REAL": 5}}
    assert report["duplicates_within_split"] == {}  # each image read once, not again through the loop


def test_lowercase_class_folders_and_macos_metadata_are_read_as_a_team_zips_them_cli(
    workspace, tmp_path: Path
) -> None:
    """A zip made on a Mac by a team naming folders real/ and fake/: metadata files are not images."""
    root, env = workspace
    files = {
        f"cifake/{k.replace('REAL', 'real').replace('FAKE', 'fake')}": v for k, v in _sample_files(3).items()
    }
    first = next(iter(files))
    files[f"__MACOSX/{Path(first).parent}/._{Path(first).name}"] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"
    files[f"{Path(first).parent}/._{Path(first).name}"] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"
    files["cifake/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    report = _ingest_and_preprocess_cli(root, env, make_zip(tmp_path / "team.zip", files))
    assert report["kept"] == {"test": {"FAKE": 3, "REAL": 3}, "train": {"FAKE": 3, "REAL": 3}}
    assert report["rejected"] == {}
    summary = json.loads((root / "data" / "processed" / "summary.json").read_text())
    assert sum(summary["counts"]["test"].values()) == 6
    assert [cls for cls, _ in sources.list_labelled(tmp_path / "team.zip")].count(
        "FAKE"
    ) == 6  # extra sets too


def test_only_a_train_split_says_to_hold_out_a_test_split_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    files = {k: v for k, v in _sample_files(3).items() if k.startswith("train/")}
    result = run_stage(
        "ingest", root, {**env, "DEEPGUARD_DATA": str(make_zip(tmp_path / "t.zip", files))}, check=False
    )
    _fails_with_one_line(result, r"t\.zip: .*no images in test/FAKE, test/REAL; move a share of your images")


def test_an_empty_class_folder_is_named_with_what_to_do_cli(workspace, tmp_path: Path) -> None:
    root, env = workspace
    folder = _write_folder(
        tmp_path / "team", {k: v for k, v in _sample_files(3).items() if "train/FAKE" not in k}
    )
    (folder / "train" / "FAKE").mkdir()
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(folder)}, check=False)
    _fails_with_one_line(result, r"team: .*no images in train/FAKE; add images of that class there")


@pytest.mark.parametrize(
    ("credentials", "named"),
    [
        ({"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "wrong"}, "check KAGGLE_USERNAME and KAGGLE_KEY"),
        ({"KAGGLE_API_TOKEN": "wrong"}, "check KAGGLE_API_TOKEN"),
    ],
)
@pytest.mark.parametrize("refused_at", ["sign-in", "download"])
def test_bad_kaggle_credentials_name_the_variables_to_check_fake_kaggle_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: dict, named: str, refused_at: str
) -> None:
    """Kaggle answers 401 to a wrong key (at the token check, or at the download): say which credentials."""
    import requests

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    kaggle_api = importlib.import_module("kaggle.api.kaggle_api_extended")

    def refuse() -> None:
        response = requests.Response()
        response.status_code = 401
        raise requests.HTTPError("401 Client Error: Unauthorized", response=response)

    class FakeRefusingKaggleApi:
        def authenticate(self) -> None:
            if refused_at == "sign-in":
                refuse()

        def dataset_download_files(self, *args, **kwargs) -> None:
            refuse()

    monkeypatch.setattr(kaggle_api, "KaggleApi", FakeRefusingKaggleApi)
    with pytest.raises(sources.SourceError) as error:
        sources.download_kaggle("owner/data", tmp_path)
    message = str(error.value)
    assert f"Kaggle {refused_at} " in message and "Kaggle refused the credentials; " + named in message
    assert "\n" not in message and not isinstance(error.value, sources.SourceUnavailableError)


def test_very_unbalanced_classes_train_with_one_warning_naming_the_class_cli(
    workspace, tmp_path: Path
) -> None:
    root, env = workspace
    files = _sample_files(60)
    fakes = [name for name in files if name.startswith("train/FAKE/")]
    data = make_zip(tmp_path / "team.zip", {k: v for k, v in files.items() if k not in fakes[4:]})
    env = {**env, "DEEPGUARD_DATA": str(data)}
    run_stage("ingest", root, env)
    result = run_stage("preprocess", root, env)
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stdout + result.stderr
    assert "train holds 4 FAKE images and 60 REAL (1:15)" in warnings[0]
    assert "has 1 FAKE: add FAKE images to train/FAKE" in warnings[0]
    balanced = make_zip(tmp_path / "balanced.zip", files)
    run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(balanced)})
    result = run_stage("preprocess", root, env)
    assert (
        "WARNING" not in result.stdout + result.stderr and "preprocess done" in result.stdout + result.stderr
    )


def _converted(files: dict[str, bytes], convert) -> dict[str, bytes]:
    out = {}
    for name, data in files.items():
        buffer = io.BytesIO()
        convert(Image.open(io.BytesIO(data))).save(buffer, format="PNG")
        out[name.rsplit(".", 1)[0] + ".png"] = buffer.getvalue()
    return out


@pytest.mark.parametrize(
    ("convert", "fix"),
    [
        (
            lambda image: image.resize((64, 64)),
            r"\(3 size 64x64, expected 32x32\); for 64x64 images set data.image_size: 64",
        ),
        (
            lambda image: image.resize((40, 30)),
            r"\(3 size 40x30, expected 32x32\); use square images of data.image_size",
        ),
        (lambda image: image.convert("L"), r"\(3 mode L, expected RGB\); save the images as RGB"),
    ],
)
def test_a_team_archive_none_of_whose_images_fit_says_what_to_do_cli(
    workspace, tmp_path: Path, convert, fix: str
) -> None:
    root, env = workspace
    data = make_zip(tmp_path / "team.zip", _converted(_sample_files(3), convert))
    result = run_stage("ingest", root, {**env, "DEEPGUARD_DATA": str(data)}, check=False)
    _fails_with_one_line(result, r"team\.zip: no valid images left in train/REAL: 3 found, 3 rejected " + fix)


def test_a_team_archive_partly_rejected_warns_with_the_reasons_cli(workspace, tmp_path: Path) -> None:
    """PNG, WebP, greyscale, RGBA, 64x64 and a corrupt file: the RGB 32x32 ones train, the rest are named."""
    root, env = workspace
    files = _sample_files(6)
    convert = [
        lambda image: image,
        lambda image: image.convert("L"),
        lambda image: image.convert("RGBA"),
        lambda image: image.resize((64, 64)),
    ]
    mixed = {}
    for i, (name, data) in enumerate(files.items()):
        mixed.update(_converted({name: data}, convert[i % 4]) if i % 6 < 4 else {name: data})
    webp = io.BytesIO()
    Image.open(io.BytesIO(files["train/REAL/" + Path(next(iter(files))).name])).save(webp, format="WEBP")
    mixed["train/REAL/photo.webp"] = webp.getvalue()
    mixed["train/REAL/corrupt.jpg"] = next(iter(files.values()))[:100]
    env = {**env, "DEEPGUARD_DATA": str(make_zip(tmp_path / "team.zip", mixed))}
    result = run_stage("ingest", root, env)
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "ingest: 13 images rejected (" in warnings[0], warnings
    assert "mode L, expected RGB" in warnings[0] and "examples in reports/data_report.json" in warnings[0]
    report = json.loads((root / "reports" / "data_report.json").read_text())
    assert report["rejected"]["corrupt or truncated image"] == 1 and report["total_kept"] == 24 - 12 + 1
    run_stage("preprocess", root, env)


def test_images_in_batch_folders_below_the_class_folders_are_read_cli(workspace, tmp_path: Path) -> None:
    """A team adding images as they come: train/REAL/2024-06/x.jpg. They read as 'no images in train/REAL'."""
    root, env = workspace
    files = {
        f"data/{Path(name).parent}/batch-{i % 2}/{Path(name).name}": content
        for i, (name, content) in enumerate(_sample_files(4).items())
    }
    folder = _write_folder(tmp_path / "team", files)
    report = _ingest_and_preprocess_cli(root, env, folder)
    assert report["kept"] == {"test": {"FAKE": 4, "REAL": 4}, "train": {"FAKE": 4, "REAL": 4}}
    labelled = sources.list_labelled(folder)  # an extra set in the same layout
    assert sorted(cls for cls, _ in labelled) == ["FAKE"] * 8 + ["REAL"] * 8


def test_the_same_pixels_in_other_bytes_are_a_leak_and_a_duplicate_cli(workspace, tmp_path: Path) -> None:
    """A train photo again in test as PNG, and one with a comment added: other bytes, the same image."""
    root, env = workspace
    files = _sample_files(4)
    train_real = [name for name in files if name.startswith("train/REAL/")]
    png = io.BytesIO()
    Image.open(io.BytesIO(files[train_real[0]])).save(png, format="PNG")
    files["test/REAL/again.png"] = png.getvalue()
    original = files[train_real[1]]
    assert original[:2] == b"\xff\xd8"  # a JPEG: a comment segment after its start changes bytes, not pixels
    files["train/REAL/commented.jpg"] = original[:2] + b"\xff\xfe\x00\x07edited" + original[2:]
    report = _ingest_and_preprocess_cli(root, env, make_zip(tmp_path / "team.zip", files))
    assert report["test_in_train"] == {"test": {"REAL": 1}}
    assert report["duplicates_within_split"] == {"train": {"REAL": 1}}
    assert report["kept"] == {"test": {"FAKE": 4, "REAL": 4}, "train": {"FAKE": 4, "REAL": 4}}
