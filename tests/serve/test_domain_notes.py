"""Domain notes, the verdict policy and the served model card, over HTTP with the real ModelServer."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image, ImageFilter

from core.imaging import decode_for_model
from core.labels import band_edge, decide, names, verdicts

from .serving_helpers import Server, start_predictor
from .test_predictor import TIMEOUT, in_process, outputs, png_bytes, v1_body, v1_predict, v2_body, v2_infer

__all__ = ["in_process"]  # the module fixture, shared with test_predictor


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def strict_predictor(registered_model, tmp_path_factory):
    """A predictor whose margin is 1: an image with a note can never get a decided verdict."""
    log_file = tmp_path_factory.mktemp("strict") / "predictor.log"
    manager, url = start_predictor(registered_model, log_file, "--domain-margin", "1")
    with manager as process:
        yield Server(url, process, log_file)


@pytest.fixture(scope="module")
def uploads(sample_images) -> tuple[list[bytes], list[tuple[int, int, str]], list[str]]:
    """A native probe and five unlike it: files, (width, height, format) and a phrase of each note."""
    native = sample_images.probe[0]
    image = Image.fromarray(decode_for_model(native, 32))
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    files = [
        native,
        png_bytes(image.resize((128, 128), Image.Resampling.BICUBIC)),
        png_bytes(rgba),
        jpeg_bytes(image.resize((48, 32)), 90),
        jpeg_bytes(image, 30),
        png_bytes(image.filter(ImageFilter.GaussianBlur(2))),  # native size and format: only its detail
    ]
    inputs = [
        (32, 32, "JPEG"),
        (128, 128, "PNG"),
        (32, 32, "PNG"),
        (48, 32, "JPEG"),
        (32, 32, "JPEG"),
        (32, 32, "PNG"),
    ]
    phrases = [
        "",
        "resized from 128x128 to 32x32, 4x larger than the training images (far from",
        "transparent pixels composited on white",
        "not square (48x32)",
        "JPEG quality about 30",
        "little fine detail (blurred, smoothed or flat)",
    ]
    return files, inputs, phrases


def expected_label_and_verdict(in_process, probabilities) -> tuple[list[str], list[str]]:
    """The binary label (unchanged by the policy) and the native verdict of the in-process model."""
    metadata = in_process[1]
    return names(decide(probabilities, metadata.threshold)), verdicts(probabilities, *metadata.bands)


def test_v1_predictions_carry_input_and_note(strict_predictor, uploads, in_process):
    files, inputs, phrases = uploads
    response = v1_predict(strict_predictor.url, v1_body(files))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    got_inputs = [(p["input"]["width"], p["input"]["height"], p["input"]["format"]) for p in predictions]
    assert got_inputs == inputs
    assert predictions[0]["note"] == ""
    for prediction, phrase in zip(predictions[1:], phrases[1:], strict=True):
        assert phrase in prediction["note"], prediction["note"]
    probabilities = np.array([p["fake_probability"] for p in predictions])
    labels, native_verdicts = expected_label_and_verdict(in_process, probabilities)
    # The label stays the binary decision for every image (API compatibility); only the verdict is policed.
    assert [p["label"] for p in predictions] == labels
    assert predictions[0]["verdict"] == native_verdicts[0]
    assert [p["verdict"] for p in predictions[1:]] == ["UNCERTAIN"] * 5


def test_v2_outputs_carry_note_input_size_and_format(strict_predictor, uploads, in_process):
    files, inputs, phrases = uploads
    response = v2_infer(strict_predictor.url, v2_body(files))
    assert response.status_code == 200, response.text
    by_name = {output["name"]: output for output in response.json()["outputs"]}
    assert (by_name["note"]["datatype"], by_name["note"]["shape"]) == ("BYTES", [6])
    assert (by_name["input_size"]["datatype"], by_name["input_size"]["shape"]) == ("INT32", [6, 2])
    assert (by_name["input_format"]["datatype"], by_name["input_format"]["shape"]) == ("BYTES", [6])
    sizes = np.asarray(by_name["input_size"]["data"]).reshape(6, 2).tolist()
    assert sizes == [[w, h] for w, h, _ in inputs]
    assert by_name["input_format"]["data"] == [fmt for _, _, fmt in inputs]
    notes = by_name["note"]["data"]
    assert notes[0] == "" and all(phrase in note for phrase, note in zip(phrases[1:], notes[1:], strict=True))
    got = outputs(response)
    labels, native_verdicts = expected_label_and_verdict(in_process, np.asarray(got["fake_probability"]))
    assert got["label"] == labels
    assert got["verdict"] == [native_verdicts[0]] + ["UNCERTAIN"] * 5


def test_a_phones_multi_picture_jpeg_is_not_called_animated_and_a_tiffs_pages_are_pages(
    strict_predictor, sample_images
):
    """A phone saves a depth map or a preview after the photo (Pillow: MPO): it was noted "animated: only the
    first frame was scored", and so a native-sized one was denied the verdict its plain JPEG gets."""
    image = Image.fromarray(decode_for_model(sample_images.probe[0], 32))
    plain, mpo, tiff = io.BytesIO(), io.BytesIO(), io.BytesIO()
    image.save(plain, format="JPEG", quality=75)
    image.save(mpo, format="MPO", quality=75, save_all=True, append_images=[Image.new("RGB", (32, 32))])
    image.save(tiff, format="TIFF", save_all=True, append_images=[Image.new("RGB", (32, 32))])
    response = v1_predict(strict_predictor.url, v1_body([plain.getvalue(), mpo.getvalue(), tiff.getvalue()]))
    assert response.status_code == 200, response.text
    as_jpeg, as_mpo, as_tiff = response.json()["predictions"]
    assert as_mpo["input"]["format"] == "JPEG" and "animated" not in as_mpo["note"], as_mpo
    assert (as_mpo["note"], as_mpo["verdict"]) == (as_jpeg["note"], as_jpeg["verdict"])
    assert "multi-page: only the first page was scored" in as_tiff["note"], as_tiff["note"]
    assert "animated" not in as_tiff["note"] and as_tiff["verdict"] == "UNCERTAIN"


def test_bad_domain_margin_is_a_one_line_cli_error():
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--domain-margin", "wide"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--domain-margin" in result.stderr and "invalid float value: 'wide'" in result.stderr


def test_model_metadata_serves_the_version_facts_and_model_card(predictor, registered_model, in_process):
    metadata = in_process[1]
    for path in ("/v2/models/deepguard", f"/v2/models/deepguard/versions/{registered_model.version}"):
        response = requests.get(f"{predictor.url}{path}", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["versions"] == [registered_model.version]  # KServe's fields are kept
        parameters = body["parameters"]
        assert set(parameters) == {
            "model_version",
            "threshold",
            "real_below",
            "fake_above",
            "temperature",
            "calibration_bias",
            "architecture",
            "synthetic_data",
            "model_card",
        }
        assert parameters["model_version"] == registered_model.version
        assert parameters["threshold"] == pytest.approx(metadata.threshold)
        assert (parameters["real_below"], parameters["fake_above"]) == tuple(map(band_edge, metadata.bands))
        assert parameters["temperature"] == metadata.temperature
        assert parameters["calibration_bias"] == metadata.calibration_bias
        assert parameters["architecture"] == metadata.architecture
        assert parameters["synthetic_data"] is False
        card = parameters["model_card"]
        # The card register put in the model folder: the same one the pipeline wrote.
        local = json.loads((registered_model.root / "reports" / "model_card.json").read_text())
        assert card == local
        assert card["version"] == registered_model.version
