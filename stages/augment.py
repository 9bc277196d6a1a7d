"""Training's input pipeline: shuffled batches, random web degradations, CutMix and mixup, on the fly, seeded.

The degradations are the ones uploads go through (re-saved JPEGs, images resized up or down and brought back
to the model's size the way the predictor does it, blur, sensor noise). They reuse ``core.degrade``'s PIL
primitives and ``core.imaging.resize``, so training sees exactly what serving and the robustness report see.
On the TensorFlow backend they run in the ``tf.data`` pipeline (a ``tf.numpy_function`` per batch, in parallel
with the model's step); on JAX or torch, which have no ``tf.data``, in worker processes feeding a Python
stream of the same batches (:func:`batch_stream`). Never in the saved model and never on disk. Over the last
epochs of a fit the probabilities can be lowered (:class:`DegradationTail`).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.config import DegradationParams, DegradationTailParams
from core.degrade import blur, jpeg, noise, rescale
from core.imaging import open_image, resize

# Ranges of the random degradations (params.yaml sets only how often each happens).
JPEG_QUALITY = (40, 95)  # inclusive; web re-encoders rarely go below 40 or above 95
RESAMPLE_FACTOR = (0.5, 4.0)  # drawn log-uniformly: as many downscales as enlargements
RESAMPLE_METHODS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
BLUR_RADIUS = (0.3, 1.0)  # "mild": beyond ~1 px a 32x32 image loses the artifacts the model looks for
NOISE_SIGMA = (2.0, 8.0)  # in 0..255 units


def active(degradations: DegradationParams) -> bool:
    """Whether any degradation has a non-zero probability."""
    return any(p > 0 for p in degradations.model_dump().values())


@dataclass
class DegradationTail:
    """The end of a fit with fewer degradations (``augmentation.degradation_tail``), by the batches' numbers.

    :meth:`plan` puts the start at the last ``fraction`` of the planned epochs; train calls it again when the
    time budget re-plans them. The input pipeline asks :meth:`at` for each batch as it prepares it, so a plan
    that does not move gives the same batches on every run.
    """

    fraction: float
    scale: float
    start: int | None = None  # the tail's first batch; None: no plan yet
    first_epoch: int | None = None  # the tail's first epoch, from 1; None: no plan yet, or no tail in it

    @classmethod
    def from_params(cls, params: DegradationTailParams) -> DegradationTail:
        return cls(fraction=params.fraction, scale=params.scale)

    def plan(self, epochs: int, steps_per_epoch: int) -> None:
        """Start the tail at the last ``fraction`` of ``epochs``: none if that is no epoch or scale is 1."""
        tail = round(epochs * self.fraction) if self.scale < 1 else 0
        self.start = (epochs - tail) * steps_per_epoch
        self.first_epoch = epochs - tail + 1 if tail else None

    def at(self, degradations: DegradationParams, batch: int) -> DegradationParams:
        """The probabilities for batch number ``batch`` of the fit (counting from 0)."""
        if self.start is None or batch < self.start:
            return degradations
        return degradations.scaled(self.scale)


def degrade_images(
    images: np.ndarray, degradations: DegradationParams, rng: np.random.Generator
) -> np.ndarray:
    """Apply each degradation with its probability to each uint8 ``(S, S, 3)`` image, in upload order.

    Every random number is drawn for every image whether or not its degradation applies, so the same seed
    gives the same draws under any probabilities.

    Args:
        images: uint8 ``(N, S, S, 3)`` model-size images.
        degradations: The probability of each degradation.
        rng: The generator to draw from.

    Returns:
        The degraded images, same shape and dtype.
    """
    n = len(images)
    chances = [degradations.resample, degradations.blur, degradations.noise, degradations.jpeg]
    applies = rng.random((n, 4)) < chances
    factors = np.exp(rng.uniform(np.log(RESAMPLE_FACTOR[0]), np.log(RESAMPLE_FACTOR[1]), n))
    methods = rng.integers(len(RESAMPLE_METHODS), size=n)
    radii = rng.uniform(*BLUR_RADIUS, n)
    sigmas = rng.uniform(*NOISE_SIGMA, n)
    noise_seeds = rng.integers(2**31, size=n)
    qualities = rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, size=n)
    out = np.array(images, dtype=np.uint8)
    size = images.shape[2], images.shape[1]
    for i in np.flatnonzero(applies.any(axis=1)):
        resample, blurred, noisy, compressed = applies[i]
        picture = Image.fromarray(out[i])
        if resample:
            # Edited elsewhere at another size, then resized to the model's size by the predictor.
            picture = resize(rescale(picture, float(factors[i]), RESAMPLE_METHODS[methods[i]]), size)
        if blurred:
            picture = blur(picture, float(radii[i]))
        if noisy:
            picture = noise(picture, float(sigmas[i]), int(noise_seeds[i]))
        if compressed:
            # Last, as an upload is compressed after any editing; decoded as the predictor decodes uploads.
            picture = open_image(jpeg(picture, int(qualities[i])))
        out[i] = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return out


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    degradations: DegradationParams,
    mixup_alpha: float,
    cutmix: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Degrade each image at random, then mix pairs of images and labels (CutMix, mixup), seeded per batch.

    Args:
        images: uint8 ``(N, S, S, 3)``.
        labels: ``(N,)`` 0 (REAL) / 1 (FAKE).
        seed: Seeds this batch's draws; the same seed gives the same batch.
        degradations: The probability of each degradation.
        mixup_alpha: Mixup's Beta(alpha, alpha) parameter; 0 disables mixup.
        cutmix: The probability that an image gets a patch of another (:func:`cut_and_paste`); 0 disables it.

    Returns:
        The new uint8 images and float32 labels (fractional where CutMix or mixup mixed two images).
    """
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)
    labels = np.asarray(labels, dtype=np.float32)
    if active(degradations):
        images = degrade_images(images, degradations, rng)
    if cutmix > 0 and len(images) > 1:
        images, labels = cut_and_paste(images, labels, cutmix, rng)
    if mixup_alpha > 0 and len(images) > 1:
        weight = rng.beta(mixup_alpha, mixup_alpha, len(images)).astype(np.float32)
        partner = rng.permutation(len(images))
        w = weight[:, None, None, None]
        # The model takes uint8 images, so the blend is rounded back to uint8 (at most half a grey level off).
        images = np.rint(w * images + (1 - w) * images[partner]).astype(np.uint8)
        labels = weight * labels + (1 - weight) * labels[partner]
    return np.asarray(images, dtype=np.uint8), labels


def cut_and_paste(
    images: np.ndarray, labels: np.ndarray, chance: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CutMix: paste a square of another image of the batch into some images; labels mixed by area.

    Each image is chosen with probability ``chance``; its square covers a uniform share of its area
    (CutMix's Beta(1, 1)) at a uniform place inside it, copied from the same place of a random partner.
    Its label becomes the area-weighted mean of the two labels, so a REAL image with a quarter of a FAKE
    one pasted in is 0.25 FAKE: the model learns to look for evidence everywhere, not in one place.

    Args:
        images: uint8 ``(N, S, S, 3)``; not modified.
        labels: float32 ``(N,)``.
        chance: The probability that an image gets a patch.
        rng: The batch's generator.

    Returns:
        The new images and labels.
    """
    out, mixed = images.copy(), labels.copy()
    side = images.shape[1]
    partner = rng.permutation(len(images))
    chosen = np.flatnonzero(rng.random(len(images)) < chance)
    cuts = np.rint(side * np.sqrt(rng.random(len(chosen)))).astype(int)
    for i, cut in zip(chosen, cuts, strict=True):
        top, left = rng.integers(0, side - cut + 1, 2)
        box = (slice(top, top + cut), slice(left, left + cut))
        out[(i, *box)] = images[(partner[i], *box)]  # from the originals: no patch of a patch
        share = cut * cut / side**2
        mixed[i] = (1 - share) * labels[i] + share * labels[partner[i]]
    return out, mixed


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    degradations: DegradationParams,
    mixup_alpha: float,
    cutmix: float = 0.0,
    endless: bool = False,
    tail: DegradationTail | None = None,
):
    """A ``tf.data`` pipeline of shuffled, augmented ``(uint8 images, float32 labels)`` batches.

    Reshuffled and redrawn every epoch, reproducibly for a given seed. The shuffle moves indices, not
    images, and the augmentation runs in parallel with training, ahead of it (prefetch).

    Args:
        images: uint8 ``(N, S, S, 3)`` (a memory map is read once, into the pipeline).
        labels: ``(N,)`` 0/1 labels.
        batch_size: Images per batch (the last batch of an epoch may be smaller).
        seed: Seeds the shuffle and every batch's augmentation draws.
        degradations: The probability of each degradation.
        mixup_alpha: Mixup's Beta parameter; 0 disables it.
        cutmix: The probability of CutMix per image; 0 disables it.
        endless: One pass over the images after another, for ever (a whole fit), instead of one pass.
        tail: Fewer degradations from a batch on, counting the batches of the whole stream.

    Returns:
        A ``tf.data.Dataset``: one pass (an epoch), or the passes of a whole fit with ``endless``.
    """
    import tensorflow as tf

    images = tf.constant(np.asarray(images, dtype=np.uint8))
    labels = tf.constant(np.asarray(labels, dtype=np.float32))
    shape = tuple(images.shape[1:])
    order = tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    batches = order.batch(batch_size).map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)))
    augmenting = active(degradations) or mixup_alpha > 0 or cutmix > 0
    if augmenting:
        # One int64 seed per batch, new ones every epoch, the same sequence for the same seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        batches = tf.data.Dataset.zip(batches, seeds)
    if endless:
        batches = batches.repeat()
    if augmenting:

        def augment_numpy(xs, ys, batch_seed, number):
            chances = tail.at(degradations, int(number)) if tail else degradations
            return augment_batch(xs, ys, batch_seed, chances, mixup_alpha, cutmix)

        def augment(number, batch: tuple):
            (xs, ys), batch_seed = batch
            x, y = tf.numpy_function(
                augment_numpy, [xs, ys, batch_seed, number], (tf.uint8, tf.float32), stateful=False
            )
            x.set_shape((None, *shape))
            y.set_shape((None,))
            return x, y

        batches = batches.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batches.prefetch(tf.data.AUTOTUNE)


def validation_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int):
    """Unshuffled, unaugmented ``(uint8 images, float32 labels)`` batches for validation."""
    import tensorflow as tf

    data = (np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.float32))
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def uses_tf_data() -> bool:
    """Whether training reads :func:`training_dataset` (TensorFlow) or :func:`batch_stream` (JAX, torch)."""
    import keras

    return keras.backend.backend() == "tensorflow"


def batch_stream(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    degradations: DegradationParams,
    mixup_alpha: float,
    cutmix: float = 0.0,
    shuffle: bool = True,
    workers: int | None = None,
    tail: DegradationTail | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(uint8 images, float32 labels)`` batches for the backends without ``tf.data`` (JAX, torch).

    Batches made as :func:`training_dataset` makes them (its shuffles and seeds are tf.data's, so not the
    same ones), one pass over the images after another: each pass reshuffled, each batch augmented by
    :func:`augment_batch` with its own seed, the same stream for the same seed whatever the number of
    workers. The augmentation runs ahead of the model in ``workers`` processes, spawned rather than forked
    (the backends' own threads make a fork unsafe); none start when nothing is augmented.

    Args:
        images: uint8 ``(N, S, S, 3)``.
        labels: ``(N,)`` 0/1 labels.
        batch_size: Images per batch (the last batch of a pass may be smaller).
        seed: Seeds the shuffles and every batch's augmentation draws.
        degradations: The probability of each degradation.
        mixup_alpha: Mixup's Beta parameter; 0 disables it.
        cutmix: The probability of CutMix per image; 0 disables it.
        shuffle: False keeps the images' order (endless validation batches).
        workers: Augmenting processes (default: one per CPU core but one, for the model's own thread).
        tail: Fewer degradations from a batch on, counting the batches of the whole stream.

    Yields:
        Batches, for ever: Keras' ``fit`` takes as many as ``steps_per_epoch`` says per epoch.
    """
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.float32)
    count = len(labels)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for epoch in itertools.count():
            order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
            for start in range(0, count, batch_size):
                index = order[start : start + batch_size]
                batch_seed = np.random.SeedSequence([seed, epoch, start]).generate_state(1, np.uint64)[0]
                yield images[index], labels[index], int(batch_seed)

    if not (active(degradations) or mixup_alpha > 0 or cutmix > 0):
        yield from ((x, y) for x, y, _ in batches())
        return
    workers = workers or max(1, (os.cpu_count() or 1) - 1)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: collections.deque = collections.deque()
    try:
        for number, (x, y, batch_seed) in enumerate(batches()):
            chances = tail.at(degradations, number) if tail else degradations
            pending.append(pool.submit(augment_batch, x, y, batch_seed, chances, mixup_alpha, cutmix))
            if len(pending) > 2 * workers:  # keep every worker busy, in order, a bounded way ahead
                yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)  # waits only for the batches being augmented
