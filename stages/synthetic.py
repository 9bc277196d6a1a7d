"""Offline, deterministic stand-in data: real photo crops as REAL, a small generator network's output as FAKE.

This is NOT CIFAKE. It exists so that a fresh machine with no credentials and no data can run everything.
REAL images are random crops of the photographs that ship inside scikit-learn (``china.jpg``, ``flower.jpg``)
and matplotlib (``grace_hopper.jpg``); FAKE images are drawn by a small convolutional generator (random fixed
weights, upsampling + convolutions, as in a GAN/diffusion decoder) run locally. Both are JPEG-encoded the same
way, so compression is not the signal.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from stages.sources import Entry

SYNTHETIC_NOTICE = (
    "SYNTHETIC DATA: real photo crops vs a locally generated network's output, not CIFAKE; "
    "metrics say nothing about detecting Stable Diffusion images"
)
TEST_FRACTION = 5  # test gets per_class // TEST_FRACTION images per class


def _photographs() -> list[Image.Image]:
    """The real photographs bundled with installed packages (no download)."""
    import matplotlib
    import sklearn.datasets

    paths = [Path(sklearn.datasets.__file__).parent / "images" / name for name in ("china.jpg", "flower.jpg")]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [Image.open(path).convert("RGB") for path in paths]


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _real_crops(count: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    photos = _photographs()
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        largest = min(photo.size) // 2
        # data.image_size goes to 512, past half a photo's short side (213): there, nearly all of the photo
        # (the draws of the crop's place below need one pixel of room), resized like every crop.
        side = int(rng.integers(size, largest)) if size < largest else min(photo.size) - 1
        left = int(rng.integers(0, photo.size[0] - side))
        top = int(rng.integers(0, photo.size[1] - side))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield np.asarray(crop)


class TinyGenerator:
    """A 4x4 latent -> (size x size x 3) convolutional generator with fixed random weights, in NumPy."""

    def __init__(self, size: int, rng: np.random.Generator, channels: int = 16) -> None:
        # Up to the first power of two that covers ``size``; __call__ crops that to ``size``.
        self.size = size
        self.upsamplings = math.ceil(math.log2(size / 4))
        self.channels = channels
        self.convs = [
            rng.normal(0, np.sqrt(2 / (9 * channels)), (3, 3, channels, channels))
            for _ in range(self.upsamplings)
        ]
        self.to_rgb = rng.normal(0, 1 / np.sqrt(channels), (channels, 3))

    @staticmethod
    def _conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
        return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True)

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        """Map latents ``(N, 4, 4, channels)`` to images in [-1, 1] ``(N, size, size, 3)``."""
        x = latent
        for kernel in self.convs:
            x = x.repeat(2, axis=1).repeat(2, axis=2)  # nearest upsampling: the classic generator artifact
            x = self._conv3x3(x, kernel)
            x = np.where(x > 0, x, 0.2 * x)
        # A crop, not a resize: resampling would blur the upsampling artifacts that make these images FAKE.
        return np.tanh(x[:, : self.size, : self.size] @ self.to_rgb)


def _fake_images(count: int, size: int, rng: np.random.Generator, batch: int = 64) -> Iterator[np.ndarray]:
    generator = TinyGenerator(size, rng)
    made = 0
    while made < count:
        n = min(batch, count - made)
        images = generator(rng.normal(size=(n, 4, 4, generator.channels)))
        # Give each image a photo-like colour cast and contrast so brightness alone does not separate classes.
        mean = rng.uniform(0.25, 0.65, size=(n, 1, 1, 3))
        spread = rng.uniform(0.12, 0.28, size=(n, 1, 1, 1))
        scaled = images / (images.std(axis=(1, 2, 3), keepdims=True) + 1e-6)
        pixels = np.clip((mean + spread * scaled) * 255, 0, 255).astype(np.uint8)
        yield from pixels
        made += n


def generate(per_class: int, size: int, seed: int = 0) -> Iterator[Entry]:
    """Yield synthetic entries in the Kaggle layout order (train then test, REAL then FAKE).

    Args:
        per_class: Train images per class; test gets ``per_class // 5`` per class.
        size: Image side in pixels.
        seed: Generation seed: the same arguments always give the same bytes.
    """
    for split, count in (("train", per_class), ("test", max(1, per_class // TEST_FRACTION))):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        for class_name, images in (
            ("REAL", _real_crops(count, size, rng)),
            ("FAKE", _fake_images(count, size, rng)),
        ):
            for index, pixels in enumerate(images):
                yield Entry(split, class_name, f"{class_name.lower()}-{index:06d}.jpg", _jpeg(pixels))
