"""The served network on LiteRT's interpreter, for the calls of a few images that single-image traffic makes.

A Keras call on a small batch is mostly TensorFlow's per-call work, not the network's: one 32x32 image and
its mirror through the default ``SimpleCNN`` take 2.3-2.8 ms through ``predict_on_batch`` between other
requests and 1.0-1.3 ms through LiteRT on the same core (1.2 and 0.5 ms back to back; docs/benchmarks.md,
"Small calls on LiteRT"). The gap closes at four images and turns from about eight (64 images: 28 ms in Keras
against 33), so the predictor hands LiteRT calls of at most :data:`MAX_BATCH` images and Keras the rest.

The network is converted when it is loaded (Keras' LiteRT export: about a second for the default) and used
only if it scores a probe batch as Keras does, to :data:`TOLERANCE`. A network the converter cannot take (the
spectrum branch's complex FFT) or that disagrees is served by Keras alone, and the load's log line says why.
Keras stays the model of record: evaluate, the explainer and large batches use it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.modelstore import predict_fake_probability

MAX_BATCH = 4  # the largest call LiteRT scores; Keras is faster from about eight images
TOLERANCE = 1e-5  # the largest difference in P(FAKE) from Keras accepted on the probe batch
_PROBE_IMAGES = 8
_PROBE_SEED = 0


class LiteRTScorer:
    """One interpreter for one loaded network; not thread-safe: the predictor calls it from one thread."""

    def __init__(self, flatbuffer: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # One thread: a call of a few 32x32 images has too little work to spread over cores.
        self._interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = -1  # the batch size the interpreter's tensors are allocated for

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """P(FAKE) as float32 ``(N,)`` for uint8 images ``(N, size, size, 3)``."""
        if len(images) != self._batch:  # re-planning the tensors costs ~0.1 ms; the same size needs none
            self._interpreter.resize_tensor_input(self._input, images.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(images, dtype=np.uint8))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).reshape(-1).astype(np.float32)


def convert(keras_model: Any, size: int) -> tuple[LiteRTScorer | None, str]:
    """The network of ``keras_model`` (uint8 ``size`` x ``size`` images in) on LiteRT, checked against Keras.

    Returns:
        The scorer, or None when the network cannot be converted or its scores on the probe batch differ from
        Keras' by more than :data:`TOLERANCE` (or are not numbers); and a phrase for the load's log line
        saying which.
    """
    import tensorflow as tf

    shape = (_PROBE_IMAGES, size, size, 3)
    probe = np.random.default_rng(_PROBE_SEED).integers(0, 256, shape, dtype=np.uint8)
    try:
        with tempfile.TemporaryDirectory(prefix="deepguard-litert-") as tmp:
            path = Path(tmp) / "model.tflite"
            # Keras' own LiteRT export (a SavedModel, then TensorFlow's converter), LiteRT's built-in kernels
            # only: its interpreter has no TensorFlow kernels to fall back on.
            builtins = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
            keras_model.export(str(path), format="litert", verbose=False, target_spec=builtins)
            scorer = LiteRTScorer(path.read_bytes())
        expected = predict_fake_probability(keras_model, probe)
        difference = max(  # every batch size LiteRT will see, so each re-planned set of tensors is checked
            float(np.max(np.abs(scorer(probe[i : i + batch]) - expected[i : i + batch])))
            for batch in range(1, MAX_BATCH + 1)
            for i in range(0, _PROBE_IMAGES - batch + 1, batch)
        )
    except Exception as exc:  # the exporter and the converter raise several types (ConverterError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"Keras alone (LiteRT cannot take this network: {reason})"
    if not difference <= TOLERANCE:  # NaN too: a variable left out of the conversion reads as NaN
        return None, f"Keras alone (LiteRT's scores differ from Keras' by up to {difference:.1e})"
    return scorer, f"LiteRT for up to {MAX_BATCH} images (within {difference:.0e} of Keras)"
