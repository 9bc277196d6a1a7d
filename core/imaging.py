"""Image decoding and the one preprocessing function shared by ingest, preprocess, serving and tests."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image

from core.errors import DeepGuardError

# Pillow's own limit warns at ~89 MP and errors at twice that; we refuse earlier, before decoding.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(DeepGuardError):
    """Bytes that are not a usable image; the message says why."""


@contextlib.contextmanager
def _image_errors() -> Iterator[None]:
    """Turn Pillow's exceptions into ``ImageError`` with a reason a user can read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None


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
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"decompression bomb refused: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited on white, as a browser shows them."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Return the ``(size, size, 3)`` uint8 array the model takes; scaling to [0, 1] is inside the model.

    Images of another size are resized (antialiased bilinear), which is a no-op for native CIFAKE images.
    """
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_for_model(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image file into the model's input array: what serving does to an upload."""
    return to_model_input(open_image(data, max_pixels=max_pixels), size)


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
