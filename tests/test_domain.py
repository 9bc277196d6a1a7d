"""Input-domain notes and the verdict policy (serving/domain.py), and the JPEG quality behind one note."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.imaging import InputFacts, decode_upload, jpeg_quality
from core.labels import EMPTY_FAKE_BAND, EMPTY_REAL_BAND, verdicts
from serving.domain import (
    DEFAULT_MARGIN,
    MIN_FINE_DETAIL,
    MIN_JPEG_QUALITY,
    domain_note,
    domain_notes,
    domain_verdict,
    domain_verdicts,
)

NATIVE = InputFacts(
    width=32, height=32, format="JPEG", mode="RGB", had_alpha=False, animated=False, jpeg_quality=75
)
BANDS = (0.3, 0.7)


def facts(**changes) -> InputFacts:
    return InputFacts(**{**NATIVE.__dict__, **changes})


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 100])
def test_jpeg_quality_reads_the_encoder_quality_from_the_header(quality):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(pixels), "JPEG", quality=quality)
    assert jpeg_quality(Image.open(io.BytesIO(data))) == quality
    assert decode_upload(data, 32)[1].jpeg_quality == quality


def test_a_phones_multi_picture_jpeg_has_its_quality_read():
    # Pillow names a JPEG holding more than one picture (a phone's depth map or preview) MPO; its quality was
    # not read, so a hard-compressed phone photo got no note and a native image's verdict.
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    first, second = Image.fromarray(pixels), Image.new("RGB", (32, 32))
    data = encoded(first, "MPO", save_all=True, append_images=[second], quality=40)
    upload = decode_upload(data, 32)[1]
    assert (upload.format, upload.jpeg_quality) == ("JPEG", 40)
    assert "JPEG quality about 40" in domain_note(upload, 32)


def test_jpeg_quality_is_none_for_other_formats():
    assert jpeg_quality(Image.open(io.BytesIO(encoded(Image.new("RGB", (8, 8)), "PNG")))) is None


@pytest.mark.parametrize(
    "upload",
    [
        NATIVE,
        facts(format="PNG", jpeg_quality=None),
        facts(format="RAW", jpeg_quality=None),
        facts(jpeg_quality=90),
        facts(jpeg_quality=MIN_JPEG_QUALITY),
    ],
)
def test_native_images_get_no_note(upload):
    assert domain_notes(upload, 32) == []
    assert domain_note(upload, 32) == ""


@pytest.mark.parametrize(
    ("upload", "phrase"),
    [
        (facts(width=128, height=128, format="PNG"), "resized from 128x128 to 32x32, 4x larger"),
        (facts(width=128, height=128, format="PNG"), "far from the training images"),
        (facts(width=16, height=16), "resized from 16x16 to 32x32, 2x smaller"),
        (facts(width=8, height=8), "4x smaller than the training images (far from the training images)"),
        (facts(width=48, height=32), "not square (48x32)"),
        (facts(format="PNG", mode="RGBA", had_alpha=True), "transparent pixels composited on white"),
        (facts(format="GIF", animated=True), "animated: only the first frame was scored"),
        (facts(format="TIFF", animated=True), "multi-page: only the first page was scored"),
        (facts(jpeg_quality=50), "JPEG quality about 50, more compressed than the training images"),
        (facts(jpeg_quality=MIN_JPEG_QUALITY - 1), f"JPEG quality about {MIN_JPEG_QUALITY - 1}"),
    ],
)
def test_each_difference_is_named_in_the_note(upload, phrase):
    note = domain_note(upload, 32)
    assert phrase in note
    assert note.startswith("Unlike the training images:")
    # What the note means for the answer, in words an uploader reads ("needs a clearer score" did not say).
    assert note.endswith("It gets a verdict only for a score near 0 or 1.")


def test_a_factor_of_two_is_not_called_far():
    assert "far from" not in domain_note(facts(width=64, height=64), 32)


@pytest.mark.parametrize("image", [NATIVE, facts(width=16, height=16)], ids=["native", "noted"])
def test_an_empty_band_decides_no_score_not_even_a_saturated_one(image):
    """A calibrated float32 P(FAKE) can be exactly 0.0 or 1.0; an empty band's edge decides neither, and the
    margin a noted image gets keeps it empty. The other band still decides."""
    empty = (EMPTY_REAL_BAND, EMPTY_FAKE_BAND)
    assert [domain_verdict(p, empty, image, 32, DEFAULT_MARGIN) for p in (0.0, 1.0)] == ["UNCERTAIN"] * 2
    only_fake = (EMPTY_REAL_BAND, 0.7)
    decided = [domain_verdict(p, only_fake, image, 32, DEFAULT_MARGIN) for p in (0.0, 1.0)]
    assert decided == ["UNCERTAIN", "FAKE"]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.29, 0.3, 0.31, 0.5, 0.69, 0.7, 0.85, 0.95, 1.0])
def test_native_image_gets_the_bands_verdict(p):
    assert domain_verdict(p, BANDS, NATIVE, 32, DEFAULT_MARGIN) == verdicts([p], *BANDS)[0]


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.05, "REAL"),
        (0.09, "REAL"),
        (0.11, "UNCERTAIN"),
        (0.5, "UNCERTAIN"),
        (0.8, "UNCERTAIN"),
        (0.95, "FAKE"),
    ],
)
def test_noted_image_needs_the_margin_beyond_the_band(p, expected):
    upscaled = facts(width=128, height=128, format="PNG", jpeg_quality=None)
    assert domain_verdict(p, BANDS, upscaled, 32, 0.2) == expected


def test_a_score_decided_for_a_native_image_is_uncertain_for_a_noted_one():
    # The policy's point: the same P(FAKE) is not trusted as much for an image unlike the training images.
    assert domain_verdict(0.75, BANDS, NATIVE, 32, 0.2) == "FAKE"
    assert domain_verdict(0.75, BANDS, facts(jpeg_quality=40), 32, 0.2) == "UNCERTAIN"


@pytest.mark.parametrize(
    ("width", "height", "decided"),
    [
        (128, 128, True),
        (129, 96, False),
        (8, 8, True),
        (7, 7, False),
        (4032, 3024, False),
        (3024, 4032, False),
        (128, 8, True),  # each side within 4x: its width shrunk 4x, its height enlarged 4x
        (32, 1, False),  # one row enlarged 32x: its longer side is the training images' own
        (128, 4, False),
        (1, 128, False),
    ],
)
def test_an_image_resized_beyond_the_measured_sizes_is_never_decided(width, height, decided):
    """A phone photo (4032x3024, shrunk 126x to 32x32) got "FAKE" on a score past the widened edge, though no
    verdict was ever measured beyond a 4x enlargement: now it is "can't tell" at any score, and says why."""
    upload = facts(width=width, height=height)
    verdicts_seen = {domain_verdict(p, BANDS, upload, 32, DEFAULT_MARGIN) for p in (0.0, 1.0)}
    assert verdicts_seen == ({"REAL", "FAKE"} if decided else {"UNCERTAIN"})
    note = domain_note(upload, 32)
    assert note.endswith("At this size the model gives no verdict.") != decided, note
    assert domain_verdict(1.0, BANDS, upload, 32, 0.0) == "FAKE"  # margin 0: the policy is off, this too


def test_margin_zero_switches_the_policy_off():
    noted = facts(width=200, height=100, had_alpha=True)
    for p in np.linspace(0, 1, 21):
        assert domain_verdict(float(p), BANDS, noted, 32, 0.0) == verdicts([p], *BANDS)[0]


def test_little_fine_detail_is_noted_and_policed():
    assert domain_notes(NATIVE, 32, MIN_FINE_DETAIL + 0.01) == []
    blurred = domain_note(NATIVE, 32, MIN_FINE_DETAIL - 0.01)
    assert "little fine detail (blurred, smoothed or flat)" in blurred
    assert domain_verdict(0.75, BANDS, NATIVE, 32, 0.2, MIN_FINE_DETAIL + 0.01) == "FAKE"
    assert domain_verdict(0.75, BANDS, NATIVE, 32, 0.2, MIN_FINE_DETAIL - 0.01) == "UNCERTAIN"
    # A request's images each with their own fine detail (how the predictor calls it).
    details = [MIN_FINE_DETAIL + 0.01, MIN_FINE_DETAIL - 0.01]
    assert domain_verdicts([0.75, 0.75], BANDS, [NATIVE, NATIVE], 32, 0.2, details) == ["FAKE", "UNCERTAIN"]


def test_blur_lowers_fine_detail_below_the_threshold_and_training_images_stay_above():
    """The threshold separates CIFAKE-like detail from a 1-pixel blur (on a textured image)."""
    from core.degrade import degrade
    from core.imagestats import image_statistics

    rng = np.random.default_rng(1)
    # Smooth gradients plus texture: roughly a photo's spectrum at 32x32.
    base = np.linspace(0, 200, 32)[None, :, None] + rng.normal(0, 25, (16, 32, 32, 3))
    images = np.clip(base, 0, 255).astype(np.uint8)
    sharp = image_statistics(images)["hf_energy"]
    blurred = image_statistics(degrade(images, "blur_1.0"))["hf_energy"]
    assert (sharp >= MIN_FINE_DETAIL).all() and (blurred < MIN_FINE_DETAIL).all()


@pytest.mark.parametrize(
    ("width", "height", "phrase"),
    [
        (32, 1, "resized from 32x1 to 32x32, enlarged 32x in height (far from the training images)"),
        (128, 4, "resized from 128x4 to 32x32, shrunk 4x in width and enlarged 8x in height (far from"),
        (48, 32, "resized from 48x32 to 32x32, shrunk 1.5x in width;"),
    ],
)
def test_a_stretched_upload_says_how_each_side_was_resized(width, height, phrase):
    """A 32x1 strip was "resized from 32x1 to 32x32, 1x larger than the training images" and could be
    decided: its one row is stretched 32x into the model's input, past any size a verdict was measured on."""
    note = domain_note(facts(width=width, height=height), 32)
    assert phrase in note, note


def _grey_photo() -> Image.Image:
    rng = np.random.default_rng(3)
    grey = np.clip(np.linspace(0, 200, 32)[None, :] + rng.normal(0, 25, (32, 32)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("grey PNG", encoded(_grey_photo(), "PNG")),
        ("black-and-white photo as a colour JPEG", encoded(_grey_photo().convert("RGB"), "JPEG", quality=95)),
        ("uniform grey", encoded(Image.new("RGB", (32, 32), (128, 128, 128)), "PNG")),
    ],
)
def test_an_image_without_colour_is_noted_and_needs_the_margin(name, data):
    """161 of the sample's 1,250 FAKE images are grey and 13 of its 1,250 REAL ones: a grey upload was scored
    with no note, its number called a calibrated probability. On grey copies of the sample model's test
    images 8.4 % of its FAKE verdicts were real photos, against 4.6 % in colour."""
    _, upload = decode_upload(data, 32)
    assert upload.grayscale, name
    note = domain_note(upload, 32)
    assert "no colour (grayscale), and most grey images the model learned from were AI-generated" in note
    assert domain_verdict(0.75, BANDS, upload, 32, 0.2) == "UNCERTAIN"  # FAKE for a colour image


def test_a_colour_image_is_not_called_grey():
    rng = np.random.default_rng(4)
    colour = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for data in (encoded(colour, "PNG"), encoded(colour, "JPEG", quality=75)):
        _, upload = decode_upload(data, 32)
        assert not upload.grayscale and domain_notes(upload, 32) == []
    # A faint tint is colour: one pixel's channels 6 apart.
    pixels = np.full((32, 32, 3), 120, np.uint8)
    pixels[5, 5] = (120, 126, 120)
    assert not decode_upload(encoded(Image.fromarray(pixels), "PNG"), 32)[1].grayscale
