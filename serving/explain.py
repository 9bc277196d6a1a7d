"""Grad-CAM heatmaps of the served model: where in the image the evidence for its label lies.

The map explains the model that is served, not the trained net alone: the gradients are those of the served
output (flip averaging and any calibration layer on top of it included) with respect to the activations of
the last convolutional stage in *every* call of the trained net, i.e. the image's branch and its mirror
branch. Each branch's map is mirrored back into image coordinates when its input was mirrored, the branches
are summed (the served output is their average, so each contributes what it contributes to the score), and
the sum is rectified, upsampled bilinearly to the input size and scaled to [0, 1] per image.

Nothing here depends on layer names: the stage is found by structure (the last convolution with a spatial
output, descending into nested models), and mirrored branches by the ``HorizontalFlip`` layer their input
went through. The net's sigmoid output gets a gradient that does not vanish where P(FAKE) rounds to 1.0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import DeepGuardError

log = logging.getLogger(__name__)


class ExplainError(DeepGuardError):
    """A model that Grad-CAM cannot explain (it has no convolutional stage with a spatial output)."""


def _conv_types() -> tuple[type, ...]:
    from keras import layers

    return (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _spatial_shape(layer: Any) -> tuple[int, int] | None:
    """``(H, W)`` of a layer's 4-D output when it has more than one position, else None."""
    shape = getattr(layer, "output", None)
    shape = getattr(shape, "shape", None)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return (shape[1], shape[2]) if shape[1] * shape[2] > 1 else None


def _has_conv_stage(layer: Any) -> bool:
    """A convolution with a spatial output, or a nested model holding one."""
    if _is_model(layer):
        return any(_has_conv_stage(inner) for inner in layer.layers)
    return isinstance(layer, _conv_types()) and _spatial_shape(layer) is not None


def _target_layer(model: Any) -> Any:
    """The layer of ``model`` whose output Grad-CAM reads, or the nested model that holds it.

    The last convolution with a spatial output marks the last convolutional stage; the stage's output is the
    last layer after it with the same spatial size (its BatchNorm, activation, residual addition), so pooling
    to a coarser grid is not part of it. A nested model (the trained net inside the flip-averaging wrapper, a
    pretrained backbone inside the trained net) that comes last is returned itself, to be searched in turn.

    Raises:
        ExplainError: when ``model`` has no convolution with a spatial output.
    """
    layers = model.layers  # topological order
    last = max((i for i, layer in enumerate(layers) if _has_conv_stage(layer)), default=None)
    if last is None:
        raise ExplainError(f"model {model.name!r} has no convolutional layer with a spatial output")
    if _is_model(layers[last]):
        return layers[last]
    size = _spatial_shape(layers[last])
    return [layer for layer in layers[last:] if _spatial_shape(layer) == size][-1]


def _flatten_tensors(value: Any) -> list:
    import keras

    return [item for item in keras.tree.flatten(value) if isinstance(item, keras.KerasTensor)]


def _is_sigmoid_dense(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.sigmoid


def _sigmoid_with_exact_gradient(logits: Any) -> Any:
    """``sigmoid`` whose gradient stays nonzero where the output rounds to 1.0 in float32.

    TensorFlow's sigmoid gradient is ``y * (1 - y)`` from the output, which is 0 once ``y == 1.0`` (a logit
    above ~17): a confidently FAKE image would get no map at all. ``sigmoid(z) * sigmoid(-z)`` is the same
    derivative without the cancellation. The forward value is unchanged.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def sigmoid(z: tf.Tensor) -> tuple[tf.Tensor, Any]:
        return tf.sigmoid(z), lambda upstream: upstream * tf.sigmoid(z) * tf.sigmoid(-z)

    return sigmoid(logits)


def _sigmoid_dense_layer(dense: Any) -> Any:
    """A layer computing ``dense`` (its own weights) through :func:`_sigmoid_with_exact_gradient`."""
    import keras

    class ExactGradientSigmoidDense(keras.layers.Layer):
        def call(self, inputs: Any) -> Any:
            kernel = dense.kernel
            logits = keras.ops.matmul(keras.ops.cast(inputs, kernel.dtype), kernel)
            if dense.use_bias:
                logits = logits + dense.bias
            return _sigmoid_with_exact_gradient(logits)

    return ExactGradientSigmoidDense(name=f"{dense.name}_exact_gradient", dtype=dense.dtype_policy)


def expose_activations(model: Any) -> tuple[Any, list[bool]]:
    """Rebuild ``model`` (sharing its layers and weights) to also output the last convolutional stage.

    Args:
        model: A Keras functional model with one output.

    Returns:
        A model with outputs ``[model's output, activation, ...]``: one activation ``(N, h, w, C)`` per call
        of the stage (two under flip averaging), and for each whether the image reached it mirrored.

    Raises:
        ExplainError: when the model has no convolutional stage.
    """
    import keras

    from core.layers import HorizontalFlip

    target = _target_layer(model)
    inner = expose_activations(target) if _is_model(target) else None
    activations: list = []
    mirrored: list[bool] = []
    flipped: dict[int, bool] = {}  # id of a symbolic tensor -> whether the image reached it mirrored

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        # Mirroring is tracked from the input to each call; both branches meet only after the stage.
        was_flipped = any(flipped.get(id(tensor), False) for tensor in _flatten_tensors((args, kwargs)))
        if layer is target and inner is not None:
            output, *inner_activations = inner[0](*args, **kwargs)
            activations.extend(inner_activations)
            mirrored.extend(was_flipped != flag for flag in inner[1])
        elif _is_sigmoid_dense(layer):  # the net's P(FAKE) output
            output = _sigmoid_dense_layer(layer)(*args, **kwargs)
        else:
            output = layer(*args, **kwargs)
            if layer is target:
                activations.append(output)
                mirrored.append(was_flipped)
        now_flipped = was_flipped != isinstance(layer, HorizontalFlip)
        for tensor in _flatten_tensors(output):
            flipped[id(tensor)] = now_flipped
        return output

    # clone_function=identity: the rebuilt graph calls the original layers, so it has the served weights.
    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    exposed = keras.Model(rebuilt.inputs, [rebuilt.outputs[0], *activations], name=f"{model.name}_exposed")
    return exposed, mirrored


@dataclass(frozen=True)
class Explainer:
    """Grad-CAM for one loaded model; build once per model (:func:`build_explainer`), call per batch."""

    function: Any  # the traced tf.function: (uint8 images, explain-FAKE mask) -> maps
    image_size: int
    stages: int  # calls of the convolutional stage per image (2 under flip averaging)

    def __call__(self, images: np.ndarray, fake: np.ndarray) -> np.ndarray:
        """Heatmaps for ``images``.

        Args:
            images: uint8 ``(N, S, S, 3)``, the pixels the model scored.
            fake: bool ``(N,)``: True explains P(FAKE) (the label FAKE), False explains P(REAL).

        Returns:
            float32 ``(N, S, S)`` in [0, 1]; 1 where the evidence for the label is strongest, all zeros when
            the output has no gradient (a saturated probability) or no positive evidence.
        """
        if len(images) == 0:
            return np.zeros((0, self.image_size, self.image_size), dtype=np.float32)
        maps = self.function(np.asarray(images, dtype=np.uint8), np.asarray(fake, dtype=bool))
        return np.asarray(maps, dtype=np.float32)


def build_explainer(model: Any, image_size: int) -> Explainer:
    """Trace Grad-CAM for ``model``: uint8 ``(N, image_size, image_size, 3)`` in, one output (P(FAKE)).

    Args:
        model: The served Keras model.
        image_size: Side of the model's square input; the maps have the same size.

    Returns:
        The explainer, traced once for any batch size.

    Raises:
        ExplainError: when the model has no convolutional stage.
    """
    import tensorflow as tf

    exposed, mirrored = expose_activations(model)
    size = (image_size, image_size)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.uint8),
            tf.TensorSpec([None], tf.bool),
        ]
    )
    def grad_cam(images: tf.Tensor, fake: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probability, *activations = exposed(images, training=False)
            probability = tf.reshape(tf.cast(probability, tf.float32), [-1])
            # Each image's own label: P(FAKE) for FAKE; for REAL, P(REAL) = 1 - P(FAKE): the gradient negated.
            score = tf.reduce_sum(tf.where(fake, probability, -probability))
        gradients = tape.gradient(score, activations)
        total = tf.zeros([tf.shape(images)[0], *size], tf.float32)
        for activation, gradient, flipped in zip(activations, gradients, mirrored, strict=True):
            activation, gradient = tf.cast(activation, tf.float32), tf.cast(gradient, tf.float32)
            # Grad-CAM: channel weights are the spatially averaged gradients.
            weights = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)
            branch = tf.reduce_sum(weights * activation, axis=-1, keepdims=True)
            if flipped:  # back into the coordinates of the image the client sent
                branch = tf.reverse(branch, axis=[2])
            total += tf.image.resize(branch, size, method="bilinear")[..., 0]
        total = tf.nn.relu(total)
        peak = tf.reduce_max(total, axis=(1, 2), keepdims=True)
        # A map without positive evidence stays zero instead of becoming noise scaled up to 1.
        return tf.math.divide_no_nan(total, peak)

    explainer = Explainer(grad_cam, image_size, len(mirrored))
    explainer(np.zeros((1, image_size, image_size, 3), dtype=np.uint8), np.ones((1,), dtype=bool))  # trace
    log.info("explainer: Grad-CAM over %d call(s) of the last convolutional stage", len(mirrored))
    return explainer
