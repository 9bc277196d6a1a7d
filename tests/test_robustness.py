"""Unit tier: the robustness report and the extra evaluation sets, scored by a real (hand-set) Keras model."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ConfigError, ExtraSetParams, load_params
from core.degrade import DEGRADATIONS, degraded_file
from core.imagestats import image_statistics
from core.imaging import decode_for_model, jpeg_quality
from core.labels import FAKE, REAL
from core.metrics import outcome_metrics
from core.modelstore import predict_fake_probability
from stages import extra_sets, robustness

REPO = Path(__file__).resolve().parents[1]
CONTRACT_KEYS = {"accuracy", "roc_auc", "flipped", "fake_called_real", "count"}


def _images(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """REAL: smooth colour gradients; FAKE: the same with strong pixel noise (high-frequency energy)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32)
    images, labels = [], []
    for label in (REAL, FAKE):
        for _ in range(per_class):
            base = rng.uniform(40, 200, 3) + 50 * ramp[:, None, None] * rng.uniform(-1, 1, 3)
            image = np.broadcast_to(base, (32, 32, 3)).astype(np.float64)
            if label == FAKE:
                image = image + rng.normal(0, 30, image.shape)
            images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.uint8)


@pytest.fixture(scope="module")
def detector():  # -> keras.Model
    """P(FAKE) = sigmoid of the mean squared Laplacian, centred between the two classes of :func:`_images`.

    A real Keras model with weights set by hand: it calls noisy images FAKE, so blur makes it miss fakes.
    """
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    laplacian = keras.layers.Conv2D(1, 3, use_bias=False, name="laplacian")
    edges = laplacian(scaled)
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32) / 3.0
    laplacian.set_weights([np.repeat(kernel[:, :, None, None], 3, axis=2)])
    energy = keras.layers.GlobalAveragePooling2D()(keras.layers.Multiply()([edges, edges]))
    images, labels = _images(20, seed=1)
    measured = keras.Model(inputs, energy).predict_on_batch(images).reshape(-1)
    centre = float(np.sqrt(measured[labels == REAL].max() * measured[labels == FAKE].min()))
    dense = keras.layers.Dense(1, activation="sigmoid")
    outputs = dense(energy)
    dense.set_weights([np.array([[8.0 / centre]], np.float32), np.array([-8.0], np.float32)])
    return keras.Model(inputs, outputs)


def test_sample_is_stratified_deterministic_and_optional() -> None:
    labels = np.array([REAL] * 30 + [FAKE] * 5)
    chosen = robustness.sample_indices(labels, 10)
    assert np.count_nonzero(labels[chosen] == REAL) == 10
    assert np.count_nonzero(labels[chosen] == FAKE) == 5  # fewer than asked: all of them
    assert np.array_equal(chosen, robustness.sample_indices(labels, 10))
    assert np.array_equal(robustness.sample_indices(labels, None), np.arange(35))


def test_each_degradation_makes_the_upload_it_names() -> None:
    image = _images(1)[0][1]  # a noisy image: every degradation changes it
    files = {name: degraded_file(image, name) for name in DEGRADATIONS}
    opened = {name: Image.open(io.BytesIO(data)) for name, data in files.items()}
    for quality in (90, 75, 50):
        upload = opened[f"jpeg_q{quality}"]
        assert upload.format == "JPEG" and jpeg_quality(upload) == quality
    assert opened["upscale_4x"].size == (128, 128) and opened["downscale_0.5x"].size == (32, 32)
    scored = {name: decode_for_model(data, 32) for name, data in files.items()}
    assert np.array_equal(scored["clean"], image)
    assert all(not np.array_equal(scored[name], image) for name in DEGRADATIONS if name != "clean")
    detail = {name: image_statistics(pixels[None])["hf_energy"][0] for name, pixels in scored.items()}
    assert detail["blur_1.0"] < detail["blur_0.6"] < detail["clean"] < detail["noise"]


def test_report_has_the_contract_and_blur_makes_the_noise_detector_miss_fakes(detector) -> None:
    images, labels = _images(12)
    report = robustness.robustness_report(detector, images, labels, 0.5)
    assert set(report) == {"threshold", "degradations", "degraded_mean"}
    assert list(report["degradations"]) == list(DEGRADATIONS)
    assert all(set(scores) == CONTRACT_KEYS for scores in report["degradations"].values())
    assert set(report["degraded_mean"]) == {"accuracy", "roc_auc"}
    clean, blurred = report["degradations"]["clean"], report["degradations"]["blur_1.0"]
    assert clean == {"accuracy": 1.0, "roc_auc": 1.0, "flipped": 0.0, "fake_called_real": 0.0, "count": 24}
    # Blur removes the noise the detector looks for: fakes are called REAL, half the decisions flip.
    assert blurred["fake_called_real"] == 1.0 and blurred["flipped"] == 0.5 and blurred["accuracy"] == 0.5
    degraded = [s["accuracy"] for name, s in report["degradations"].items() if name != "clean"]
    assert report["degraded_mean"]["accuracy"] == pytest.approx(np.mean(degraded))
    assert report["degraded_mean"]["accuracy"] < clean["accuracy"]
    # Reproducible, noise included: the same images give the same report.
    assert robustness.robustness_report(detector, images, labels, 0.5) == report


def test_the_plot_title_shows_a_zero_accuracy_as_zero_and_an_undefined_roc_auc_as_na() -> None:
    scores = {"accuracy": 0.0, "roc_auc": None, "flipped": 0.0, "fake_called_real": None, "count": 3}
    mean = {"accuracy": 0.0, "roc_auc": None}
    fig = robustness.figure({"threshold": 0.5, "degradations": {"clean": scores}, "degraded_mean": mean})
    assert fig.get_suptitle().endswith("degraded mean accuracy 0.0000, ROC-AUC n/a")


def test_measure_scores_the_sampled_test_split_and_writes_nothing(
    detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = _images(10)
    processed = tmp_path / "data/processed"
    processed.mkdir(parents=True)
    np.save(processed / "test_images.npy", images)
    np.save(processed / "test_labels.npy", labels)
    monkeypatch.chdir(tmp_path)
    params = load_params(REPO / "params.yaml", ["evaluation.robustness_sample=4"]).evaluation
    report = robustness.measure(detector, 0.5, params)
    assert json.loads(json.dumps(report)) == report, "the report is plain JSON"
    assert report["threshold"] == 0.5
    assert {s["count"] for s in report["degradations"].values()} == {8}
    assert not (tmp_path / "reports").exists(), "evaluate writes the report with its other outputs"


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _odd_files(seed: int) -> list[tuple[str, str, bytes]]:
    """(class, file name, bytes): odd sizes, modes and formats, as photos and other generators come."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(np.full((70, 50, 3), 120, np.uint8))
    noisy = Image.fromarray(rng.integers(0, 256, (17, 33, 3), dtype=np.uint8))
    return [
        ("REAL", "photo.jpg", _encode(smooth, "JPEG")),
        ("REAL", "grey.png", _encode(smooth.convert("L"), "PNG")),
        ("FAKE", "gen.png", _encode(noisy, "PNG")),
        ("FAKE", "alpha.png", _encode(noisy.convert("RGBA"), "PNG")),
        ("FAKE", "big.webp", _encode(noisy.resize((96, 48)), "WEBP")),
    ]


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_extra_set_is_scored_as_the_predictor_scores_its_files(
    detector, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    files = _odd_files(seed=3)
    if kind == "zip":
        path = tmp_path / "other.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for class_name, name, data in files:
                archive.writestr(f"other/{class_name}/{name}", data)
            archive.writestr("other/FAKE/notes.txt", "not an image: skipped by suffix")
    else:
        path = tmp_path / "other"
        for class_name, name, data in files:
            (path / class_name).mkdir(parents=True, exist_ok=True)
            (path / class_name / name).write_bytes(data)
        (path / "FAKE" / "broken.png").write_bytes(b"\x89PNG not really")  # left out with a warning
    [checked] = extra_sets.check([ExtraSetParams(name="other", path=str(path))])
    with caplog.at_level("INFO", logger="stages.extra_sets"):
        result = extra_sets.score(detector, checked, 0.5, 32)
    inputs = np.stack([decode_for_model(data, 32) for _, _, data in files])
    labels = np.array([FAKE if class_name == "FAKE" else REAL for class_name, _, _ in files])
    expected = outcome_metrics(labels, predict_fake_probability(detector, inputs), 0.5)
    assert result == expected
    assert result["count"] == 5 and set(result) == {"accuracy", "roc_auc", "count", "fake_called_real"}
    # The summary line reads like evaluate's others (0.6667, not 0.6666666666666666; n/a, not None).
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("extra set other: 5")]
    assert summary == (
        f"extra set other: 5 images, accuracy {result['accuracy']:.4f}, ROC-AUC {result['roc_auc']:.4f}, "
        f"fakes called REAL {result['fake_called_real']:.4f}"
    )


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_extra_set_file_over_the_size_limit_is_left_out_with_a_warning(
    detector, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One huge file does not stop evaluate after test was scored: it is left out, like an undecodable one."""
    from stages.sources import MAX_IMAGE_BYTES

    files = _odd_files(seed=4)
    huge = b"\0" * (MAX_IMAGE_BYTES + 1)  # deflates to ~16 KB in the zip
    if kind == "zip":
        path = tmp_path / "photos.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for class_name, name, data in files:
                archive.writestr(f"{class_name}/{name}", data)
            archive.writestr("FAKE/huge.png", huge)
    else:
        path = tmp_path / "photos"
        for class_name, name, data in files:
            (path / class_name).mkdir(parents=True, exist_ok=True)
            (path / class_name / name).write_bytes(data)
        with (path / "FAKE" / "huge.png").open("wb") as file:
            file.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    [checked] = extra_sets.check([ExtraSetParams(name="photos", path=str(path))])
    with caplog.at_level("WARNING", logger="stages.extra_sets"):
        result = extra_sets.score(detector, checked, 0.5, 32)
    inputs = np.stack([decode_for_model(data, 32) for _, _, data in files])
    labels = np.array([FAKE if class_name == "FAKE" else REAL for class_name, _, _ in files])
    assert result == outcome_metrics(labels, predict_fake_probability(detector, inputs), 0.5)
    assert result["count"] == 5
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert re.search(r"extra set photos: 1 files left out.*huge\.png: 16777217 bytes, over the", warning)


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_extra_set_whose_fakes_all_fail_to_decode_is_refused_naming_a_file(
    detector, tmp_path: Path, kind: str
) -> None:
    """Files named like images that are not (text saved as .png, an empty .jpg) passed check() by their names;
    with every FAKE one undecodable the set was scored as one class: exit 0 and null ROC-AUC and misses."""
    files = [f for f in _odd_files(seed=5) if f[0] == "REAL"]
    files += [("FAKE", "notes.png", b"hello"), ("FAKE", "empty.jpg", b"")]
    if kind == "zip":
        path = tmp_path / "photos.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for class_name, name, data in files:
                archive.writestr(f"{class_name}/{name}", data)
    else:
        path = tmp_path / "photos"
        for class_name, name, data in files:
            (path / class_name).mkdir(parents=True, exist_ok=True)
            (path / class_name / name).write_bytes(data)
    [checked] = extra_sets.check([ExtraSetParams(name="photos", path=str(path))])
    with pytest.raises(ConfigError) as raised:
        extra_sets.score(detector, checked, 0.5, 32)
    message = str(raised.value)
    expected = f"evaluation.extra_sets 'photos': {path}: no image in FAKE decodes (2 files left out; first: "
    assert message.startswith(expected)
    assert re.search(r"first: \S*FAKE/(notes\.png|empty\.jpg): ", message) and "\n" not in message


def test_missing_extra_set_is_one_error_naming_the_set_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(ConfigError) as raised:
        extra_sets.check([ExtraSetParams(name="photos", path=str(missing))])
    # Worded as a missing data.local_path is (stages.sources.locate): one refusal, one way of saying it.
    assert str(raised.value) == f"evaluation.extra_sets 'photos': {missing}: no such archive or folder"


def test_folder_without_real_and_fake_is_refused(tmp_path: Path) -> None:
    (tmp_path / "set/cats").mkdir(parents=True)
    (tmp_path / "set/cats/a.png").write_bytes(_encode(Image.new("RGB", (8, 8)), "PNG"))
    (tmp_path / "set/REAL").mkdir()
    (tmp_path / "set/REAL/b.png").write_bytes(_encode(Image.new("RGB", (8, 8)), "PNG"))
    with pytest.raises(
        ConfigError, match=r"'gen2': .*/set: not in the layout REAL/ and FAKE/.*no images in FAKE"
    ):
        extra_sets.check([ExtraSetParams(name="gen2", path=str(tmp_path / "set"))])


def test_two_sets_with_one_name_are_refused(tmp_path: Path) -> None:
    """Results are keyed by name in reports/metrics.json: the second set would silently replace the first."""
    for folder in ("a", "b"):
        for class_name in ("REAL", "FAKE"):
            (tmp_path / folder / class_name).mkdir(parents=True)
            (tmp_path / folder / class_name / "x.png").write_bytes(_encode(Image.new("RGB", (8, 8)), "PNG"))
    sets = [{"name": "photos", "path": str(tmp_path / folder)} for folder in ("a", "b")]
    # Refused by the loader of params.yaml, before any stage runs (evaluate's own check no longer repeats it).
    with pytest.raises(ConfigError, match="names must differ, got photos, photos"):
        load_params(REPO / "params.yaml", [f"evaluation.extra_sets={json.dumps(sets)}"])
    [one] = load_params(
        REPO / "params.yaml", [f"evaluation.extra_sets={json.dumps(sets[:1])}"]
    ).evaluation.extra_sets
    assert [s.name for s in extra_sets.check([one])] == ["photos"]


def test_evaluate_refuses_a_bad_set_before_loading_or_scoring_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty workspace: with a good set evaluate would fail on the missing model; a bad set fails first."""
    from stages import evaluate

    monkeypatch.chdir(tmp_path)
    overrides = [f"evaluation.extra_sets=[{{name: photos, path: {tmp_path / 'absent'}}}]"]
    params = load_params(REPO / "params.yaml", overrides)
    with pytest.raises(ConfigError, match="extra_sets 'photos'"):
        evaluate.run(params)


def test_extra_set_names_are_checked_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"evaluation\.extra_sets\.0\.name"):
        load_params(REPO / "params.yaml", ["evaluation.extra_sets=[{name: 'a b', path: x}]"])
    with pytest.raises(ConfigError, match=r"evaluation\.extra_sets\.0\.path"):
        load_params(REPO / "params.yaml", ["evaluation.extra_sets=[{name: a}]"])


def test_a_relative_extra_set_path_that_is_missing_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths are read from the workspace (``--workdir``, a pod's run folder), not from where the
    user typed the command: 'photos.zip: no such folder' did not say where it had looked."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        extra_sets.check([ExtraSetParams(name="photos", path="sets/photos.zip")])
    assert str(raised.value) == (
        f"evaluation.extra_sets 'photos': sets/photos.zip: no such archive or folder; a relative path, "
        f"read from {tmp_path}"
    )


def test_a_mistyped_extra_set_path_names_the_close_one_as_ingest_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extra set and ``data.local_path`` are both paths the user types: one typo got "did you mean", the
    other a differently worded hint, and a set that existed in the wrong layout was told where relative paths
    are read from, as if it were missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "photos.zip").write_bytes(b"")
    with pytest.raises(ConfigError) as raised:
        extra_sets.check([ExtraSetParams(name="photos", path="sets/phtos.zip")])
    assert str(raised.value) == (
        "evaluation.extra_sets 'photos': sets/phtos.zip: no such archive or folder; did you mean "
        "sets/photos.zip?"
    )
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError) as raised:
        extra_sets.check([ExtraSetParams(name="flat", path="flat")])
    assert "relative" not in str(raised.value), "the folder was found: where it was read from is no news"


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_a_class_folder_of_unread_formats_says_which_suffixes_it_holds(tmp_path: Path, kind: str) -> None:
    """A phone's REAL/ folder of .HEIC photos was refused as 'no images in REAL', beside a full folder."""
    png = _encode(Image.new("RGB", (8, 8)), "PNG")
    files = {"FAKE/a.png": png, "REAL/IMG_1.HEIC": b"heic", "REAL/IMG_2.heic": b"heic", "REAL/.DS_Store": b""}
    if kind == "zip":
        path = tmp_path / "phone.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        path = tmp_path / "phone"
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    with pytest.raises(ConfigError) as raised:
        extra_sets.check([ExtraSetParams(name="phone", path=str(path))])
    assert str(raised.value).startswith(
        f"evaluation.extra_sets 'phone': {path}: not in the layout REAL/ and FAKE/ image folders: "
        "no images in REAL (files there: 2 .heic; images are read by the suffixes .avif, .bmp, "
    )


def test_extra_set_images_the_model_trained_on_are_left_out_and_named(
    detector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A team's extra set that shares photos with its train folder (one saved again as PNG): real ingest and
    preprocess on a small archive of the CIFAKE sample, then the set is scored on the unseen images only."""
    from workspace import make_workspace, require_sample, run_stage, stage_env

    with zipfile.ZipFile(require_sample()) as sample:
        names = sorted(n for n in sample.namelist() if not n.endswith("/"))
        by_folder = {
            folder: [n for n in names if n.split("/")[-3:-1] == folder.split("/")][:8]
            for folder in ("train/REAL", "train/FAKE", "test/REAL", "test/FAKE")
        }
        data = {n: sample.read(n) for folder in by_folder.values() for n in folder}
    archive = tmp_path / "team.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, content in data.items():
            out.writestr("/".join(name.split("/")[-3:]), content)
    root = make_workspace(tmp_path / "ws")
    env = {**stage_env(root), "DEEPGUARD_DATA": str(archive)}
    run_stage("ingest", root, env)
    run_stage("preprocess", root, env)
    seen = extra_sets.seen_in_training(root / "data" / "processed")
    assert len(seen) == 16  # train and val: the 8 + 8 train images

    extra = tmp_path / "photos"
    for class_name in ("REAL", "FAKE"):
        (extra / class_name).mkdir(parents=True)
        for name in by_folder[f"test/{class_name}"][:3]:  # unseen: scored
            (extra / class_name / Path(name).name).write_bytes(data[name])
    trained = by_folder["train/FAKE"][0]
    (extra / "FAKE" / Path(trained).name).write_bytes(data[trained])
    png = io.BytesIO()
    Image.open(io.BytesIO(data[by_folder["train/REAL"][0]])).save(png, format="PNG")
    (extra / "REAL" / "again.png").write_bytes(png.getvalue())
    [checked] = extra_sets.check([ExtraSetParams(name="photos", path=str(extra))])
    with caplog.at_level("WARNING", logger="stages.extra_sets"):
        result = extra_sets.score(detector, checked, 0.5, 32, seen)
    assert result["count"] == 6
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(
        "extra set photos: 2 files left out, the same pixels as images train or val holds"
    )

    only_trained = tmp_path / "only"
    for class_name, name in (("REAL", by_folder["test/REAL"][0]), ("FAKE", trained)):
        (only_trained / class_name).mkdir(parents=True)
        (only_trained / class_name / Path(name).name).write_bytes(data[name])
    [checked] = extra_sets.check([ExtraSetParams(name="only", path=str(only_trained))])
    with pytest.raises(ConfigError, match=r"'only': .*every image in FAKE is also in the training data"):
        extra_sets.score(detector, checked, 0.5, 32, seen)


def test_the_docs_name_every_degradation_of_the_report() -> None:
    """A degradation added to core/degrade.py is in reports/robustness.json and its mean at once, but the
    docs' list of what the report measures was kept by hand and went on without it."""
    text = (REPO / "docs/pipeline.md").read_text().split("## Robustness report", 1)[1]
    listed = text.split("after each degradation of `core/degrade.py` (", 1)[1].split("), decodes it", 1)[0]
    assert sorted(re.findall(r"`([^`]+)`", listed)) == sorted(DEGRADATIONS), "docs/pipeline.md"
