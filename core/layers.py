"""DeepGuard's custom Keras layers and the flip-averaging wrapper: part of the saved model format.

Loading a saved model needs the layer registered, so it lives here, beside the format (core/modelstore.py),
not with the architectures: the predictor loads models without importing any training code.
"""

from __future__ import annotations

import keras
from keras import layers

OUTPUT_NAME = "fake_probability"  # the model's output layer: P(FAKE)


@keras.saving.register_keras_serializable(package="deepguard")
class HorizontalFlip(layers.Layer):
    """Mirror images left to right, always (unlike ``RandomFlip``, which only acts in training).

    Kept registered so models saved before the single-pass wrapper (which used it) still load.
    """

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


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
