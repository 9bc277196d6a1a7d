"""Stage 4, train: fit the configured architecture, early stopping, keep the best checkpoint, log to MLflow.

Output ``models/``: ``model.keras`` (the best epoch by validation ROC-AUC) and ``run.json`` (the MLflow run
that evaluate and register continue); ``reports/training.json`` summarises the run. Uses every visible GPU
(MirroredStrategy across several on the TensorFlow backend; mixed precision on GPU) and the CPU otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from core import tracking
from core.atomic import atomic_path, read_json, write_json
from core.cli import run_stage, stage_parser
from core.config import Params, TrainingParams
from core.modelstore import load_keras
from core.pipeline import (
    DATA_REPORT,
    FEATURES_DIR,
    FEATURES_FILE,
    FIGURES_DIR,
    MODEL_DIR,
    MODEL_FILE,
    PROCESSED_DIR,
    RUN_FILE,
    TRAINING_REPORT,
)
from stages.calibration import calibrate_saved_model
from stages.shards import load_split

if TYPE_CHECKING:  # keras is imported lazily, in the functions that train
    import keras

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


def _strategy(gpus: int) -> contextlib.AbstractContextManager:
    import keras

    if gpus > 1 and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy.scope()
    return contextlib.nullcontext()


def _compile(model, params: TrainingParams, steps_per_epoch: int) -> None:
    import keras

    total = max(1, params.epochs * steps_per_epoch)
    warmup = total // 20  # a short warm-up keeps BatchNorm statistics sane at the peak learning rate
    schedule = keras.optimizers.schedules.CosineDecay(
        params.learning_rate / 10,
        decay_steps=total - warmup,
        alpha=0.01,
        warmup_target=params.learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


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


def run(params: Params) -> dict:
    """Run train in the current workspace.

    Returns:
        The training summary written to reports/training.json.
    """
    import keras
    import mlflow

    from core.layers import with_flip_averaging
    from stages.architectures import build_model

    train_x, train_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "train"))
    val_x, val_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "val"))
    features = read_json(FEATURES_DIR / FEATURES_FILE)
    data_report = read_json(DATA_REPORT)
    training = params.training
    gpus = gpu_count()
    if training.mixed_precision == "on" or (training.mixed_precision == "auto" and gpus):
        keras.mixed_precision.set_global_policy("mixed_float16")
    device = f"{gpus} GPU(s)" if gpus else "CPU"
    log.info(
        "train: %s on %s (%s backend), %d train / %d val images, up to %d epochs",
        params.model.architecture,
        device,
        keras.backend.backend(),
        len(train_x),
        len(val_x),
        training.epochs,
    )
    if data_report["synthetic"]:
        log.warning("training on %s", data_report["notice"])

    experiment = tracking.setup(params.mlflow)
    with atomic_path(MODEL_DIR) as tmp, tracking.stage_run("train", experiment.experiment_id) as mlrun:
        tmp.mkdir()
        mlflow.set_tags(
            {
                "stage": "train",
                "architecture": params.model.architecture,
                "device": device,
                "data_source": data_report["source"]["kind"],
                "synthetic_data": str(data_report["synthetic"]).lower(),
                "data_hash": data_report["data_hash"],
                "params_hash": params.digest(),
                "git_commit": tracking.git_commit(),
                "keras_backend": keras.backend.backend(),
            }
        )
        if data_report["synthetic"]:
            mlflow.set_tag("WARNING", data_report["notice"])
        mlflow.log_params(_flatten("", params.model_dump()))
        mlflow.log_dict(data_report, "data/data_report.json")
        mlflow.log_dict(features, "data/features.json")
        if (FIGURES_DIR / "spectrum.png").is_file():
            mlflow.log_artifact(str(FIGURES_DIR / "spectrum.png"), "figures")

        steps = int(np.ceil(len(train_x) / training.batch_size))
        with _strategy(gpus):
            model = build_model(
                params.model.architecture,
                image_size=params.data.image_size,
                dropout=params.model.dropout,
                pretrained_weights=params.model.pretrained_weights,
                augmentation=params.augmentation,
                mean=features["mean"],
                variance=features["variance"],
                seed=training.seed,
            )
            _compile(model, training, steps)
        mlflow.log_param("parameter_count", model.count_params())
        checkpoint = tmp / MODEL_FILE
        callbacks = [
            keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_auc", mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=training.early_stopping_patience
            ),
            _mlflow_epoch_logger(),
            epoch_progress_logger(),
        ]
        started = time.perf_counter()
        history = model.fit(
            train_x,
            train_y.astype("float32"),
            batch_size=training.batch_size,
            epochs=training.epochs,
            validation_data=(val_x, val_y.astype("float32")),
            shuffle=True,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 0,  # not a terminal: epoch_progress_logger's lines
        )
        seconds = time.perf_counter() - started
        if params.model.test_time_flip:
            with_flip_averaging(load_keras(checkpoint)).save(checkpoint)
        # Temperature scaling on validation, built into the saved model (stages/calibration.py).
        calibration = calibrate_saved_model(checkpoint, val_x, val_y, params.calibration)
        val_auc = history.history["val_auc"]
        best = int(np.argmax(val_auc))
        summary = {
            "architecture": params.model.architecture,
            "parameters": int(model.count_params()),
            "device": device,
            "epochs_run": len(val_auc),
            "best_epoch": best + 1,
            "best_val_auc": float(val_auc[best]),
            "best_val_accuracy": float(history.history["val_accuracy"][best]),
            "train_seconds": round(seconds, 1),
            "train_images_per_second": round(len(val_auc) * len(train_x) / seconds, 1),
            **calibration,
        }
        write_json(tmp / RUN_FILE, {"run_id": mlrun.info.run_id, "experiment_id": experiment.experiment_id})
        mlflow.log_metrics({f"train_{k}": v for k, v in summary.items() if isinstance(v, int | float)})
        mlflow.log_dict(history.history, "training/history.json")
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
