"""DeepGuard's custom Keras layer and the flip-averaging wrapper: part of the saved model format.

Loading a saved model needs the layer registered, so it lives here, beside the format (core/modelstore.py),
not with the architectures: the predictor loads models without importing any training code.
"""

from __future__ import annotations

import keras
from keras import layers

OUTPUT_NAME = "fake_probability"  # the model's output layer: P(FAKE)


@keras.saving.register_keras_serializable(package="deepguard")
class HorizontalFlip(layers.Layer):
    """Mirror images left to right, always (unlike ``RandomFlip``, which only acts in training)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


def with_flip_averaging(model: keras.Model) -> keras.Model:
    """Wrap a trained model so it scores each image as the mean P(FAKE) of the image and its mirror image.

    Test-time augmentation that matches the training flip: twice the inference compute for a steadier score.
    The wrapper shares the trained weights and keeps the uint8 ``image`` input and the ``fake_probability``
    output, so every consumer of the model is unchanged.
    """
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    mirrored = HorizontalFlip(name="mirror")(inputs)
    outputs = layers.Average(dtype="float32", name=OUTPUT_NAME)([model(inputs), model(mirrored)])
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")
