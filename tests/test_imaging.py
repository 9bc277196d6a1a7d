"""Unit tier: decoding and the shared preprocessing function."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.formats import AVIF, FORMATS, ImageFormat, sniff, unread_kind
from core.imaging import ImageError, decode_for_model, decode_upload, read_header, validate_dataset_image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def test_native_size_image_is_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = decode_for_model(encode(Image.fromarray(pixels)), 32)
    assert out.dtype == np.uint8 and np.array_equal(out, pixels)


def test_any_size_is_resized_and_grey_is_made_rgb() -> None:
    out = decode_for_model(encode(Image.new("L", (300, 200), 128), "JPEG"), 32)
    assert out.shape == (32, 32, 3) and abs(int(out.mean()) - 128) <= 2


def test_a_larger_upload_is_shrunk_with_antialiasing() -> None:
    """A 1-pixel checkerboard averages to grey; a resize without antialiasing keeps only black or white."""
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = decode_for_model(encode(Image.fromarray(board).convert("RGB")), 32)
    assert np.abs(out.astype(int) - 128).max() <= 4


def _palette_with_transparent_black() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def _palette_with_an_unused_transparent_index() -> bytes:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)  # index 0 is transparent, and no pixel uses it
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGBA", (32, 32), (200, 30, 30, 255))),
        encode(Image.new("LA", (32, 32), (90, 255))),
        _palette_with_an_unused_transparent_index(),
    ],
    ids=["RGBA", "LA", "P"],
)
def test_an_opaque_image_with_an_alpha_channel_is_not_said_to_have_transparent_pixels(data: bytes) -> None:
    """A screenshot or canvas export is an RGBA PNG whose every pixel is opaque: it reaches the model as its
    RGB pixels, yet its note said "transparent pixels composited on white" and its verdict needed the domain
    margin (a served 0.988 went from FAKE to UNCERTAIN against the same pixels as RGB)."""
    from serving.domain import domain_note

    out, facts = decode_upload(data, 32)
    assert not facts.had_alpha
    assert "transparent" not in domain_note(facts, 32)
    assert (out == np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).all()


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGBA", (32, 32), (0, 0, 0, 0))),
        encode(Image.new("LA", (32, 32), (0, 0))),  # grey with alpha
        _palette_with_transparent_black(),  # a palette PNG (or GIF) whose transparent index is black
    ],
    ids=["RGBA", "LA", "P"],
)
def test_transparent_pixels_are_composited_on_white(data: bytes) -> None:
    out, facts = decode_upload(data, 32)
    assert (out == 255).all()
    assert facts.had_alpha, "the domain note says transparent pixels were composited"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image", "not an image"),
        (encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "corrupt or truncated"),
        # Pillow refuses these while opening (over twice its MAX_IMAGE_PIXELS), in this service's terms
        (png_header_claiming(30000, 30000), "too large: 900,000,000 pixels exceeds the limit of 40,000,000"),
        (png_header_claiming(8000, 8000), "too large: 8000x8000 pixels exceeds the limit of 40,000,000"),
    ],
)
def test_bad_bytes_raise_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_for_model(data, 32)


def ico_holding(png: bytes) -> bytes:
    """An ICO file whose one 16x16 entry is ``png`` (Pillow's ICO reader decodes it while opening)."""
    directory = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + directory + png


def tiff_with_a_broken_second_page() -> bytes:
    """Two pages; the second's width and height tags renamed, so only counting the pages fails."""
    page = Image.new("RGB", (40, 40), "red")
    buffer = io.BytesIO()
    page.save(buffer, format="TIFF", save_all=True, append_images=[page.copy()])
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for entry in range(struct.unpack_from("<H", data, second)[0]):
        where = second + 2 + 12 * entry
        if struct.unpack_from("<H", data, where)[0] in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<H", data, where, 65000 + entry)
    return bytes(data)


def test_a_format_that_decodes_while_opening_is_refused_unopened() -> None:
    # A 6300x6300 PNG inside an ICO: opening it decoded 40 M pixels before any limit was checked.
    huge = encode(Image.new("1", (6300, 6300)))
    with pytest.raises(ImageError, match="not an image of a format read here"):
        decode_for_model(ico_holding(huge), 32)


def test_later_pages_are_never_read() -> None:
    # Only the first page is scored, yet counting the pages walked them all, quadratically in Pillow's TIFF
    # reader: a 3 MB TIFF of 30,000 1x1 pages took 7 s (10 MiB: over a minute) on a budget of one pixel. Now
    # nothing past the second page's offset is read, so a malformed second page is never seen.
    pixels, facts = decode_upload(tiff_with_a_broken_second_page(), 32)
    assert facts.animated and pixels[..., 0].mean() > 200


def test_a_phone_photos_multi_picture_jpeg_is_read() -> None:
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    pixels, facts = decode_upload(buffer.getvalue(), 32)
    assert facts.format == "JPEG", "a JPEG to monitoring, not MPO"
    assert not facts.animated, "its second picture is a depth map or a preview, not a frame"
    assert pixels.shape == (32, 32, 3) and pixels[..., 0].mean() > 200  # the first picture, red


def test_dataset_validation_is_strict() -> None:
    assert validate_dataset_image(encode(Image.new("RGB", (32, 32))), 32).shape == (32, 32, 3)
    with pytest.raises(ImageError, match="mode RGBA, expected RGB"):
        validate_dataset_image(encode(Image.new("RGBA", (32, 32))), 32)
    with pytest.raises(ImageError, match="size 33x32, expected 32x32"):
        validate_dataset_image(encode(Image.new("RGB", (33, 32))), 32)


def test_upload_facts_name_what_was_dropped() -> None:
    from core.imaging import decode_upload

    buffer = io.BytesIO()
    frames = [Image.new("RGBA", (64, 40), (255, 0, 0, 0)), Image.new("RGBA", (64, 40), (0, 0, 255, 255))]
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    image, facts = decode_upload(buffer.getvalue(), 32)
    assert image.shape == (32, 32, 3)
    assert (facts.width, facts.height, facts.format, facts.had_alpha, facts.animated) == (
        64,
        40,
        "PNG",
        True,
        True,
    )


def test_decoding_does_not_reset_once_only_warnings() -> None:
    """A warning shown once stays shown once, however many images are decoded in between.

    ``warnings.catch_warnings()`` around every decode reset Python's record of warnings already shown (and
    swapped process-wide state from the predictor's decode threads): a library's deprecation warning then
    printed on every request.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="PNG")

    def warn() -> None:
        warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        for _ in range(3):
            warn()
            decode_upload(buffer.getvalue(), 32)
    assert len(shown) == 1


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_grey_image_keeps_its_tones(fmt: str) -> None:
    # Pillow turns 16-bit grey (mode I;16) into 8 bits by clipping at 255: a mid-grey scan was scored white.
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    pixels, facts = decode_upload(encode(Image.fromarray(ramp), fmt), 32)
    assert facts.mode.startswith("I;16")
    assert abs(float(pixels.mean()) - 127.5) < 2
    assert pixels.min() < 10 and pixels.max() > 245


def test_a_phone_photo_is_read_upright_as_a_browser_shows_it() -> None:
    # A phone stores a portrait photo sideways and says so in its EXIF orientation (6: turn it 90° clockwise);
    # the model, the heatmap drawn over the page's picture and the reported size must all see it upright.
    sideways = Image.new("RGB", (64, 32), "blue")
    sideways.paste((255, 0, 0), (0, 0, 32, 32))  # red on the left: on top once turned
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", quality=95, exif=exif)
    pixels, facts = decode_upload(buffer.getvalue(), 32)
    assert (facts.width, facts.height, facts.format) == (32, 64, "JPEG")
    top, bottom = pixels[:12].mean(axis=(0, 1)), pixels[-12:].mean(axis=(0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


@pytest.mark.parametrize("orientation", range(2, 9))
def test_only_the_models_small_input_is_turned_upright_never_the_full_picture(orientation, monkeypatch):
    # Turning a 40-megapixel photo before shrinking it copied it whole (160 MB more at the peak); the model's
    # input, the reported size and the heatmap over it are as upright as when the whole picture was turned.
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))
    expected = decode_for_model(encode(upright), 32).astype(int)
    turned: list[tuple[int, int]] = []
    transpose = Image.Image.transpose

    def spy(image: Image.Image, method: Image.Transpose) -> Image.Image:
        turned.append(image.size)
        return transpose(image, method)

    monkeypatch.setattr(Image.Image, "transpose", spy)
    pixels, facts = decode_upload(buffer.getvalue(), 32)
    assert turned == [(32, 32)]
    assert (facts.width, facts.height) == upright.size
    # Shrinking the two axes in the other order rounds some values the other way.
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_a_jpeg_of_endless_scans_is_refused_before_decoding() -> None:
    # Each scan of a progressive JPEG passes over every pixel again, and an empty scan costs 14 bytes: 2,000
    # of them (28 KB) added 4 s to a 6000x6000 decode, so a 10 MiB file within the pixel budget would hold
    # a decoder for about 25 minutes. Encoders write about 10.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    assert decode_for_model(data, 32).shape == (32, 32, 3)
    start = data.index(b"\xff\xda")
    scan = data[start : start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")]
    with pytest.raises(ImageError, match="decompression bomb refused: a JPEG of 1010 scans exceeds"):
        read_header(data[:-2] + scan * 1000 + b"\xff\xd9")


def tiff_of_one_pixel_strips(rows: int) -> bytes:
    """A 1 x ``rows`` uncompressed grey TIFF with one row per strip, every strip the same byte."""
    offsets_at = 8 + 2 + 12 * 8 + 4
    counts_at = offsets_at + 4 * rows
    pixel_at = counts_at + 4 * rows
    long, short = 4, 3  # TIFF field types
    tags = [
        (256, long, 1, 1),  # ImageWidth
        (257, long, 1, rows),  # ImageLength
        (258, short, 1, 8),  # BitsPerSample
        (259, short, 1, 1),  # Compression: none
        (262, short, 1, 1),  # PhotometricInterpretation: black is zero
        (273, long, rows, offsets_at),  # StripOffsets
        (278, long, 1, 1),  # RowsPerStrip
        (279, long, rows, counts_at),  # StripByteCounts
    ]
    data = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    data += b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    strips = struct.pack(f"<{rows}I", *[pixel_at] * rows) + struct.pack(f"<{rows}I", *[1] * rows)
    return data + strips + b"\x80"


def test_a_tiff_of_countless_strips_is_refused_before_decoding() -> None:
    # Pillow reads an uncompressed TIFF strip by strip, in Python (7 us a strip): a 10 MiB file of one-pixel
    # strips would cost about 9 s on a budget of 1.3 M pixels. Encoders write one strip per 8 KB or so.
    assert decode_for_model(tiff_of_one_pixel_strips(1000), 32).shape == (32, 32, 3)
    with pytest.raises(ImageError, match="decompression bomb refused: 100000 strips or tiles exceed"):
        read_header(tiff_of_one_pixel_strips(100_000))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_format_is_known_by_its_first_bytes_and_read_as_that_format(fmt: ImageFormat) -> None:
    # The web app and the feedback store refuse what sniff does not know, before the predictor sees it: an
    # AVIF saved from a web page answered 415 "not an image this service reads" though Pillow reads AVIF.
    data = encode(Image.new("RGB", (40, 24), "red"), fmt.name)
    assert sniff(data) is fmt
    assert read_header(data).format == fmt.name
    assert decode_upload(data, 32)[1].format == fmt.name


def test_a_heic_photo_or_a_pdf_is_not_taken_for_an_image_read_here() -> None:
    # HEIC shares AVIF's container (an ISO-BMFF `ftyp` box) under its own brands; Pillow does not read it.
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert sniff(heic) is None and sniff(b"%PDF-1.7") is None and sniff(b"") is None
    # An AVIF named by a compatible brand only (the major brand is the container's) is still AVIF.
    assert sniff(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1miafavif" + b"\x00" * 64) is AVIF


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "a HEIC photo"),
        (b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00heix" + b"\x00" * 64, "a HEIC photo"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document, not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG drawing"),
        (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- logo -->\n<SVG width="9"/>', "an SVG drawing"),
    ],
    ids=["heic", "heif-mif1", "pdf", "svg", "svg-xml"],
)
def test_a_file_people_upload_by_mistake_is_named_by_what_it_is(data: bytes, words: str) -> None:
    # The page said "scan.jpg is not an image this service reads" about a PDF named .jpg: it names it now.
    assert sniff(data) is None
    assert unread_kind(data).startswith(words)


def test_only_those_kinds_are_named() -> None:
    avif = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1miafavif" + b"\x00" * 64
    for data in (avif, b"", b"plain text", b'<?xml version="1.0"?><html/>', b"\x00\x00\x00\x18ftypisom"):
        assert unread_kind(data) is None, data
