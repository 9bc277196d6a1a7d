"""Image decoding and the one preprocessing function shared by ingest, preprocess, serving and tests."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

from core.errors import DeepGuardError
from core.formats import ACCEPTED_FORMATS, FORMATS, RAW_FORMAT

# Pillow's own limit warns at ~89 MP and errors at twice that; we refuse earlier, before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
# The formats opened at all (Pillow's format names). Others are refused unopened: some of Pillow's readers
# decode while opening (ICO decodes its embedded PNG), before any pixel limit could be checked.
READ_FORMATS = tuple(f.name for f in FORMATS)
# Pillow's names for a JPEG file: MPO is one holding more than one picture (a phone's depth map or preview).
JPEG_FORMATS = ("JPEG", "MPO")
# Each scan of a progressive JPEG passes over every pixel again, and an empty scan costs 14 bytes: at 2 ms a
# scan (measured at 36 megapixels) a 10 MiB file of them holds a decoder for about 25 minutes. Encoders write
# about 10 (libjpeg's progression; a phone's multi-picture file as many per picture): more is refused unread.
MAX_JPEG_SCANS = 100
# Pillow reads an uncompressed TIFF strip by strip (or tile by tile) in Python, 7 us each: 400,000 one-pixel
# strips (3.2 MB) took 2.8 s, a 10 MiB file about 9 s on a budget of 1.3 M pixels. Encoders write a strip per
# 8 KB or so (1,280 in 10 MiB); Pillow reads a compressed TIFF, a JPEG or a PNG as one.
MAX_TILES = 65_536


class ImageError(DeepGuardError):
    """Bytes that are not a usable image; the message says why."""


@contextlib.contextmanager
def _image_errors() -> Iterator[None]:
    """Turn Pillow's exceptions into ``ImageError`` with a reason a user can read.

    Pillow's own bomb check raises beyond twice ``Image.MAX_IMAGE_PIXELS``; below that, ``read_header``'s
    ``max_pixels`` refuses. (No ``warnings.catch_warnings()`` here: it swaps process-wide state, which is not
    thread-safe in the predictor's decode pool, and resets every module's once-only warnings on each call.)
    """
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image of a format read here ({ACCEPTED_FORMATS})") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's readers raise many types on malformed files (TypeError, struct.error)
        raise ImageError(f"corrupt or truncated image: {exc}") from None


# Pillow's DecompressionBombError message: "Image size (900000000 pixels) exceeds limit of ...".
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _too_large(size: str, max_pixels: int) -> str:
    # A phone's 50-megapixel photo as much as a bomb: say what to do, not what it might be.
    return f"too large: {size} exceeds the limit of {max_pixels:,} pixels; send a smaller copy"


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes lazily: format and size come from the header, no pixel is decoded yet.

    Args:
        data: The encoded file (JPEG, PNG, WebP, ... anything Pillow reads).
        max_pixels: Refuse images whose header claims more pixels than this (decompression bombs).

    Returns:
        The opened image; ``load()`` decodes it.

    Raises:
        ImageError: for empty, non-image and oversized inputs.
    """
    if not data:
        raise ImageError("empty file")
    with _image_errors():
        try:
            image = Image.open(io.BytesIO(data), formats=READ_FORMATS)
        except Image.DecompressionBombError as exc:
            # Pillow refuses beyond twice its MAX_IMAGE_PIXELS while opening, before the check below: its
            # message named its own limit (178,956,970), not this one, and called the upload an attack.
            claimed = _BOMB_PIXELS.search(str(exc))
            size = f"{int(claimed[1]):,} pixels" if claimed else "more pixels than that"
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
            raise ImageError(_too_large(size, limit)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(_too_large(f"{width}x{height} pixels", max_pixels))
    # 0xFFDA starts a scan; in entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker.
    scans = data.count(b"\xff\xda") if image.format in JPEG_FORMATS else 0
    if scans > MAX_JPEG_SCANS:
        raise ImageError(
            f"decompression bomb refused: a JPEG of {scans} scans exceeds the limit of {MAX_JPEG_SCANS} scans"
        )
    if len(image.tile) > MAX_TILES:
        raise ImageError(
            f"decompression bomb refused: {len(image.tile)} strips or tiles exceed the limit of {MAX_TILES}"
        )
    return image


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully, refusing empty, truncated, non-image and oversized inputs.

    Args:
        data: The encoded file (JPEG, PNG, WebP, ... anything Pillow reads).
        max_pixels: Refuse images whose header claims more pixels than this (decompression bombs).

    Returns:
        The decoded image, pixels loaded.

    Raises:
        ImageError: with a reason a user can read.
    """
    image = read_header(data, max_pixels=max_pixels)
    with _image_errors():
        image.load()
    return image


def has_alpha(image: Image.Image) -> bool:
    """Whether an opened image has transparency: an alpha band, or a palette with a transparent entry."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited on white, as a browser shows them."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        # Pillow converts 16-bit grey (PNG, TIFF) to 8 bits by clipping at 255, which turns a photo white; the
        # high byte is what Pillow keeps of 16-bit colour images.
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    if has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# How uploads of another size are brought to the model's size; the robustness set resizes the same way.
RESAMPLING = Image.Resampling.BILINEAR


def resize(image: Image.Image, size: tuple[int, int], method: Image.Resampling = RESAMPLING) -> Image.Image:
    """Resize (antialiased): the one resampling function of serving, evaluation and augmentation."""
    return image if image.size == size else image.resize(size, method)


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Return the ``(size, size, 3)`` uint8 array the model takes; scaling to [0, 1] is inside the model.

    Images of another size are resized (antialiased bilinear), which is a no-op for native CIFAKE images.
    """
    return np.asarray(resize(to_rgb(image), (size, size)), dtype=np.uint8)


@dataclass(frozen=True)
class InputFacts:
    """What an upload was before it became the model's input: the facts behind domain notes and monitoring."""

    width: int
    height: int
    format: str  # Pillow's format name (PNG, JPEG, WEBP, ...), or RAW_FORMAT for a pixel tensor
    mode: str  # Pillow's mode before conversion to RGB (RGB, RGBA, L, P, ...)
    had_alpha: bool  # some pixels were transparent, and were composited on white
    animated: bool  # more than one frame (an animation, a multi-page TIFF): only the first was scored
    # JPEG files: the IJG quality (1-100) their luminance table matches; None for other formats.
    jpeg_quality: int | None = None
    # The model's input has no colour (core.imaging.is_grayscale): a grey file, or a black-and-white photo.
    grayscale: bool = False


# The largest difference between two colour channels of a pixel that still counts as grey: a grey picture
# saved as a colour JPEG keeps up to 2 or 3 from chroma rounding. In the CIFAKE sample 161 of 1,250 FAKE
# images and 13 of 1,250 REAL ones are grey by this measure.
GRAYSCALE_TOLERANCE = 4


def is_grayscale(pixels: np.ndarray) -> bool:
    """Whether an RGB uint8 image ``(H, W, 3)`` has no colour: every pixel's channels within the tolerance."""
    channels = np.asarray(pixels, dtype=np.int16)
    return bool(np.abs(np.diff(channels, axis=-1)).max() <= GRAYSCALE_TOLERANCE)


# The IJG (libjpeg) base luminance quantisation table, which quality 50 uses as is.
_IJG_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ]
).reshape(-1)
# The table each quality 1..100 produces (libjpeg's jpeg_quality_scaling), sorted: order-free comparison.
_IJG_TABLES = np.sort(
    np.stack(
        [
            np.clip((_IJG_LUMINANCE * (5000 // q if q < 50 else 200 - 2 * q) + 50) // 100, 1, 255)
            for q in range(1, 101)
        ]
    ),
    axis=1,
)


def jpeg_quality(image: Image.Image) -> int | None:
    """Estimate a JPEG's encoder quality from its luminance table (read from the header, no decoding).

    Encoders built on libjpeg (Pillow, browsers, most editors) scale one standard table by the quality, so
    the nearest scaled table names it; other encoders get the nearest equivalent.

    Returns:
        1-100, or None when the image is not a JPEG.
    """
    tables = getattr(image, "quantization", None) if image.format in JPEG_FORMATS else None
    if not tables:
        return None
    luminance = np.sort(np.asarray(tables[min(tables)], dtype=np.int64).reshape(-1))
    if luminance.size != _IJG_LUMINANCE.size:
        return None
    return int(np.abs(_IJG_TABLES - luminance).sum(axis=1).argmin()) + 1


def has_transparent_pixels(image: Image.Image) -> bool:
    """Whether any pixel of ``image`` is not fully opaque (what :func:`to_rgb` composites on white changes).

    An alpha channel alone says nothing: screenshots, canvas exports and many editors save RGBA PNGs whose
    every pixel is opaque, and those reach the model unchanged. Reads the pixels (one pass over the alpha).
    """
    if not has_alpha(image):
        return False
    rgba = image if image.mode in ("RGBA", "LA", "PA") else image.convert("RGBA")  # a palette's transparency
    return rgba.getchannel("A").getextrema()[0] < 255


def facts_of(image: Image.Image) -> InputFacts:
    """The :class:`InputFacts` of an opened image (before :func:`to_rgb`); its pixels are read when it has an
    alpha channel (:func:`has_transparent_pixels`)."""
    had_alpha = has_transparent_pixels(image)
    return InputFacts(
        width=image.size[0],
        height=image.size[1],
        # A phone's multi-picture JPEG is a JPEG to monitoring (in_domain_formats), metrics and the V2 output;
        # recorded as MPO, a 32x32 one counted as out of the domain.
        format="JPEG" if image.format in JPEG_FORMATS else image.format or RAW_FORMAT,
        mode=image.mode,
        had_alpha=had_alpha,
        # Not n_frames: GIF and TIFF count frames by walking the whole file (TIFF's quadratically: 7 s for
        # a 3 MB TIFF of 1x1 pages), work no pixel budget sees; is_animated reads up to the second frame only.
        # A phone's multi-picture JPEG is not: its first picture is the photo, the others a depth map or a
        # preview (it was noted "animated: only the first frame was scored", and so denied a native verdict).
        animated=image.format != "MPO" and bool(getattr(image, "is_animated", False)),
        jpeg_quality=jpeg_quality(image),
    )


# The turn that brings pixels stored with each EXIF orientation upright (ImageOps.exif_transpose's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations of a picture stored sideways: upright, its width and height swap.
_SIDEWAYS = (5, 6, 7, 8)


def decode_upload(
    data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, InputFacts]:
    """Decode an uploaded file into the model's input array and the facts of the original.

    The image is turned upright by its EXIF orientation, as a browser shows it: phones store portrait
    photos sideways, and the verdict, the heatmap drawn over the page's picture and the size reported are
    of the picture the user sees. The model's small square input is turned, not the decoded picture: turning
    a 40-megapixel photo first copied it whole.
    """
    image = open_image(data, max_pixels=max_pixels)
    with _image_errors():  # converting a mode, or counting a TIFF's pages, reads more of the file
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        pixels, facts = to_model_input(image, size), facts_of(image)
        facts = dataclasses.replace(facts, grayscale=is_grayscale(pixels))
        turn = _UPRIGHT.get(orientation)
        if turn is None:
            return pixels, facts
        upright = np.asarray(Image.fromarray(pixels).transpose(turn))
        if orientation in _SIDEWAYS:
            facts = dataclasses.replace(facts, width=facts.height, height=facts.width)
        return upright, facts


def decode_for_model(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image file into the model's input array: what serving does to an upload."""
    return decode_upload(data, size, max_pixels=max_pixels)[0]


def validate_dataset_image(data: bytes, size: int) -> np.ndarray:
    """Strict check for a dataset image: it decodes, is RGB and is exactly ``size`` x ``size``.

    Raises:
        ImageError: naming the reason, which ingest counts in the data report.
    """
    image = open_image(data)
    if image.mode != "RGB":
        raise ImageError(f"mode {image.mode}, expected RGB")
    if image.size != (size, size):
        raise ImageError(f"size {image.size[0]}x{image.size[1]}, expected {size}x{size}")
    return np.asarray(image, dtype=np.uint8)
