"""The learning-rate schedule of the recipe: linear warm-up, then cosine decay to a floor at the planned end.

Its end can move while the fit runs: the time budget (stages/train.py) re-plans the number of epochs after
each one, from the epochs' own measured length, and the decay is stretched or shortened to end with them.
Keras' ``CosineDecay`` bakes its length into the traced training step; here it is a variable the step reads.
Early stopping reads the same schedule, counting only the epochs in the second half of its decay.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="deepguard")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from ``peak / 10`` to ``peak`` in ``warmup_steps``, then cosine to ``alpha * peak`` at the end.

    Args:
        peak: The learning rate at the end of the warm-up.
        warmup_steps: Steps of the linear warm-up (fixed for the whole fit).
        total_steps: The step at which the decay reaches its floor; :meth:`set_total_steps` moves it.
        alpha: The floor as a fraction of ``peak``.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, alpha: float = 0.01) -> None:
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.alpha = float(alpha)
        self.total_steps = keras.Variable(
            float(max(total_steps, warmup_steps + 1)), dtype="float32", trainable=False, name="total_steps"
        )

    def set_total_steps(self, total_steps: int) -> None:
        """Move the end of the decay; the next training step already uses it."""
        self.total_steps.assign(float(max(total_steps, self.warmup_steps + 1)))

    def progress(self, step):
        """How far the decay has come at ``step``: 0 until the warm-up ends, 1 at the planned end."""
        step = ops.cast(step, "float32")
        return ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start = self.peak / 10
        warming = start + (self.peak - start) * step / max(1, self.warmup_steps)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * self.progress(step)))
        decayed = self.peak * (self.alpha + (1.0 - self.alpha) * cosine)
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self) -> dict[str, float | int]:
        """The schedule as it stands (the end where it was last moved)."""
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": int(ops.convert_to_numpy(self.total_steps)),
            "alpha": self.alpha,
        }


class EarlyStoppingOnceDecayed(keras.callbacks.EarlyStopping):
    """Keras' early stopping, counting only the epochs that end in the second half of the schedule's decay.

    Near the peak learning rate the validation metric is noisy and still far from where the decay takes
    it: on a fast machine, where the time budget planned the 60-epoch cap, plain early stopping (patience 5)
    ended the default run at epoch 22 of 60 with the learning rate near its peak and lost accuracy
    (docs/benchmarks.md). Counting starts with the first epoch that ends past the decay's midpoint, wherever
    the budget has moved the decay's end by then, and not before ``first_epoch`` (0-based), which the fit may
    move: train sets it to the start of the degradation tail, whose validation scores are of another mix.

    Args:
        schedule: The fit's learning-rate schedule.
        **kwargs: Keras' ``EarlyStopping`` arguments (monitor, mode, patience, ...).
    """

    def __init__(self, schedule: WarmupCosine, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schedule = schedule
        self.first_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Count the epoch towards ``patience`` only once the decay is half done, and from ``first_epoch``."""
        if epoch < self.first_epoch:
            return
        if float(ops.convert_to_numpy(self.schedule.progress(self.model.optimizer.iterations))) < 0.5:
            return
        super().on_epoch_end(epoch, logs)
