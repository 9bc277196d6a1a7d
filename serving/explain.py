"""Grad-CAM heatmaps of the served model: where in the image the evidence for its label lies.

The map explains the model that is served, not the trained net alone: the gradients are those of the served
output (flip averaging and any calibration layer on top of it included) with respect to the activations of
the last convolutional stage for the image and for its mirror (one call of the trained net over the batch
stacked on its mirror, or two calls in older models). The mirror's map is mirrored back into image
coordinates, the two are summed (the served output is their average: each adds what it adds to the score),
and the sum is rectified, upsampled bilinearly to the input size and scaled to [0, 1] per image.

Nothing here depends on layer names: the stage is found by structure (the last convolution with a spatial
output, descending into nested models), and the mirrored rows by the ``WithMirror`` or ``HorizontalFlip``
layer their input went through. The net's sigmoid output gets a gradient that does not vanish where P(FAKE)
rounds to 1.0, and the calibration layer passes the gradient through (it would clip it to zero there).
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


# How a call of the stage saw the images: as sent, mirrored, or stacked (the batch, then its mirror: 2N rows).
AS_SENT, MIRRORED, STACKED = "as_sent", "mirrored", "stacked"


def expose_activations(model: Any) -> tuple[Any, list[str]]:
    """Rebuild ``model`` (sharing its layers and weights) to also output the last convolutional stage.

    Args:
        model: A Keras functional model with one output.

    Returns:
        A model with outputs ``[model's output, activation, ...]``: one activation per call of the stage,
        and for each how the images reached it: ``AS_SENT``, ``MIRRORED`` (flip averaging by two calls, in
        models saved before the single-pass wrapper) or ``STACKED`` (``(2N, h, w, C)``: batch, then mirror).

    Raises:
        ExplainError: when the model has no convolutional stage.
    """
    import keras

    from core.layers import HorizontalFlip, Temperature, WithMirror

    target = _target_layer(model)
    inner = expose_activations(target) if _is_model(target) else None
    activations: list = []
    mirrored: list[str] = []
    views: dict[int, str] = {}  # id of a symbolic tensor -> how the images reached it

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        # How the images were seen is tracked from the input to each call; views meet only after the stage.
        seen = {views.get(id(tensor), AS_SENT) for tensor in _flatten_tensors((args, kwargs))}
        view = STACKED if STACKED in seen else MIRRORED if MIRRORED in seen else AS_SENT
        if layer is target and inner is not None:
            output, *inner_activations = inner[0](*args, **kwargs)
            activations.extend(inner_activations)
            mirrored.extend(_compose(view, flag) for flag in inner[1])
        elif _is_sigmoid_dense(layer):  # the net's P(FAKE) output
            output = _sigmoid_dense_layer(layer)(*args, **kwargs)
        elif isinstance(layer, Temperature):
            # Calibration is monotonic: its derivative is a positive factor per image, which the per-image
            # [0, 1] scaling of the map removes. So the gradient passes through unchanged (the clip inside the
            # layer would zero it for a saturated score) while the value stays the calibrated one.
            (score,) = args
            output = score + keras.ops.stop_gradient(layer(score) - score)
        else:
            output = layer(*args, **kwargs)
            if layer is target:
                activations.append(output)
                mirrored.append(view)
        if isinstance(layer, HorizontalFlip):
            view = _compose(view, MIRRORED)
        elif isinstance(layer, WithMirror):
            view = STACKED
        for tensor in _flatten_tensors(output):
            views[id(tensor)] = view
        return output

    # clone_function=identity: the rebuilt graph calls the original layers, so it has the served weights.
    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    exposed = keras.Model(rebuilt.inputs, [rebuilt.outputs[0], *activations], name=f"{model.name}_exposed")
    return exposed, mirrored


def _compose(outer: str, inner: str) -> str:
    """The view of a nested call: a mirror of a mirror is the image as sent."""
    if STACKED in (outer, inner):
        return STACKED
    return MIRRORED if (outer == MIRRORED) != (inner == MIRRORED) else AS_SENT


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
            if flipped == STACKED:  # rows N..2N-1 saw the mirror: back into the client's coordinates
                as_sent, mirror = tf.split(branch, 2, axis=0)
                branch = as_sent + tf.reverse(mirror, axis=[2])
            elif flipped == MIRRORED:
                branch = tf.reverse(branch, axis=[2])
            total += tf.image.resize(branch, size, method="bilinear")[..., 0]
        total = tf.nn.relu(total)
        peak = tf.reduce_max(total, axis=(1, 2), keepdims=True)
        # A map without positive evidence stays zero instead of becoming noise scaled up to 1.
        return tf.math.divide_no_nan(total, peak)

    explainer = Explainer(grad_cam, image_size, sum(2 if view == STACKED else 1 for view in mirrored))
    explainer(np.zeros((1, image_size, image_size, 3), dtype=np.uint8), np.ones((1,), dtype=bool))  # trace
    log.info("explainer: Grad-CAM over %d call(s) of the last convolutional stage", len(mirrored))
    return explainer
