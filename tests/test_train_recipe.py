"""stages.train's recipe on tiny data: time budget, EMA, label smoothing, augmentation placement."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from ci_skips import on_this_machine

from core.config import NO_DEGRADATIONS, Params, load_params
from stages import train
from stages.architectures import PretrainedWeightsError, build_model
from stages.schedule import WarmupCosine
from stages.train import plan_epochs, replan_epochs, train_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _params(*overrides: str) -> Params:
    base = ["data.image_size=16", "model.architecture=SimpleCNN", "training.batch_size=16"]
    return load_params(REPO / "params.yaml", [*base, *overrides])


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 170, 80)
    return np.clip(base + rng.normal(0, 30, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8), labels


# The last quarter of the planned epochs at half the degradations.
QUARTER_TAIL = ("augmentation.degradation_tail.fraction=0.25", "augmentation.degradation_tail.scale=0.5")


def _fit(params: Params, n: int = 64) -> train.Trained:
    return train_model(params, _data(n), _data(32, seed=1), mean=[0.5] * 3, variance=[0.05] * 3)


def test_plan_epochs_fits_whole_epochs_into_what_is_left_of_the_budget() -> None:
    kwargs = {"budget_seconds": 600.0, "spent_seconds": 20.0, "setup_seconds": 10.0, "max_epochs": 100}
    assert plan_epochs(epoch_seconds=57.0, **kwargs) == 10  # 570 s left
    assert plan_epochs(epoch_seconds=58.0, **kwargs) == 9  # 580 s would fit 10: the probe and the setup count
    assert plan_epochs(epoch_seconds=114.0, **kwargs) == 5  # half the throughput, half the epochs
    assert plan_epochs(epoch_seconds=1.0, **kwargs) == 100  # capped by training.epochs
    assert plan_epochs(epoch_seconds=5000.0, **kwargs) == 1  # never zero


def test_replan_epochs_counts_the_next_epochs_as_long_as_the_recent_ones() -> None:
    kwargs = {"budget_seconds": 600.0, "max_epochs": 100}
    # After the first epoch only it counts: 100 s used, 500 s left at 60 s an epoch.
    assert replan_epochs(done=1, elapsed=100.0, epoch_seconds=[60.0], **kwargs) == 9
    # Later the next takes the mean of the last three (50 s): 6 more fit.
    assert replan_epochs(done=4, elapsed=300.0, epoch_seconds=[90.0, 60.0, 40.0, 50.0], **kwargs) == 10
    # ... or the last epoch, when the machine got slower: 100 s an epoch, 3 more fit.
    assert replan_epochs(done=4, elapsed=300.0, epoch_seconds=[90.0, 40.0, 40.0, 100.0], **kwargs) == 7
    assert replan_epochs(done=4, elapsed=590.0, epoch_seconds=[90.0, 40.0, 40.0, 40.0], **kwargs) == 4  # stop
    assert replan_epochs(done=4, elapsed=100.0, epoch_seconds=[1.0] * 4, **kwargs) == 100  # capped


def test_the_schedule_reads_its_end_when_the_traced_step_runs() -> None:
    """The training step is traced once; moving the end must still change the learning rate it computes."""
    import tensorflow as tf

    schedule = WarmupCosine(0.01, warmup_steps=10, total_steps=110)
    step = tf.function(schedule)
    assert float(step(0)) == pytest.approx(0.001)  # warm-up starts at a tenth of the peak
    assert float(step(10)) == pytest.approx(0.01)
    assert float(step(60)) == pytest.approx(0.01 * (0.01 + 0.99 * 0.5))  # half-way down the cosine
    schedule.set_total_steps(60)
    assert float(step(60)) == pytest.approx(0.01 * 0.01), "the traced step kept the old end"
    assert schedule.get_config()["total_steps"] == 60
    assert WarmupCosine.from_config(schedule.get_config()).get_config() == schedule.get_config()


class _Clock:
    """Stands in for ``stages.train``'s ``time``: an epoch takes what the test says, not what the CPU does."""

    def __init__(self, epoch_seconds: list[float]) -> None:
        self.now = 1000.0
        self.epoch_seconds = list(epoch_seconds)

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter

    def callback(self) -> keras.callbacks.Callback:
        clock = self

        class Advance(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                clock.now += clock.epoch_seconds[min(epoch, len(clock.epoch_seconds) - 1)]

        return Advance()


def _budget_fit(
    monkeypatch: pytest.MonkeyPatch,
    probe_step: float,
    epoch_seconds: list[float],
    setup: float = 0.0,
    overrides: tuple[str, ...] = (),
) -> train.Trained:
    """Fit with a 2-minute budget and at most 12 epochs on a fake clock and a fake probe.

    64 images / 16 = 4 steps and 32 val images = 2 steps: the probe's epoch is 4 x ``probe_step`` + 0.2 s,
    and 119.5 s (less ``setup``, the fit's tracing) are left after it.
    """
    clock = _Clock(epoch_seconds)
    monkeypatch.setattr(train, "time", clock)
    monkeypatch.setattr(
        train,
        "_probe",
        lambda *args: {"train_step": probe_step, "val_step": 0.1, "setup": setup, "wall": 0.5},
    )
    params = _params("training.time_budget_minutes=2", "training.epochs=12", *overrides)
    return train_model(
        params,
        _data(64),
        _data(32, seed=1),
        mean=[0.5] * 3,
        variance=[0.05] * 3,
        callbacks=[clock.callback()],
    )


@pytest.mark.parametrize(("train_step", "expected"), [(5.0, 5), (2.5, 11)])
def test_budget_chooses_epochs_and_schedule_from_the_probed_throughput(
    monkeypatch: pytest.MonkeyPatch, train_step: float, expected: int
) -> None:
    """The probe reports a slow or a fast machine and is right: the fit runs the epochs it planned."""
    trained = _budget_fit(monkeypatch, train_step, [4 * train_step + 0.2])
    assert trained.plan is not None and trained.plan.epochs == expected
    assert trained.plan.train_images_per_second == pytest.approx(16 / train_step)
    assert trained.epochs == expected and not trained.replans and not trained.stopped_by_budget
    assert len(trained.history["val_auc"]) == expected
    schedule = trained.model.optimizer._learning_rate
    assert schedule.get_config()["total_steps"] == expected * 4, "the schedule spans the chosen epochs"
    assert schedule.warmup_steps == expected * 4 // 20


@pytest.mark.parametrize(
    ("epoch_seconds", "expected", "replans"),
    [
        # Slower than probed (10 s): after epoch 1, 105 s left fit 7 more.
        ([15.0], 8, [{"after_epoch": 1, "epochs": 8, "epoch_seconds": 15.0}]),
        # Faster than probed: 1 + 115 // 5 is more than training.epochs allows.
        ([5.0], 12, [{"after_epoch": 1, "epochs": 12, "epoch_seconds": 5.0}]),
    ],
)
def test_the_budget_replans_from_the_epochs_and_the_schedule_still_ends_at_its_floor(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    epoch_seconds: list[float],
    expected: int,
    replans: list[dict],
) -> None:
    """A probe that got the machine wrong costs no epochs and cuts no schedule short, nor the tail."""
    with caplog.at_level(logging.INFO, logger="stages.train"):
        trained = _budget_fit(monkeypatch, 2.45, epoch_seconds, overrides=QUARTER_TAIL)  # 11 epochs of 10 s
    assert trained.plan is not None and trained.plan.epochs == 11
    assert trained.replans == replans
    assert trained.epochs == len(trained.history["val_auc"]) == expected
    assert not trained.stopped_by_budget, "it ended where it planned to, not where the budget cut it"
    assert trained.model.optimizer.iterations == expected * 4
    assert float(trained.model.optimizer.learning_rate) == pytest.approx(0.003 * 0.01, rel=1e-3), (
        "the learning rate reached its floor at the last step"
    )
    assert trained.tail_from_epoch == {8: 7, 12: 10}[expected], "the last quarter of the new plan"
    moved = (
        f"moved the schedule's end and the degradation tail (now epochs {trained.tail_from_epoch}-{expected})"
    )
    assert moved in caplog.text


def test_the_first_epoch_counts_without_the_tracing_the_probe_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Epochs of 10 s after a first of 15 s, 5 of them tracing: the probe's plan stands, no swing."""
    trained = _budget_fit(monkeypatch, 2.45, [15.0, 10.0], setup=5.0)
    assert trained.plan is not None and trained.plan.epochs == 11  # (119.5 - 5) // 10
    assert trained.replans == [] and trained.epochs == len(trained.history["val_auc"]) == 11


def test_a_machine_slower_than_every_plan_stops_the_fit_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The epoch after a re-plan takes longer still: the fit stops before the one that would overrun."""
    with caplog.at_level(logging.INFO, logger="stages.train"):
        no_tail = "augmentation.degradation_tail.fraction=0"
        trained = _budget_fit(monkeypatch, 2.45, [20.0, 20.0, 20.0, 45.0], overrides=(no_tail,))
    # After epoch 1: 1 + 100 // 20 = 6; after 3 still 6; epoch 4 took 45 s and 15 s are left: stop.
    assert [change["epochs"] for change in trained.replans] == [6]
    assert "6 epochs instead of 11; moved the schedule's end\n" in caplog.text, "no tail to name"
    assert len(trained.history["val_auc"]) == 4 and trained.stopped_by_budget


def test_tiny_real_budget_measures_throughput_and_ends_within_it() -> None:
    budget_minutes = 0.75
    started = time.perf_counter()
    trained = _fit(_params(f"training.time_budget_minutes={budget_minutes}", "training.epochs=500"), n=256)
    elapsed = time.perf_counter() - started
    plan = trained.plan
    assert plan is not None and plan.train_images_per_second > 0 and plan.probe_seconds > 0
    assert plan.epochs == plan_epochs(
        budget_seconds=plan.budget_seconds,
        spent_seconds=plan.probe_seconds,
        setup_seconds=plan.setup_seconds,
        epoch_seconds=plan.epoch_seconds,
        max_epochs=500,
    )
    assert plan.epoch_seconds == pytest.approx(
        16 * 256 / 16 / plan.train_images_per_second + 2 * 16 / plan.validation_images_per_second, rel=0.01
    )
    assert 1 < plan.epochs < 500
    assert len(trained.history["val_auc"]) <= trained.epochs < 500
    # The estimate comes from a few steps on a shared machine: allow one epoch and the model build of slack.
    assert elapsed < plan.budget_seconds + plan.epoch_seconds + 15


def test_probe_times_at_least_its_minimum_and_puts_the_weights_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 steps of a tiny net take far less than the minimum: the probe keeps stepping until it is reached."""
    monkeypatch.setattr(train, "PROBE_MIN_SECONDS", 1.5)
    params = _params("training.time_budget_minutes=1", "training.epochs=3")
    model = build_model(
        "SimpleCNN",
        image_size=SIZE,
        dropout=0.0,
        pretrained_weights="none",
        augmentation=params.augmentation,
        mean=[0.5] * 3,
        variance=[0.05] * 3,
        seed=0,
    )
    initial = [w.copy() for w in model.get_weights()]
    data = train.training_dataset(
        *_data(64), batch_size=16, seed=0, degradations=NO_DEGRADATIONS, mixup_alpha=0.0
    ).repeat()
    steps: list[int] = []
    monkeypatch.setattr(
        train._StepTimer, "seconds_per_step", lambda self: steps.append(len(self.times)) or 0.01
    )
    validation = train.validation_dataset(*_data(32), batch_size=16).repeat()
    probe = train._probe(model, params.training, data, validation, 4)
    assert probe["wall"] >= 1.5
    assert steps[0] > train.PROBE_WARMUP_STEPS + train.PROBE_TIMED_STEPS + 1, "stopped at the step minimum"
    assert steps[0] < train.PROBE_MAX_STEPS
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), initial, strict=True))


def test_the_cpu_flags_say_whether_it_has_amx_bfloat16_tiles(tmp_path: Path) -> None:
    sapphire_rapids, zen = tmp_path / "spr", tmp_path / "zen"
    sapphire_rapids.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    zen.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\nbugs\t\t: amx_bf16_is_not_a_flag_here\n")
    assert train.cpu_has_amx_bf16(sapphire_rapids)
    assert not train.cpu_has_amx_bf16(zen)
    assert not train.cpu_has_amx_bf16(tmp_path / "no-proc")


@pytest.mark.parametrize(
    ("setting", "gpus", "amx", "policy"),
    [
        ("off", 1, True, "float32"),
        ("off", 0, True, "float32"),
        ("auto", 1, False, "mixed_float16"),
        ("on", 1, True, "mixed_float16"),
        ("auto", 0, True, "mixed_bfloat16"),
        ("auto", 0, False, "float32"),
        ("on", 0, False, "float32"),
    ],
)
def test_mixed_precision_is_float16_on_a_gpu_and_bfloat16_on_a_cpu_with_amx(
    monkeypatch: pytest.MonkeyPatch, setting: str, gpus: int, amx: bool, policy: str
) -> None:
    monkeypatch.setattr(train, "cpu_has_amx_bf16", lambda: amx)
    assert train.precision_policy(setting, gpus) == policy


@pytest.mark.skipif(not train.cpu_has_amx_bf16(), reason=on_this_machine("bfloat16 training needs AMX tiles"))
def test_a_bfloat16_fit_computes_in_bfloat16_and_leaves_the_global_policy_float32() -> None:
    one_epoch = ("training.time_budget_minutes=null", "training.epochs=1")
    trained = _fit(_params('training.mixed_precision="on"', *one_epoch))
    conv = next(layer for layer in trained.model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert trained.model.get_layer("fake_probability").dtype_policy.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # whatever is built next is float32
    # The next fit in the same process (a bench's next candidate) trains in the precision it asks for.
    again = _fit(_params('training.mixed_precision="off"', *one_epoch))
    assert {layer.dtype_policy.name for layer in again.model.layers} == {"float32"}


def test_a_bfloat16_fit_that_fails_still_leaves_the_global_policy_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any CPU: the fit fails before its first step, so no bfloat16 kernel runs; the policy is what is tested.
    monkeypatch.setattr(train, "cpu_has_amx_bf16", lambda: True)
    policies: list[str] = []

    class Fails(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            policies.append(keras.mixed_precision.global_policy().name)
            raise RuntimeError("stopped by the test")

    params = _params(
        'training.mixed_precision="on"', "training.time_budget_minutes=null", "training.epochs=1"
    )
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train_model(
            params, _data(32), _data(16, seed=1), mean=[0.5] * 3, variance=[0.05] * 3, callbacks=[Fails()]
        )
    assert policies == ["mixed_bfloat16"]  # the fit was under way in bfloat16
    assert keras.mixed_precision.global_policy().name == "float32"

    # ... and so does one that fails before the fit, while building the model.
    missing = _params(
        'training.mixed_precision="on"',
        "model.architecture=EfficientNetB0Transfer",
        "model.pretrained_weights=/no/such/weights.h5",
    )
    with pytest.raises(PretrainedWeightsError, match="no such weights file"):
        train_model(missing, _data(32), _data(16, seed=1), mean=[0.5] * 3, variance=[0.05] * 3)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_every_epoch_is_one_pass_over_the_training_images() -> None:
    """The fit iterates one repeated dataset; each epoch still takes exactly ceil(n / batch) steps."""

    class StepsPerEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            counts.append(0)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            counts[-1] += 1

    counts: list[int] = []
    params = _params("training.time_budget_minutes=null", "training.epochs=3")
    train_model(
        params, _data(70), _data(32, seed=1), mean=[0.5] * 3, variance=[0.05] * 3, callbacks=[StepsPerEpoch()]
    )
    assert counts == [5, 5, 5]  # 70 images in batches of 16: four full and one of 6


def test_without_budget_the_configured_epochs_run_and_no_probe_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(train, "_probe", lambda *args: pytest.fail("probed without a budget"))
    trained = _fit(_params("training.time_budget_minutes=null", "training.epochs=2"))
    assert trained.plan is None and trained.epochs == 2 and len(trained.history["loss"]) == 2


TWELVE_EPOCHS_PATIENCE_2 = (
    "training.time_budget_minutes=null",
    "training.epochs=12",
    "training.early_stopping_patience=2",
)


def test_early_stopping_counts_only_the_epochs_in_the_second_half_of_the_decay() -> None:
    """Validation ROC-AUC is 1.0 from the first epoch on this data, so it never improves after it.

    12 epochs of 4 steps: a warm-up of 2 steps, then the decay's midpoint at step 25, passed at the end of
    epoch 7. Patience 2 then stops the fit after epoch 9; plain early stopping would stop after epoch 3.
    """
    trained = _fit(_params(*TWELVE_EPOCHS_PATIENCE_2, "augmentation.degradation_tail.fraction=0.0"))
    assert trained.history["val_auc"][0] == 1.0
    assert len(trained.history["val_auc"]) == 9


def test_early_stopping_waits_for_the_degradation_tail_which_the_fits_batches_get(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fit with its last quarter (epochs 10-12) at half the degradations.

    Early stopping counts from epoch 10, so patience 2 no longer ends the fit after epoch 9; the fit's batches
    carry the tail from epoch 10's first step.
    """
    datasets: list[dict] = []

    def recorded(*args, **kwargs):
        datasets.append(kwargs)
        return real_dataset(*args, **kwargs)

    real_dataset = train.training_dataset
    monkeypatch.setattr(train, "training_dataset", recorded)
    trained = _fit(_params(*TWELVE_EPOCHS_PATIENCE_2, *QUARTER_TAIL))
    assert trained.tail_from_epoch == 10 and len(trained.history["val_auc"]) == 12
    (fit,) = [kwargs for kwargs in datasets if kwargs["tail"] is not None]
    assert fit["endless"] and (fit["tail"].start, fit["tail"].scale) == (9 * 4, 0.5)


def test_without_budget_the_same_seed_trains_the_same_weights_and_another_seed_does_not() -> None:
    """Fixed epochs make a run repeatable: the seed reaches the weights, the shuffle and every draw."""
    fixed = ("training.time_budget_minutes=null", "training.epochs=2")
    assert load_params(REPO / "params.yaml").augmentation.degradations.jpeg > 0  # the draws are exercised

    def weights(seed: int) -> list[np.ndarray]:
        return _fit(_params(*fixed, f"training.seed={seed}")).model.get_weights()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_a_budgeted_run_trains_the_same_weights_however_long_its_probe_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probe's step count follows the machine's speed; the fit that follows must not."""
    budgeted = _params("training.time_budget_minutes=10", "training.epochs=2", "training.seed=3")

    def fit_after_a_probe_of(seconds: float) -> train.Trained:
        monkeypatch.setattr(train, "PROBE_MIN_SECONDS", seconds)
        return _fit(budgeted)

    short, long = fit_after_a_probe_of(0.2), fit_after_a_probe_of(2.0)
    assert short.epochs == long.epochs == 2  # the same plan: capped by training.epochs
    assert all(
        np.array_equal(a, b) for a, b in zip(short.model.get_weights(), long.model.get_weights(), strict=True)
    )


def test_degradations_and_mixing_stay_out_of_the_trained_model(tmp_path: Path) -> None:
    params = _params(
        "training.time_budget_minutes=null",
        "training.epochs=1",
        "augmentation.degradations={jpeg: 1.0, resample: 1.0, blur: 1.0, noise: 1.0}",
        "augmentation.mixup_alpha=0.4",
        "augmentation.cutmix=0.5",
    )
    trained = _fit(params)
    plain = build_model(
        "SimpleCNN",
        image_size=SIZE,
        dropout=0.2,
        pretrained_weights="none",
        augmentation=params.augmentation.model_copy(
            update={"degradations": NO_DEGRADATIONS, "mixup_alpha": 0, "cutmix": 0}
        ),
        mean=[0.5] * 3,
        variance=[0.05] * 3,
        seed=1,
    )
    assert [type(layer).__name__ for layer in trained.model.layers] == [
        type(x).__name__ for x in plain.layers
    ]
    trained.model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    images = _data(8, seed=2)[0]
    # Inference is deterministic and equals the in-memory model: nothing random runs at predict time.
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), trained.model.predict(images, verbose=0), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), reloaded.predict(images, verbose=0))


def test_ema_leaves_the_averaged_weights_in_the_model_and_label_smoothing_reaches_the_loss() -> None:
    trained = _fit(
        _params(
            "training.time_budget_minutes=null",
            "training.epochs=2",
            "training.ema_momentum=0.9",
            "training.label_smoothing=0.1",
        )
    )
    optimizer = trained.model.optimizer
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9
    for weight, average in zip(
        trained.model.trainable_variables, optimizer._model_variables_moving_average, strict=True
    ):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(average))
    assert trained.model.loss.label_smoothing == 0.1


def test_the_configured_spectrum_branch_is_built_into_the_trained_model() -> None:
    trained = _fit(
        _params("model.spectrum_branch=true", "training.time_budget_minutes=null", "training.epochs=1")
    )
    assert trained.model.get_layer("spectrum").output.shape[1:] == (SIZE, SIZE)


def test_without_tf_data_the_fit_reads_the_worker_stream_one_pass_per_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The input path of the JAX and torch backends, run here on TensorFlow: same epochs, same recipe."""
    from stages import augment

    streamed: list[int] = []
    real_stream = augment.batch_stream

    def counted(*args, **kwargs):
        streamed.append(kwargs["batch_size"])
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(train, "uses_tf_data", lambda: False)
    monkeypatch.setattr(train, "batch_stream", counted)
    monkeypatch.setattr(train, "training_dataset", lambda *a, **k: pytest.fail("read tf.data"))
    params = _params("training.time_budget_minutes=10", "training.epochs=2")
    assert params.augmentation.degradations.jpeg > 0  # workers augment
    monkeypatch.setattr(train, "PROBE_MIN_SECONDS", 0.2)
    trained = train_model(params, _data(70), _data(32, seed=1), mean=[0.5] * 3, variance=[0.05] * 3)
    assert streamed == [16, 16, 16]  # the probe's training and validation batches, then the fit's
    assert trained.plan is not None and len(trained.history["val_accuracy"]) == 2


JAX_TRAINING = """
import sys
from pathlib import Path
import keras
import numpy as np
sys.path.insert(0, "tests")
from test_train_recipe import _data, _params
from stages.train import train_model

out = Path(sys.argv[1])
params = _params("training.time_budget_minutes=1", "training.epochs=2")
trained = train_model(params, _data(70), _data(32, seed=1), mean=[0.5] * 3, variance=[0.05] * 3)
trained.model.save(out / "model.keras")
np.save(out / "scores.npy", keras.ops.convert_to_numpy(trained.model(_data(32, seed=2)[0])))
print(keras.backend.backend(), len(trained.history["val_accuracy"]), trained.plan is not None)
"""


def test_a_model_trained_on_jax_without_tensorflow_scores_the_same_on_tensorflow(tmp_path: Path) -> None:
    """The lent GPU machine's path on the CPU: JAX, the worker stream, the budget probe, no TensorFlow at all.

    The predictor (TensorFlow) then loads the saved model and scores images as JAX did.
    """
    import subprocess
    import sys

    from core.modelstore import load_keras

    # As on the GPU machine: importing TensorFlow fails, so there is no tf.data.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text('raise ImportError("no TensorFlow here")\n')
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", JAX_TRAINING, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["jax", "2", "True"]
    model = load_keras(tmp_path / "model.keras")
    scores = keras.ops.convert_to_numpy(model(_data(32, seed=2)[0]))
    np.testing.assert_allclose(scores, np.load(tmp_path / "scores.npy"), rtol=0, atol=1e-5)
