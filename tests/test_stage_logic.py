"""Unit tier: splitting, streaming arrays, statistics, metrics, the promotion gate and tracking errors."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core.config import SplitParams
from core.labels import EMPTY_FAKE_BAND, EMPTY_REAL_BAND
from core.metrics import classification_metrics, expected_calibration_error
from core.tracking import TrackingUnavailableError, resolve_tracking_uri
from stages import register
from stages.evaluate import choose_threshold
from stages.features import channel_statistics, high_frequency_energy, log_spectra
from stages.preprocess import SplitError, split_names
from stages.register import _settings_changed, decide, degraded_metric, edge_tag
from stages.shards import NpyWriter

REPO = Path(__file__).resolve().parents[1]


def _names(per_class: int) -> list[str]:
    return [
        f"{split}/{cls}/{cls}{i:04d}.jpg"
        for split, n in (("train", per_class), ("test", 7))
        for cls in ("REAL", "FAKE")
        for i in range(n)
    ]


def test_split_is_stratified_disjoint_and_deterministic() -> None:
    params = SplitParams(validation_fraction=0.2, seed=3)
    first = split_names(_names(50), params)
    assert first == split_names(list(reversed(_names(50))), params), "input order must not matter"
    assert len(first["test"]) == 14 and all(n.startswith("test/") for n in first["test"])
    for cls in ("REAL", "FAKE"):
        assert sum(f"/{cls}/" in n for n in first["val"]) == 10
        assert sum(f"/{cls}/" in n for n in first["train"]) == 40
    assert not set(first["train"]) & set(first["val"])
    other = split_names(_names(50), SplitParams(validation_fraction=0.2, seed=4))
    assert set(other["val"]) != set(first["val"])


def test_split_keeps_every_class_in_train_and_validation() -> None:
    params = SplitParams(validation_fraction=0.2, seed=3)
    split = split_names(_names(2), params)
    for cls in ("REAL", "FAKE"):
        assert sum(f"/{cls}/" in n for n in split["train"]) == 1
        assert sum(f"/{cls}/" in n for n in split["val"]) == 1


@pytest.mark.parametrize("per_class", [0, 1])
def test_a_class_with_fewer_than_two_train_images_is_refused_by_name(per_class: int) -> None:
    """With data.sample_per_class 1 the one image went to validation, and train later died on NaN means."""
    with pytest.raises(SplitError, match=rf"train/FAKE: {per_class} image\(s\); each class needs at least 2"):
        split_names(_names(per_class), SplitParams(validation_fraction=0.2, seed=3))
    names = [n for n in _names(1) if "/REAL/" in n] + [n for n in _names(5) if "train/FAKE/" in n]
    with pytest.raises(SplitError, match=r"train/REAL: 1 image"):
        split_names(names, SplitParams(validation_fraction=0.2, seed=3))


def test_preprocess_on_one_image_per_class_is_one_line_naming_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    from stages import preprocess

    raw = tmp_path / "data/raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "images.zip", "w") as archive:
        for name in _names(1):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32)).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    index = {"image_size": 32, "data_hash": "x", "synthetic": True, "source": {"kind": "synthetic"}}
    (raw / "index.json").write_text(json.dumps(index))
    monkeypatch.chdir(tmp_path)
    assert preprocess.main(["--params", str(REPO / "params.yaml")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "stages.preprocess: error: data/raw/images.zip: train/FAKE: 1 image(s); each class"
    )
    assert not (tmp_path / "data/processed").exists()


def test_npy_writer_streams_a_loadable_array(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    with NpyWriter(tmp_path / "a.npy", 10, (4, 4, 3), np.uint8) as writer:
        writer.write(rows[:6])
        writer.write(rows[6:])
    assert np.array_equal(np.load(tmp_path / "a.npy", mmap_mode="r"), rows)
    with (
        pytest.raises(ValueError, match="wrote 3 of 10"),
        NpyWriter(tmp_path / "b.npy", 10, (4, 4, 3), np.uint8) as writer,
    ):
        writer.write(rows[:3])


def test_channel_statistics_match_numpy() -> None:
    images = np.random.default_rng(1).integers(0, 256, (9000, 4, 4, 3), dtype=np.uint8)  # > one chunk
    mean, variance = channel_statistics(images)
    scaled = images / 255.0
    assert np.allclose(mean, scaled.mean(axis=(0, 1, 2)))
    assert np.allclose(variance, scaled.var(axis=(0, 1, 2)))


def test_spectrum_sees_high_frequency_noise() -> None:
    rng = np.random.default_rng(2)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (20, 4, 4, 3)), 8, axis=1), 8, axis=2).astype(np.uint8)
    noisy = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    spectra = log_spectra(np.concatenate([smooth, noisy]), np.array([0] * 20 + [1] * 20))
    assert spectra.shape == (2, 32, 32)
    assert high_frequency_energy(spectra[1]) > 2 * high_frequency_energy(spectra[0])


def test_metrics_on_a_known_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])
    result = classification_metrics(labels, probabilities, threshold=0.5)
    assert result["confusion_matrix"] == [[2, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["roc_auc"] == pytest.approx(7 / 9)


def test_metrics_of_one_class_have_no_auc_and_stay_strict_json() -> None:
    """ROC-AUC and PR-AUC need both classes: without one they are null, not NaN (strict parsers refuse it)."""
    result = classification_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]), threshold=0.5)
    assert (result["roc_auc"], result["pr_auc"]) == (None, None)
    json.dumps(result, allow_nan=False)


def test_fake_registry_champion_rescored_on_a_one_class_test_split_has_no_value_and_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The champion measured on other test data is rescored; a one-class split's ROC-AUC is null, which
    crashed the rescoring (float(None)) instead of keeping the champion. Registry and model loading faked."""
    champion = SimpleNamespace(version="3", tags={"test_hash": "another split"})
    client = SimpleNamespace(
        get_model_version_by_alias=lambda name, alias: champion,
        get_registered_model=lambda name: SimpleNamespace(tags={}),
    )
    monkeypatch.setattr(register, "download_model", lambda uri: Path("unused"))
    monkeypatch.setattr(register, "load_model_dir", lambda path: (None, SimpleNamespace(threshold=0.5)))
    monkeypatch.setattr(register, "load_split", lambda folder, split: (np.zeros((3, 2)), np.ones(3)))
    monkeypatch.setattr(register, "predict_fake_probability", lambda model, x: np.array([0.2, 0.7, 0.9]))
    report = {"degraded_mean": {"roc_auc": None, "accuracy": 0.6}}
    monkeypatch.setattr(register.robustness, "robustness_report", lambda *args: report)
    score = register._champion_score(client, "deepguard", "roc_auc", "this split", None)
    assert (score.value, score.version) == (None, "3")
    assert not decide("roc_auc", 0.99, score.value, 0.0015, score.version).promote


def test_threshold_is_chosen_to_maximise_the_validation_metric() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.05, 0.1, 0.2, 0.3, 0.7, 0.9])  # separable at any cut in (0.2, 0.3]
    threshold = choose_threshold(labels, probabilities, "accuracy")
    assert 0.2 < threshold <= 0.3
    assert classification_metrics(labels, probabilities, threshold)["accuracy"] == 1.0
    assert choose_threshold(labels, probabilities, "f1") == threshold


def test_f1_and_accuracy_choose_their_own_thresholds_and_ties_go_nearest_one_half() -> None:
    labels = np.array([1, 1, 0, 0, 0, 1])  # two fakes score lowest: F1 takes them in, accuracy does not
    probabilities = np.array([0.1, 0.15, 0.3, 0.4, 0.45, 0.9])
    assert choose_threshold(labels, probabilities, "accuracy") == 0.9
    assert choose_threshold(labels, probabilities, "f1") == 0.1
    labels = np.array([0, 0, 1, 0, 1, 1])  # cutting at 0.35 or at 0.7 both get 5 of 6 right
    probabilities = np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9])
    assert choose_threshold(labels, probabilities, "accuracy") == 0.35
    assert choose_threshold(labels, np.array([0.1, 0.2, 0.3, 0.55, 0.65, 0.9]), "accuracy") == 0.65


def test_expected_calibration_error() -> None:
    labels = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(labels, np.full(10, 0.8), bins=10) == pytest.approx(0.0)
    assert expected_calibration_error(labels, np.full(10, 0.3), bins=10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("challenger", "champion", "minimum", "promote"),
    [
        (0.90, None, 0.0, True),  # first model
        (0.95, 0.90, 0.0, True),
        (0.90, 0.90, 0.0, False),  # a tie keeps the champion
        (0.85, 0.90, 0.0, False),
        (0.905, 0.90, 0.01, False),  # better, but not by the gate's minimum
        (0.92, 0.90, 0.01, True),
        (0.9980, 0.9965, 0.0015, True),  # exactly the minimum, though the float difference is 0.00149999...
        (0.9979, 0.9965, 0.0015, False),
    ],
)
def test_promotion_gate(challenger: float, champion: float | None, minimum: float, promote: bool) -> None:
    decision = decide("roc_auc", challenger, champion, minimum, None if champion is None else "3")
    assert decision.promote is promote
    assert ("first model" in decision.reason) == (champion is None)


@pytest.mark.parametrize(
    ("challenger_degraded", "champion_degraded", "promote", "says"),
    [
        (0.80, 0.85, True, "is within"),  # 0.05 below the champion: the allowed drop
        (0.79, 0.85, False, "drops more than"),  # better on clean test, too fragile under degradations
        (0.90, 0.85, True, "is within"),  # more robust too
        (0.50, None, True, "not compared"),  # a champion registered before robustness reports
    ],
)
def test_robustness_gate_refuses_a_cleanly_better_but_fragile_challenger(
    challenger_degraded: float, champion_degraded: float | None, promote: bool, says: str
) -> None:
    decision = decide(
        "roc_auc",
        0.95,
        0.90,
        0.01,
        "3",
        challenger_degraded=challenger_degraded,
        champion_degraded=champion_degraded,
        max_robustness_drop=0.05,
    )
    assert decision.promote is promote
    assert "beats champion v3" in decision.reason and says in decision.reason
    assert decision.degraded_metric == "roc_auc"
    assert (decision.challenger_degraded, decision.champion_degraded) == (
        challenger_degraded,
        champion_degraded,
    )


def test_robustness_gate_never_rescues_a_challenger_worse_on_clean_test() -> None:
    decision = decide(
        "accuracy",
        0.85,
        0.90,
        0.0,
        "3",
        challenger_degraded=0.99,
        champion_degraded=0.5,
        max_robustness_drop=0.0,
    )
    assert not decision.promote and "needs an improvement" in decision.reason


def test_a_pinned_champion_is_replaced_by_nothing() -> None:
    """An operator pinned v3 (`deploy --pin 3`, the registered model's tag champion_pinned): neither a better
    model nor the champion's own file with new settings replaces it; the reason says how to unpin."""
    pin = "v3 since 2026-12-07T19:00:00+00:00"
    better = decide("roc_auc", 0.99, 0.90, 0.0015, "3", pinned=pin)
    assert not better.promote and f"champion v3 is pinned (registered model tag champion_pinned: {pin})" in (
        better.reason
    )
    assert "--unpin" in better.reason
    assert not decide("roc_auc", 0.9, 0.9, 0.0015, "3", new_settings_for_champion="x", pinned=pin).promote
    assert decide("roc_auc", 0.9, None, 0.0015, None, pinned=pin).promote  # no champion: nothing is pinned
    assert decide("roc_auc", 0.99, 0.90, 0.0015, "3").promote


def test_robustness_gate_compares_accuracy_when_the_report_lacks_the_metric() -> None:
    assert degraded_metric("roc_auc") == "roc_auc" and degraded_metric("f1") == "accuracy"
    refused = decide(
        "f1", 0.95, 0.90, 0.0, "3", challenger_degraded=0.7, champion_degraded=0.8, max_robustness_drop=0.05
    )
    assert not refused.promote and "degraded-mean accuracy" in refused.reason


def test_the_champions_own_model_file_evaluated_again_replaces_it() -> None:
    """A changed evaluation setting reruns evaluate and register on the same weights: a tie by design, so
    only the model file's hash can tell that the new threshold and bands belong to the champion."""
    champion = {"model_sha256": "aa", "threshold": "0.416", "real_below": "0.120", "fake_above": "0.869"}
    rerun = {**champion, "test_roc_auc": "0.9968"}
    assert _settings_changed(champion, rerun) is None  # a plain rerun: nothing new to serve
    rebanded = {**champion, "fake_above": "0.801"}
    assert _settings_changed(champion, rebanded) == "fake_above 0.869 -> 0.801"
    assert _settings_changed(champion, {**rebanded, "model_sha256": "bb"}) is None  # another model: the gate
    assert _settings_changed({k: v for k, v in champion.items() if k != "model_sha256"}, rebanded) is None
    assert not decide("roc_auc", 0.9968, 0.9968, 0.0015, "4").promote
    changed = "fake_above 0.8 -> 0.7"
    replaced = decide("roc_auc", 0.9968, 0.9968, 0.0015, "4", new_settings_for_champion=changed)
    assert replaced.promote and "v4's own model file" in replaced.reason
    assert "fake_above 0.8 -> 0.7" in replaced.reason


def test_a_metric_with_no_value_promotes_nothing() -> None:
    """ROC-AUC of a one-class test split is None (null): the gate says so instead of failing on None - x."""
    for challenger, champion in ((None, 0.97), (0.99, None)):
        kept = decide("roc_auc", challenger, champion, 0.0015, "3")
        assert not kept.promote and "has no value" in kept.reason
    assert decide("roc_auc", None, None, 0.0015, None).promote  # the first model still becomes champion


def test_an_empty_band_is_tagged_none_and_a_re_evaluated_old_champion_is_replaced() -> None:
    """A version's tags show an empty band as ``none``, not as an edge. A champion registered when an empty
    band was stored as 0.0 / 1.0 (which decided saturated scores) is replaced by its own model file evaluated
    again: the same weights, now served with bands that decide nothing there."""
    assert (edge_tag(EMPTY_REAL_BAND), edge_tag(EMPTY_FAKE_BAND)) == ("none", "none")
    assert (edge_tag(0.0), edge_tag(0.12), edge_tag(1.0)) == ("0.000000", "0.120000", "1.000000")
    old = {"model_sha256": "aa", "threshold": "0.416000", "real_below": "0.000000", "fake_above": "0.869000"}
    evaluated_again = {**old, "real_below": edge_tag(EMPTY_REAL_BAND)}
    assert _settings_changed(old, evaluated_again) == "real_below 0.000000 -> none"


def test_a_model_trained_on_synthetic_data_never_replaces_a_real_data_champion() -> None:
    """A run that found no data falls back to synthetic data, whose own test split it may well ace."""
    refused = decide("roc_auc", 0.999, 0.97, 0.0015, "3", synthetic_over_real=True)
    assert not refused.promote and "synthetic data" in refused.reason and "champion v3" in refused.reason
    assert decide("roc_auc", 0.999, None, 0.0015, None, synthetic_over_real=False).promote  # the first model


def test_default_gate_minimum_is_above_rerun_noise() -> None:
    """params.yaml's promotion.min_improvement comes from bench/gate_noise_bench.py: rerun noise never
    promotes, a gain twice the minimum does."""
    from core.config import load_params

    minimum = load_params(Path(__file__).resolve().parents[1] / "params.yaml").promotion.min_improvement
    assert minimum > 0
    assert not decide("roc_auc", 0.9975 + minimum / 2, 0.9975, minimum, "1").promote
    assert decide("roc_auc", 0.9975 - 2 * minimum, 0.9975 - 4 * minimum, minimum, "1").promote


def test_partial_dagshub_settings_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSHUB_USERNAME", "someone")
    monkeypatch.delenv("DAGSHUB_TOKEN", raising=False)
    monkeypatch.delenv("DAGSHUB_REPO", raising=False)
    with pytest.raises(TrackingUnavailableError, match="missing: DAGSHUB_TOKEN, DAGSHUB_REPO"):
        resolve_tracking_uri()


def test_dagshub_unreachable_fails_fast_at_the_network_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine cannot reach DagsHub: the real code path must stop at the probe with one message."""
    import time

    settings = {"DAGSHUB_USERNAME": "someone", "DAGSHUB_TOKEN": "t", "DAGSHUB_REPO": "deepguard"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        resolve_tracking_uri()
    assert time.monotonic() - started < 30
