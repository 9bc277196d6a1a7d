"""The selectable Keras 3 architectures: uint8 images in, P(FAKE) out, preprocessing inside the model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import get_args

import keras
from keras import layers

from core.config import Architecture, AugmentationParams
from core.errors import DeepGuardError
from core.layers import OUTPUT_NAME, LogSpectrum, RandomShift

log = logging.getLogger(__name__)

# Derived from the config's Literal so the names params.yaml accepts and the models built here cannot drift.
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# Smallest input side each keras.applications backbone accepts.
_BACKBONE_MIN_SIZE = {"EfficientNetB0Transfer": 32, "XceptionTransfer": 71}


class PretrainedWeightsError(DeepGuardError):
    """Pretrained backbone weights could not be obtained from the configured source."""


# --------------------------------------------------------------------------------------------------------
# Building blocks


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int = 3, strides: int = 1, act: bool = True):
    """Conv (no bias: BatchNorm supplies it) + BatchNorm + optional ReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if act else x


def _residual_block(x: keras.KerasTensor, filters: int, strides: int = 1) -> keras.KerasTensor:
    """A ResNet basic block (two 3x3 convs) with a 1x1 projection shortcut when the shape changes."""
    shortcut = x
    y = _conv_bn(x, filters, 3, strides)
    y = _conv_bn(y, filters, 3, 1, act=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, act=False)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _squeeze_excite(x: keras.KerasTensor, reduced: int) -> keras.KerasTensor:
    """Channel attention: global pool, bottleneck, sigmoid gate multiplied back onto the features."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(max(1, reduced), 1, activation="swish")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid")(s)
    return layers.Multiply()([x, s])


def _mbconv(x: keras.KerasTensor, filters: int, expand: int, strides: int) -> keras.KerasTensor:
    """EfficientNet's MBConv: 1x1 expand, 3x3 depthwise, squeeze-excite, 1x1 project, residual if it fits."""
    channels = x.shape[-1]
    y = x
    if expand != 1:
        y = layers.Conv2D(channels * expand, 1, use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.Activation("swish")(y)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("swish")(y)
    y = _squeeze_excite(y, channels // 4)
    y = layers.Conv2D(filters, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if strides == 1 and channels == filters:
        y = layers.Add()([x, y])
    return y


# --------------------------------------------------------------------------------------------------------
# Bodies: each maps the normalised float image to a feature vector (the shared head adds the output).


def _simple_cnn(x: keras.KerasTensor, dropout: float, batch_norm: bool = False) -> keras.KerasTensor:
    """The seed's basic network: three conv + max-pool stages and a small dense layer.

    With ``batch_norm`` each conv is followed by BatchNorm (and loses its bias), at the same compute.
    """
    for filters in (32, 64, 128):
        if batch_norm:
            x = _conv_bn(x, filters)
        else:
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return layers.Dropout(dropout)(x)


def _vgg_style_cnn(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """SimpleCNN with VGG blocks: two 3x3 convs per stage at SimpleCNN's widths, so each stage sees more of
    the full-resolution detail before pooling (3.7x the convolutions, 1.5x the parameters)."""
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return layers.Dropout(dropout)(x)


def _deeper_cnn(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Five conv blocks (conv, BatchNorm, ReLU, max-pool on the first four) with dropout between them."""
    for i, filters in enumerate((32, 64, 96, 128, 192)):
        x = _conv_bn(x, filters)
        if i < 4 and x.shape[1] > 1:
            x = layers.MaxPooling2D()(x)
        x = layers.SpatialDropout2D(dropout / 2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(dropout)(x)


def _efficient_style_cnn(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """A small EfficientNet-like stack of MBConv blocks with squeeze-excite, sized for 32x32 inputs."""
    x = _conv_bn(x, 32)
    # (filters, expansion, stride): one stride-2 step per stage keeps the early high-frequency detail.
    for filters, expand, strides in ((24, 1, 1), (32, 4, 2), (32, 4, 1), (64, 4, 2), (64, 4, 1), (96, 4, 2)):
        x = _mbconv(x, filters, expand, strides)
    x = _conv_bn(x, 192, 1)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(dropout)(x)


def _deepguard_cnn(
    x: keras.KerasTensor,
    dropout: float,
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (1, 1, 1, 1),
) -> keras.KerasTensor:
    """The default: a residual CNN that keeps full 32x32 resolution through its first stage.

    Generator artifacts are high-frequency (a few pixels wide), so the stem has no stride or pooling and the
    first stage of residual blocks runs at full resolution; each later stage halves the resolution with a
    strided block and doubles the width (32x32, 16x16, 8x8, 4x4); BatchNorm throughout; global average
    pooling instead of a large dense layer. The 4x4 stage holds most of the parameters but little of the
    compute, so on a CPU it adds capacity at almost no cost in images per second.
    """
    x = _conv_bn(x, widths[0])
    for stage, (filters, count) in enumerate(zip(widths, blocks, strict=True)):
        for i in range(count):
            x = _residual_block(x, filters, strides=2 if stage > 0 and i == 0 else 1)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(dropout)(x)


_SCRATCH_BODIES: dict[str, Callable[[keras.KerasTensor, float], keras.KerasTensor]] = {
    "DeepGuardCNN": _deepguard_cnn,
    "SimpleCNN": _simple_cnn,
    "SimpleBatchNormCNN": partial(_simple_cnn, batch_norm=True),
    "VGGStyleCNN": _vgg_style_cnn,
    "DeeperCNN": _deeper_cnn,
    "EfficientStyleCNN": _efficient_style_cnn,
}


# --------------------------------------------------------------------------------------------------------
# Transfer backbones


def _backbone_input_size(architecture: str, image_size: int) -> int:
    """Side the image is upsampled to: twice the input (more detail), at least the backbone minimum."""
    return max(_BACKBONE_MIN_SIZE[architecture], 2 * image_size)


def _backbone(architecture: str, size: int, pretrained_weights: str) -> keras.Model:
    """Create a keras.applications backbone (no top, average pooled) with the requested weights.

    Raises:
        PretrainedWeightsError: ImageNet weights cannot be downloaded, or the weights file is missing or
            does not fit the backbone.
    """
    constructor = {
        "EfficientNetB0Transfer": keras.applications.EfficientNetB0,
        "XceptionTransfer": keras.applications.Xception,
    }[architecture]
    kwargs = {"include_top": False, "input_shape": (size, size, 3), "pooling": "avg"}
    if pretrained_weights == "none":
        log.warning(
            "%s: model.pretrained_weights=none: the backbone is randomly initialised; this is NOT transfer "
            "learning",
            architecture,
        )
        return constructor(weights=None, **kwargs)
    if pretrained_weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # keras' get_file raises a bare Exception for network failures
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PretrainedWeightsError(
                f"{architecture}: cannot download ImageNet weights ({reason}); put the path of a local "
                "no-top weights file in model.pretrained_weights (or 'none' for a random initialisation)"
            ) from None
    path = Path(pretrained_weights).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{architecture}: model.pretrained_weights: no such weights file: {path} "
            "(use a local no-top weights file, 'imagenet' or 'none')"
        )
    try:
        return constructor(weights=str(path), **kwargs)
    except (ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PretrainedWeightsError(
            f"{architecture}: weights file {path} does not fit the no-top backbone: {reason}"
        ) from None


def _transfer_body(
    x: keras.KerasTensor, architecture: str, image_size: int, pretrained_weights: str, dropout: float
) -> keras.KerasTensor:
    """Upsample to a size the backbone accepts, apply the backbone's own input scaling, run the backbone."""
    size = _backbone_input_size(architecture, image_size)
    if size != image_size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="upsample")(x)
    # x is in [0, 1] here. EfficientNetB0's own preprocessing layers want [0, 255]; Xception wants [-1, 1].
    if architecture == "EfficientNetB0Transfer":
        x = layers.Rescaling(255.0, name="backbone_scaling")(x)
    else:
        x = layers.Rescaling(2.0, offset=-1.0, name="backbone_scaling")(x)
    x = _backbone(architecture, size, pretrained_weights)(x)
    return layers.Dropout(dropout)(x)


def _spectrum_branch(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Features of the luminance spectrum: per-frequency standardisation, then one dense layer.

    Each frequency keeps its own input (no pooling, no convolution), so a trace at one frequency is not
    averaged away; BatchNorm over the flattened spectrum standardises each frequency on its own.
    """
    x = layers.Flatten(name="spectrum_flat")(LogSpectrum(name="spectrum")(x))
    x = layers.BatchNormalization(name="spectrum_standardize")(x)
    x = layers.Dense(64, activation="relu", name="spectrum_dense")(x)
    return layers.Dropout(dropout, name="spectrum_dropout")(x)


# --------------------------------------------------------------------------------------------------------
# Public API


def _augmentation(x: keras.KerasTensor, augmentation: AugmentationParams, seed: int) -> keras.KerasTensor:
    """Training-only augmentation layers (Keras skips them at inference), on images in [0, 1]."""
    if augmentation.horizontal_flip:
        x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
    if augmentation.translate > 0:
        # Whole pixels: a bilinear sub-pixel shift would blur the high-frequency generator artifacts.
        x = RandomShift(augmentation.translate, seed=seed + 1, name="augment_translate")(x)
    if augmentation.contrast > 0:
        x = layers.RandomContrast(
            augmentation.contrast, value_range=(0.0, 1.0), seed=seed + 2, name="augment_contrast"
        )(x)
    return x


def build_model(
    architecture: str,
    *,
    image_size: int,
    dropout: float,
    pretrained_weights: str,
    augmentation: AugmentationParams,
    mean: Sequence[float],
    variance: Sequence[float],
    seed: int,
    spectrum_branch: bool = False,
) -> keras.Model:
    """Build an uncompiled model that maps uint8 images (N, S, S, 3) to P(FAKE) (N, 1).

    Inside the model: cast + ``Rescaling(1/255)``, training-only augmentation, then either the dataset's
    per-channel ``Normalization`` (from-scratch bodies) or upsampling plus the backbone's own scaling
    (transfer bodies), then the body and a float32 sigmoid output (so mixed precision works). Augmentation
    runs before normalisation because ``RandomContrast`` clips to its value range.

    Args:
        architecture: One of ``ARCHITECTURES``.
        image_size: Side of the square input images.
        dropout: Dropout rate before the output layer (and inside DeeperCNN).
        pretrained_weights: Transfer models only: ``"imagenet"``, a local weights file path, or ``"none"``
            (random initialisation, logged as a warning). Ignored by the from-scratch architectures.
        augmentation: The training-only augmentation policy.
        mean: Per-channel mean of the training images in [0, 1] scale.
        variance: Per-channel variance of the training images in [0, 1] scale.
        seed: Seeds Python, NumPy and the backend (initial weights) and the augmentation layers.
        spectrum_branch: Also feed the augmented image's log-magnitude luminance spectrum through a dense
            branch whose features join the body's before the output layer.

    Returns:
        The Keras model, named after the architecture.

    Raises:
        ValueError: An unknown architecture or wrong statistics length.
        PretrainedWeightsError: Transfer weights that cannot be obtained.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if len(mean) != 3 or len(variance) != 3:
        raise ValueError("mean and variance need one value per RGB channel")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="to_unit_range")(inputs)  # casts uint8 to the compute dtype
    x = _augmentation(x, augmentation, seed)
    if architecture in _BACKBONE_MIN_SIZE:
        features = _transfer_body(x, architecture, image_size, pretrained_weights, dropout)
    else:
        standardized = layers.Normalization(mean=list(mean), variance=list(variance), name="standardize")(x)
        features = _SCRATCH_BODIES[architecture](standardized, dropout)
    if spectrum_branch:
        features = layers.Concatenate(name="with_spectrum")([features, _spectrum_branch(x, dropout)])
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(features)
    return keras.Model(inputs, outputs, name=architecture)
