"""DeepGuard's custom Keras layers and the flip-averaging wrapper: part of the saved model format.

Loading a saved model needs the layer registered, so it lives here, beside the format (core/modelstore.py),
not with the architectures: the predictor loads models without importing any training code.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from core.imagestats import LUMINANCE

OUTPUT_NAME = "fake_probability"  # the model's output layer: P(FAKE)


@keras.saving.register_keras_serializable(package="deepguard")
class HorizontalFlip(layers.Layer):
    """Mirror images left to right, always (unlike ``RandomFlip``, which only acts in training).

    Kept registered so models saved before the single-pass wrapper (which used it) still load.
    """

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


def _take(x, axis: int, start: int, stop: int):
    """``x[:, start:stop]`` (axis 1) or ``x[:, :, start:stop]`` (axis 2), for any backend."""
    return x[:, start:stop] if axis == 1 else x[:, :, start:stop]


@keras.saving.register_keras_serializable(package="deepguard")
class RandomShift(layers.Layer):
    """In training only, shift each image by a whole number of pixels, up to ``factor`` of its side each way.

    What ``RandomTranslation(factor, factor, fill_mode="reflect", interpolation="nearest")`` does (a nearest
    sample of a shift by ``t`` is a shift by ``round(t)``; the edge is mirrored, ``d c b a | a b c d``), as
    a sum of the few whole-pixel slices, with the same cost on every backend. Keras' layer runs a general
    affine resampler, which on the torch backend loops over the images in Python and on JAX gathers per pixel.
    """

    def __init__(self, factor: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        ops = keras.ops
        batch = ops.shape(inputs)[0]
        for axis in (1, 2):
            side = inputs.shape[axis]
            reach = self.factor * side
            most = min(side - 1, math.floor(reach + 0.5))  # the largest |round(t)| for |t| <= reach
            if most < 1:
                continue
            drawn = keras.random.uniform((batch,), -reach, reach, seed=self.seed_generator)
            shift = ops.clip(ops.round(drawn), -most, most)
            ahead, behind = _take(inputs, axis, 0, most), _take(inputs, axis, side - most, side)
            padded = ops.concatenate([ops.flip(ahead, axis), inputs, ops.flip(behind, axis)], axis=axis)
            shifted = 0
            for k in range(-most, most + 1):  # each image keeps the one slice of its own shift
                chosen = ops.reshape(ops.cast(ops.equal(shift, k), inputs.dtype), (-1, 1, 1, 1))
                shifted = shifted + chosen * _take(padded, axis, most - k, most - k + side)
            inputs = shifted
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor, "seed": self.seed}


@keras.saving.register_keras_serializable(package="deepguard")
class WithMirror(layers.Layer):
    """Stack a batch and its mirror image along the batch axis: ``(N, ...)`` in, ``(2N, ...)`` out."""

    def call(self, inputs):
        return keras.ops.concatenate([inputs, keras.ops.flip(inputs, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else 2 * input_shape[0]
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="deepguard")
class HalvesMean(layers.Layer):
    """Average the first and second halves of a batch: ``(2N, ...)`` in, ``(N, ...)`` out."""

    def call(self, inputs):
        first, second = keras.ops.split(inputs, 2, axis=0)
        return (first + second) / 2

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // 2
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="deepguard")
class LogSpectrum(layers.Layer):
    """``core.imagestats.log_spectrum`` as a model layer: ``(N, H, W, 3)`` in [0, 1] in, the centred
    log-magnitude spectrum of the luminance ``(N, H, W)`` out.

    Generator upsampling leaves periodic traces that are single points of this spectrum and spread over the
    whole image in pixel space. Always float32 (the FFT has no float16 kernel), also under mixed precision.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        luma = keras.ops.tensordot(inputs, keras.ops.convert_to_tensor(LUMINANCE, "float32"), axes=1)
        real, imag = keras.ops.fft2((luma, keras.ops.zeros_like(luma)))
        magnitude = keras.ops.log1p(keras.ops.sqrt(real * real + imag * imag))
        height, width = luma.shape[1], luma.shape[2]
        return keras.ops.roll(keras.ops.roll(magnitude, height // 2, axis=1), width // 2, axis=2)  # fftshift

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


def in_float32(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights that computes in float32 in every layer.

    Mixed precision is for training: a model saved with its mixed policy would score in half precision
    wherever it is served (bfloat16 keeps 8 bits of mantissa; a CPU without fast kernels emulates it).
    """

    def to_float32(layer: layers.Layer) -> layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=to_float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def with_flip_averaging(model: keras.Model) -> keras.Model:
    """Wrap a trained model so it scores each image as the mean P(FAKE) of the image and its mirror image.

    Test-time augmentation that matches the training flip: twice the inference compute for a steadier score.
    The images and their mirrors go through the network as one batch of 2N (one call, not two: the same
    FLOPs with half the per-call overhead); inference-mode BatchNorm makes each image's score independent
    of its batch. The wrapper shares the trained weights and keeps the uint8 ``image`` input and the
    ``fake_probability`` output, so every consumer of the model is unchanged.
    """
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    scores = model(WithMirror(name="mirror")(inputs))
    outputs = HalvesMean(dtype="float32", name=OUTPUT_NAME)(scores)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")


@keras.saving.register_keras_serializable(package="deepguard")
class Temperature(layers.Layer):
    """Calibration of a probability: ``sigmoid(logit(clip(p)) / T + bias)``, fitted on validation.

    With ``bias`` 0 it is temperature scaling (one parameter); with a bias it is Platt scaling
    (``sigmoid(a * logit + b)`` with ``a = 1 / T``). It acts on the model's output probability (the logit
    is recovered from it), so it wraps any trained model, flip-averaged or not, and the served
    ``fake_probability`` is calibrated with no change to serving. ``T > 1`` softens an over-confident
    model; ``T > 0`` keeps the ranking, and therefore ROC-AUC, unchanged.
    """

    def __init__(self, temperature: float = 1.0, epsilon: float = 1e-7, bias: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")  # scores near 0 and 1 need float32, even in mixed precision
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.bias = float(bias)

    def call(self, inputs):
        p = keras.ops.clip(keras.ops.cast(inputs, "float32"), self.epsilon, 1.0 - self.epsilon)
        logit = keras.ops.log(p) - keras.ops.log1p(-p)
        return keras.ops.sigmoid(logit / self.temperature + self.bias)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "epsilon": self.epsilon,
            "bias": self.bias,
        }


def with_temperature(model: keras.Model, temperature: float, bias: float = 0.0) -> keras.Model:
    """Wrap a trained model so its output is calibrated; input ``image`` and output name unchanged.

    Args:
        model: A model with the uint8 ``image`` input and the P(FAKE) output.
        temperature: The fitted temperature (1.0 leaves probabilities as they are).
        bias: Platt scaling's offset on the logit (0.0: temperature scaling).

    Returns:
        A model whose output layer is a :class:`Temperature` named ``fake_probability``.
    """
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    outputs = Temperature(temperature, bias=bias, name=OUTPUT_NAME)(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_calibrated")


def _temperature_layer(model: keras.Model) -> Temperature | None:
    layer = model.layers[-1] if model.layers else None
    return layer if isinstance(layer, Temperature) else None


def temperature_of(model: keras.Model) -> float:
    """The temperature built into ``model`` by :func:`with_temperature`; 1.0 for an uncalibrated model."""
    layer = _temperature_layer(model)
    return layer.temperature if layer is not None else 1.0


def calibration_bias_of(model: keras.Model) -> float:
    """Platt scaling's logit offset built into ``model``; 0.0 for temperature scaling or no calibration."""
    layer = _temperature_layer(model)
    return layer.bias if layer is not None else 0.0


def without_temperature(model: keras.Model) -> keras.Model:
    """The model as it was before calibration (the wrapped model), or ``model`` itself if it has none.

    Evaluate scores it to report calibration before and after on the same test images.
    """
    if _temperature_layer(model) is None:
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))
