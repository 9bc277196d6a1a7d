"""Stage 4, train: fit the configured architecture, early stopping, keep the best checkpoint, log to MLflow.

Output ``models/``: ``model.keras`` (the best epoch by validation ROC-AUC) and ``run.json`` (the MLflow run
that evaluate and register continue); ``reports/training.json`` summarises the run, with the epochs the time
budget chose. Degradations, CutMix and mixup run in the input pipeline (stages/augment.py: tf.data on
TensorFlow, worker processes on JAX or torch), not in the model.
Uses every visible GPU (MirroredStrategy across several on the TensorFlow backend; mixed precision on GPU)
and the CPU otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import tracking
from core.atomic import atomic_path, read_json, write_json
from core.cli import run_stage, stage_parser
from core.config import NO_DEGRADATIONS, Params, TrainingParams
from core.modelstore import load_keras
from core.pipeline import (
    FEATURES_DIR,
    FEATURES_FILE,
    INDEX,
    MODEL_DIR,
    MODEL_FILE,
    PROCESSED_DIR,
    RAW_DIR,
    RUN_FILE,
    SPECTRUM_FIGURE,
    TRAINING_REPORT,
)
from stages.augment import DegradationTail, batch_stream, training_dataset, uses_tf_data, validation_dataset
from stages.calibration import calibrate_saved_model
from stages.shards import load_split

if TYPE_CHECKING:  # keras is imported lazily, in the functions that train
    import keras

    from stages.schedule import WarmupCosine

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """GPUs visible to the active Keras backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(1 for device in jax.devices() if device.platform == "gpu")
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX bfloat16 tiles (Intel Sapphire Rapids and later), per Linux's CPU flags."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no flags to read
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def precision_policy(setting: str, gpus: int) -> str:
    """The Keras dtype policy ``training.mixed_precision`` asks for on this machine.

    Mixed precision keeps the weights in float32 and computes in float16 on a GPU, in bfloat16 on a CPU with
    AMX bfloat16 tiles when the backend is TensorFlow, whose oneDNN kernels run bfloat16 on them: the default
    network trained 1.8x as fast there at the same accuracy (docs/benchmarks.md: A fast machine: mixed
    bfloat16 on AMX). Other CPUs train in float32 (``on`` too, with a warning): float16 has no fast CPU
    kernels, and bfloat16 without AMX is emulated or fails in oneDNN.
    """
    import keras

    if setting == "off":
        return "float32"
    if gpus:
        return "mixed_float16"
    if keras.backend.backend() == "tensorflow" and cpu_has_amx_bf16():
        return "mixed_bfloat16"
    if setting == "on":
        log.warning(
            "training.mixed_precision: on, but this CPU has no AMX bfloat16 tiles: training in float32"
        )
    return "float32"


def _strategy(gpus: int) -> contextlib.AbstractContextManager:
    import keras

    if gpus > 1 and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy.scope()
    return contextlib.nullcontext()


def _compile(model, params: TrainingParams, steps_per_epoch: int, epochs: int) -> WarmupCosine:
    """Compile with the recipe: AdamW (optional EMA), warm-up + cosine over ``epochs``, label smoothing.

    Returns:
        The schedule, whose end the time budget moves when it re-plans the epochs.
    """
    import keras

    from stages.schedule import WarmupCosine

    total = max(1, epochs * steps_per_epoch)
    # A short warm-up keeps BatchNorm statistics sane at the peak learning rate; it stays where the first plan
    # put it when the budget moves the end of the decay.
    schedule = WarmupCosine(params.learning_rate, warmup_steps=total // 20, total_steps=total, alpha=0.01)
    ema = params.ema_momentum is not None
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=params.weight_decay,
            use_ema=ema,
            ema_momentum=params.ema_momentum if ema else 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )
    return schedule


def _flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flatten(f"{prefix}{key}.", sub).items()}
    return {prefix.rstrip("."): value}


def _mlflow_epoch_logger() -> keras.callbacks.Callback:
    import keras
    import mlflow

    class MlflowEpochLogger(keras.callbacks.Callback):
        """Log every epoch's training and validation metrics to the active MLflow run."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            mlflow.log_metrics({f"epoch_{k}": float(v) for k, v in (logs or {}).items()}, step=epoch + 1)

    return MlflowEpochLogger()


def format_duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``12m05s`` or ``9s``, for progress lines."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def epoch_progress_logger() -> keras.callbacks.Callback:
    """A callback that logs one line per epoch: metrics, time elapsed and an estimate of the time left.

    Keras' progress bar needs a terminal; under DVC, make or a pod log stdout is a pipe, and a long train
    would otherwise be silent for minutes. The estimate assumes every remaining epoch takes the mean so far.
    """
    import keras

    class EpochProgressLogger(keras.callbacks.Callback):
        """Log ``epoch 3/18: loss 0.31 ... | 6m30s elapsed, about 32m30s left`` at the end of each epoch."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            done, total = epoch + 1, self.params["epochs"]
            elapsed = time.monotonic() - self.started
            left = elapsed / done * (total - done)
            metrics = " ".join(
                f"{name} {float(value):.4f}"
                for name, value in (logs or {}).items()
                if name != "learning_rate"
            )
            log.info(
                "epoch %d/%d: %s | %s elapsed, about %s left",
                done,
                total,
                metrics,
                format_duration(elapsed),
                format_duration(left),
            )

    return EpochProgressLogger()


# Steps the throughput probe runs before it starts timing (tracing, the first allocations), then times: at
# least PROBE_TIMED_STEPS and PROBE_MIN_SECONDS. Batches prefetched during tracing make the first steps of a
# fast model look faster than the pipeline can feed it: 20 steps alone overestimated a small net by 20 %.
PROBE_WARMUP_STEPS = 3
PROBE_TIMED_STEPS = 20
PROBE_MIN_SECONDS = 10.0
PROBE_MAX_STEPS = 1000


@dataclass(frozen=True)
class BudgetPlan:
    """How ``training.time_budget_minutes`` was spent: what the probe measured and the epochs it chose."""

    budget_seconds: float
    probe_seconds: float  # the probe's wall time, tracing included, charged to the budget
    train_images_per_second: float  # steady-state fit throughput (augmentation included)
    validation_images_per_second: float
    setup_seconds: float  # tracing and first steps, paid again by the real fit
    epoch_seconds: float  # estimated: one pass over train + validation
    max_epochs: int  # training.epochs
    epochs: int  # the choice

    def to_dict(self) -> dict[str, float | int]:
        """The plan as plain JSON values, rounded for the report."""
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}


def plan_epochs(
    *,
    budget_seconds: float,
    spent_seconds: float,
    setup_seconds: float,
    epoch_seconds: float,
    max_epochs: int,
) -> int:
    """Epochs that fit the budget: what is left after the probe and the fit's own setup, whole epochs.

    Args:
        budget_seconds: The whole budget.
        spent_seconds: Already spent (the probe).
        setup_seconds: The fit's fixed cost before its first steady step (tracing).
        epoch_seconds: Estimated seconds per epoch, validation included.
        max_epochs: Never more than this (``training.epochs``).

    Returns:
        At least 1 (a budget too small for one epoch still trains one, with a warning from the caller).
    """
    left = budget_seconds - spent_seconds - setup_seconds
    return max(1, min(max_epochs, int(left // epoch_seconds)))


class _StepTimer:
    """Times Keras steps (train or test batches) after a warm-up: the steady rate in batches per second."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        steady = self.times[self.warmup :]
        return (steady[-1] - steady[0]) / max(1, len(steady) - 1)


def _probe(model, training: TrainingParams, train_ds, val_ds, steps_per_epoch: int) -> dict[str, float]:
    """Fit a few steps and validate a few batches to time them; the model's state is put back after.

    ``train_ds`` and ``val_ds`` are endless (repeated): the probe takes the steps its minimum time needs.

    Returns:
        ``train_step``, ``val_step`` (seconds per batch, steady state), ``setup`` (first steps' excess)
        and ``wall`` (the probe's whole time).
    """
    import keras

    started = time.perf_counter()
    # All variables, not just the weights: the random layers' seed states too, which the probe's steps (as
    # many as fit its minimum time) advance; without them the fit would draw differently on a faster machine.
    initial = [variable.numpy() for variable in model.variables]
    _compile(model, training, steps_per_epoch, training.epochs)
    train_timer, val_timer = _StepTimer(PROBE_WARMUP_STEPS), _StepTimer(PROBE_WARMUP_STEPS)
    fit_started = time.perf_counter()

    def on_train_batch_end(batch: int, logs: dict | None) -> None:
        train_timer.tick()
        steady = train_timer.times[PROBE_WARMUP_STEPS:]
        if len(steady) > PROBE_TIMED_STEPS and steady[-1] - steady[0] >= PROBE_MIN_SECONDS:
            model.stop_training = True

    timers = keras.callbacks.LambdaCallback(
        on_train_batch_end=on_train_batch_end, on_test_batch_end=lambda batch, logs: val_timer.tick()
    )
    model.fit(
        train_ds,
        steps_per_epoch=PROBE_MAX_STEPS,
        validation_data=val_ds,
        validation_steps=PROBE_WARMUP_STEPS + PROBE_TIMED_STEPS,
        epochs=1,
        shuffle=False,  # the dataset shuffles itself
        callbacks=[timers],
        verbose=0,
    )
    for variable, value in zip(model.variables, initial, strict=True):
        variable.assign(value)  # the probe only measures: training starts from the same state
    train_step = train_timer.seconds_per_step()
    return {
        "train_step": train_step,
        "val_step": val_timer.seconds_per_step(),
        "setup": max(
            0.0, train_timer.times[PROBE_WARMUP_STEPS] - fit_started - (PROBE_WARMUP_STEPS + 1) * train_step
        ),
        "wall": time.perf_counter() - started,
    }


def _budget_plan(
    model, training: TrainingParams, train_ds, val_ds, train_images: int, val_images: int
) -> BudgetPlan:
    """Time the first steps (:func:`_probe`) and choose the epochs that fit ``time_budget_minutes``."""
    batch = training.batch_size
    steps, val_steps = -(-train_images // batch), -(-val_images // batch)
    probe = _probe(model, training, train_ds, val_ds, steps)
    epoch_seconds = steps * probe["train_step"] + val_steps * probe["val_step"]
    budget = 60 * training.time_budget_minutes
    epochs = plan_epochs(
        budget_seconds=budget,
        spent_seconds=probe["wall"],
        setup_seconds=probe["setup"],
        epoch_seconds=epoch_seconds,
        max_epochs=training.epochs,
    )
    plan = BudgetPlan(
        budget_seconds=budget,
        probe_seconds=probe["wall"],
        train_images_per_second=batch / probe["train_step"],
        validation_images_per_second=batch / probe["val_step"],
        setup_seconds=probe["setup"],
        epoch_seconds=epoch_seconds,
        max_epochs=training.epochs,
        epochs=epochs,
    )
    log.info(
        "time budget %s: measured %.0f img/s training, %.0f img/s validation, about %s an epoch: "
        "%d epoch(s) (at most %d), schedule stretched over them",
        format_duration(budget),
        plan.train_images_per_second,
        plan.validation_images_per_second,
        format_duration(epoch_seconds),
        epochs,
        training.epochs,
    )
    if probe["wall"] + probe["setup"] + epoch_seconds > budget:
        log.warning("time budget %s is too short for one epoch; training one anyway", format_duration(budget))
    return plan


def replan_epochs(
    *, done: int, elapsed: float, budget_seconds: float, epoch_seconds: list[float], max_epochs: int
) -> int:
    """Epochs in all, ``done`` included, that fit the budget after ``done`` measured epochs.

    The next epochs are taken to last as long as the slower of the last epoch and the mean of the last three:
    a machine that got busier shortens the plan at once, a single slow epoch does not lengthen it for long.

    Args:
        done: Epochs finished.
        elapsed: Seconds since the budget started (the probe included).
        budget_seconds: The whole budget.
        epoch_seconds: Measured length of each finished epoch, validation and callbacks included; the first
            without the fit's setup (tracing), which later epochs do not pay again.
        max_epochs: Never more than this (``training.epochs``).

    Returns:
        ``done`` when no further epoch fits (the fit stops), else the new total, at most ``max_epochs``.
    """
    recent = epoch_seconds[-3:]
    next_epoch = max(epoch_seconds[-1], sum(recent) / len(recent))
    return min(max_epochs, done + max(0, int((budget_seconds - elapsed) // next_epoch)))


def _budget_replanner(
    plan: BudgetPlan, started: float, apply_plan: Callable[[int], str]
) -> keras.callbacks.Callback:
    """After each epoch, re-plan the epochs from the epochs' measured length and move the schedule's end.

    The probe's estimate comes from a few steps, on a machine whose load can change; the epochs themselves
    are the better measure. A longer plan stretches the cosine, a shorter one steepens it, so the learning
    rate still reaches its floor when the budget ends; when no further epoch fits, the fit stops.
    ``apply_plan(epochs)`` moves the schedule's end and the degradation tail's start to a new plan and says
    what it moved, for the log.
    """
    import keras

    class BudgetReplanner(keras.callbacks.Callback):
        """``changes``: each re-plan as ``{after_epoch, epochs, epoch_seconds}``; ``stopped_by_budget``."""

        def __init__(self) -> None:
            super().__init__()
            self.planned = plan.epochs
            self.changes: list[dict[str, float | int]] = []
            self.stopped_by_budget = False
            self.epoch_seconds: list[float] = []

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.last = time.perf_counter()
            self.params["epochs"] = self.planned  # progress lines count towards the plan, not the cap

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now, done = time.perf_counter(), epoch + 1
            length = now - self.last
            if not self.epoch_seconds:  # the first epoch also traced the steps: what the probe measured of it
                length = max(length - plan.setup_seconds, length / 2)
            self.epoch_seconds.append(length)
            self.last = now
            planned = replan_epochs(
                done=done,
                elapsed=now - started,
                budget_seconds=plan.budget_seconds,
                epoch_seconds=self.epoch_seconds,
                max_epochs=plan.max_epochs,
            )
            if planned == done:
                if done < self.planned:
                    log.warning(
                        "stopping after epoch %d of %d: the next would overrun the time budget",
                        done,
                        self.planned,
                    )
                    self.stopped_by_budget = True
                self.model.stop_training = True
            if planned != self.planned and planned > done:
                moved = apply_plan(planned)
                log.info(
                    "time budget: an epoch takes %s, %s left: %d epochs instead of %d; moved %s",
                    format_duration(self.epoch_seconds[-1]),
                    format_duration(plan.budget_seconds - (now - started)),
                    planned,
                    self.planned,
                    moved,
                )
                self.changes.append(
                    {
                        "after_epoch": done,
                        "epochs": planned,
                        "epoch_seconds": round(self.epoch_seconds[-1], 1),
                    }
                )
                self.planned = self.params["epochs"] = planned

    return BudgetReplanner()


@dataclass
class Trained:
    """What :func:`train_model` returns."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs: int  # planned (training.epochs, or the budget's last plan)
    plan: BudgetPlan | None  # the probe's first plan
    replans: list[dict[str, float | int]]  # the budget's changes to it, epoch by epoch
    tail_from_epoch: int | None  # the first epoch of augmentation.degradation_tail in the last plan
    stopped_by_budget: bool
    fit_seconds: float  # the fit alone, without the probe


def train_model(
    params: Params,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    mean: list[float],
    variance: list[float],
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
) -> Trained:
    """Build, compile and fit the configured model with the recipe of params.yaml: the one training path.

    The augmentation of ``params.augmentation`` runs in the input pipeline (degradations, CutMix, mixup) and
    in the model's training-only layers (flip, translation, contrast). With ``training.time_budget_minutes`` a
    probe times the first steps and plans the epochs and the schedule; each epoch then re-plans both.
    Early stopping on validation ROC-AUC (``training.early_stopping_patience``) counts only the epochs in
    the second half of the decay (:class:`stages.schedule.EarlyStoppingOnceDecayed`).
    With ``training.ema_momentum`` validation and the ``callbacks`` (a checkpoint) see the averaged weights.
    It trains in the dtype policy :func:`precision_policy` picks and puts Keras' global policy back to float32
    however it ends, so what the process builds next is float32.

    Args:
        params: The validated parameters.
        train: uint8 images and 0/1 labels to fit.
        val: uint8 images and 0/1 labels to validate on after each epoch.
        mean: Per-channel mean of the training images in [0, 1] scale (the model's Normalization).
        variance: Per-channel variance, likewise.
        callbacks: Called after the recipe's EMA weight swapping and before its early stopping, e.g. a
            checkpoint.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        The model (last epoch's weights; EMA-averaged when enabled; layers in the training precision:
        :func:`core.layers.in_float32` makes the float32 copy the pipeline saves), its history and the plan.
    """
    import keras

    from stages.architectures import build_model
    from stages.schedule import EarlyStoppingOnceDecayed

    training, augmentation = params.training, params.augmentation
    gpus = gpu_count()
    policy = precision_policy(training.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy(policy)
    try:  # the finally below puts the global policy back however this ends
        log.info("train: dtype policy %s (training.mixed_precision: %s)", policy, training.mixed_precision)
        # Before the datasets: their seeds combine with the global one, which an earlier run may have left
        # elsewhere, so two runs in one process (the benches, the tests) would differ from each other.
        keras.utils.set_random_seed(training.seed)

        tf_data = uses_tf_data()
        recipe = {
            "degradations": augmentation.degradations,
            "mixup_alpha": augmentation.mixup_alpha,
            "cutmix": augmentation.cutmix,
        }
        tail = DegradationTail.from_params(augmentation.degradation_tail)

        def train_batches(tail: DegradationTail | None = None):
            """Endless: each pass over the training images reshuffled and redrawn; an epoch is one pass."""
            batching = {"batch_size": training.batch_size, "seed": training.seed, "tail": tail, **recipe}
            if tf_data:
                return training_dataset(*train, endless=True, **batching)
            return batch_stream(*train, **batching)

        def endless_validation():
            if tf_data:
                return validation_dataset(*val, batch_size=training.batch_size).repeat()
            unaugmented = {"degradations": NO_DEGRADATIONS, "mixup_alpha": 0.0, "shuffle": False}
            return batch_stream(*val, batch_size=training.batch_size, seed=0, **unaugmented)

        if tf_data:
            validation = {"validation_data": validation_dataset(*val, batch_size=training.batch_size)}
        else:
            val_x, val_y = np.asarray(val[0], dtype=np.uint8), np.asarray(val[1], dtype=np.float32)
            validation = {"validation_data": (val_x, val_y), "validation_batch_size": training.batch_size}
        steps = -(-len(train[1]) // training.batch_size)
        with _strategy(gpus):
            model = build_model(
                params.model.architecture,
                image_size=params.data.image_size,
                dropout=params.model.dropout,
                pretrained_weights=params.model.pretrained_weights,
                augmentation=augmentation,
                mean=mean,
                variance=variance,
                seed=training.seed,
                spectrum_branch=params.model.spectrum_branch,
            )
            started = time.perf_counter()
            plan = None
            epochs = training.epochs
            # One epoch at most leaves nothing to choose: no probe (the test pipeline's quick runs).
            if training.time_budget_minutes is not None and training.epochs > 1:
                # The probe gets its own dataset: its passes (as many as fit its minimum time) advance the
                # shuffle and the degradation draws, which would otherwise make the fit's batches depend on
                # the machine.
                plan = _budget_plan(
                    model, training, train_batches(), endless_validation(), len(train[1]), len(val[1])
                )
                epochs = plan.epochs
            schedule = _compile(model, training, steps, epochs)
        own: list[keras.callbacks.Callback] = []
        if training.ema_momentum is not None:
            # Before the caller's callbacks: validation, checkpoint and early stopping see the averaged
            # weights.
            own.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        stopper = EarlyStoppingOnceDecayed(
            schedule, monitor="val_auc", mode="max", patience=training.early_stopping_patience
        )

        def apply_plan(epochs: int) -> str:
            """The schedule decays to its floor at the end of ``epochs``; the degradation tail ends with it.

            Early stopping waits for the tail: its validation scores are of another training mix. Returns what
            moved, for the budget's log line.
            """
            schedule.set_total_steps(epochs * steps)
            tail.plan(epochs, steps)
            stopper.first_epoch = tail.first_epoch - 1 if tail.first_epoch else 0
            if tail.first_epoch:
                return f"the schedule's end and the degradation tail (now epochs {tail.first_epoch}-{epochs})"
            return "the schedule's end"

        apply_plan(epochs)
        if tail.first_epoch:
            log.info(
                "train: epochs %d-%d with the degradations x%g (augmentation.degradation_tail)",
                tail.first_epoch,
                epochs,
                tail.scale,
            )
        replanner = _budget_replanner(plan, started, apply_plan) if plan else None
        fit_started = time.perf_counter()
        history = model.fit(
            # One iterator for the whole fit: without steps_per_epoch Keras makes a new one every epoch, and
            # the first step after that sat idle for 2-40 s on 2 CPU cores (up to 40 % of a 10k-image epoch).
            # The endless batches still reshuffle and redraw each pass; an epoch is still one pass over train.
            train_batches(tail),
            steps_per_epoch=steps,
            epochs=plan.max_epochs if plan else epochs,  # the re-planner stops the fit where the budget ends
            shuffle=False,  # the batches are shuffled already, reproducibly
            **validation,
            callbacks=own + list(callbacks or []) + [stopper] + ([replanner] if replanner else []),
            verbose=verbose,
        )
    finally:  # whatever the same process builds next (a bench's next candidate, a test) is float32
        keras.mixed_precision.set_global_policy("float32")
    return Trained(
        model=model,
        history=history.history,
        epochs=replanner.planned if replanner else epochs,
        plan=plan,
        replans=replanner.changes if replanner else [],
        tail_from_epoch=tail.first_epoch,
        stopped_by_budget=bool(replanner and replanner.stopped_by_budget),
        fit_seconds=time.perf_counter() - fit_started,
    )


def run(params: Params) -> dict:
    """Run train in the current workspace.

    Returns:
        The training summary written to reports/training.json.
    """
    import keras
    import mlflow

    from core.layers import in_float32, with_flip_averaging

    train_x, train_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "train"))
    val_x, val_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "val"))
    features = read_json(FEATURES_DIR / FEATURES_FILE)
    # The index (a declared input), not the data report, which names this machine's path of the source.
    data_index = read_json(RAW_DIR / INDEX)
    training = params.training
    gpus = gpu_count()
    device = f"{gpus} GPU(s)" if gpus else "CPU"
    budget = (
        f"{training.time_budget_minutes:g} min budget" if training.time_budget_minutes else "no time budget"
    )
    log.info(
        "train: %s on %s (%s backend), %d train / %d val images, up to %d epochs (%s)",
        params.model.architecture,
        device,
        keras.backend.backend(),
        len(train_x),
        len(val_x),
        training.epochs,
        budget,
    )
    if data_index["synthetic"]:
        log.warning("training on %s", data_index["notice"])

    experiment = tracking.setup(params.mlflow)
    with atomic_path(MODEL_DIR) as tmp, tracking.stage_run("train", experiment.experiment_id) as mlrun:
        tmp.mkdir()
        mlflow.set_tags(
            {
                "stage": "train",
                "architecture": params.model.architecture,
                "device": device,
                "data_source": data_index["source"],
                "synthetic_data": str(data_index["synthetic"]).lower(),
                "data_hash": data_index["data_hash"],
                "params_hash": params.digest(),
                "git_commit": tracking.git_commit(),
                "keras_backend": keras.backend.backend(),
            }
        )
        if data_index["synthetic"]:
            mlflow.set_tag("WARNING", data_index["notice"])
        mlflow.log_params(_flatten("", params.model_dump()))
        mlflow.log_dict(data_index, f"data/{INDEX}")
        mlflow.log_dict(features, "data/features.json")
        if SPECTRUM_FIGURE.is_file():
            mlflow.log_artifact(str(SPECTRUM_FIGURE), "figures")

        checkpoint = tmp / MODEL_FILE
        callbacks = [
            keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_auc", mode="max", save_best_only=True),
            _mlflow_epoch_logger(),
            epoch_progress_logger(),
        ]
        started = time.perf_counter()
        trained = train_model(
            params,
            (train_x, train_y),
            (val_x, val_y),
            mean=features["mean"],
            variance=features["variance"],
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 0,  # not a terminal: epoch_progress_logger's lines
        )
        seconds = time.perf_counter() - started
        model, history = trained.model, trained.history
        mlflow.log_param("parameter_count", model.count_params())
        best_model = in_float32(load_keras(checkpoint))
        (with_flip_averaging(best_model) if params.model.test_time_flip else best_model).save(checkpoint)
        # Temperature scaling on validation, built into the saved model (stages/calibration.py).
        calibration = calibrate_saved_model(checkpoint, val_x, val_y, params.calibration)
        # A text: the train_* metrics below take the numbers ("none" when calibration.enabled is false).
        mlflow.log_param("calibration_method", calibration["calibration_method"])
        val_auc = history["val_auc"]
        best = int(np.argmax(val_auc))
        summary = {
            "architecture": params.model.architecture,
            "parameters": int(model.count_params()),
            "device": device,
            "epochs_planned": trained.epochs,
            "epochs_run": len(val_auc),
            "best_epoch": best + 1,
            "best_val_auc": float(val_auc[best]),
            "best_val_accuracy": float(history["val_accuracy"][best]),
            "train_seconds": round(seconds, 1),
            "train_images_per_second": round(len(val_auc) * len(train_x) / trained.fit_seconds, 1),
            "time_budget": trained.plan.to_dict() if trained.plan else None,
            "replanned": trained.replans,
            "degradation_tail_from_epoch": trained.tail_from_epoch,
            "stopped_by_budget": trained.stopped_by_budget,
            **calibration,
        }
        write_json(tmp / RUN_FILE, {"run_id": mlrun.info.run_id, "experiment_id": experiment.experiment_id})
        mlflow.log_metrics({f"train_{k}": v for k, v in summary.items() if isinstance(v, int | float)})
        if trained.plan:
            mlflow.log_dict(
                {**trained.plan.to_dict(), "replanned": trained.replans}, "training/time_budget.json"
            )
        mlflow.log_dict(history, "training/history.json")
    write_json(TRAINING_REPORT, summary)
    log.info("train done: %s", json.dumps(summary))
    return summary


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.train``."""
    return run_stage("train", _main, stage_parser("train", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
