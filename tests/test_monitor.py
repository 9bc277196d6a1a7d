"""The drift monitor: statistics on clean and degraded CIFAKE, and the stage against a real MLflow store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from drift_world import records, register_champion, world, write_records
from PIL import Image
from workspace import make_workspace, require_sample, run_stage, stage_env

from core.config import load_params
from core.drift import (
    DRIFT,
    INSUFFICIENT,
    OK,
    REFERENCE_MAX,
    build_reference,
    compare,
    latest_summary,
    out_of_domain,
    population_stability_index,
)
from core.imagestats import STAT_NAMES
from core.imaging import RAW_FORMAT, facts_of
from core.names import DRIFT_LATEST
from core.pipeline import DRIFT_FIGURE, DRIFT_FILE, REFERENCE_FILE

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# One served image's prediction record, as serving/records.py writes it, without its time.
SERVED = {
    "model_version": "1",
    "fake_probability": 0.5,
    "verdict": "UNCERTAIN",
    "width": 32,
    "height": 32,
    "format": "PNG",
    **dict.fromkeys(STAT_NAMES, 0.5),
}
SETTINGS = load_params(REPO / "params.yaml").monitoring


@pytest.fixture(scope="module")
def cifake():
    require_sample()
    return world()


@pytest.fixture(scope="module")
def served(cifake) -> dict[str, list[dict]]:
    scorer, _, test = cifake
    return {name: records(name, scorer, test, "1", NOW) for name in ("clean", "blur_1.0", "upscale_4x")}


def _compare(reference: dict, rows: list[dict]) -> dict:
    return compare(reference, rows, tuple(reference["bands"]), SETTINGS)


def test_clean_cifake_does_not_drift(cifake, served) -> None:
    report = _compare(cifake[1], served["clean"])
    print(f"clean: PSI {report['psi']:.3f}, KS {_ks(report)}")
    assert report["status"] == OK and report["reasons"] == [] and report["drift"] is False
    assert report["psi"] < 0.1 and report["out_of_domain"]["share"] == 0.0
    assert all(result["statistic"] < SETTINGS.ks_statistic for result in report["ks"].values())


def test_blurred_uploads_drift_on_high_frequencies_and_scores(cifake, served) -> None:
    report = _compare(cifake[1], served["blur_1.0"])
    print(f"blur_1.0: PSI {report['psi']:.3f}, KS {_ks(report)}")
    assert report["status"] == DRIFT
    assert report["ks"]["hf_energy"]["drifted"] and report["ks"]["hf_energy"]["statistic"] > 0.5
    assert report["psi"] > SETTINGS.psi_threshold
    assert not report["ks"]["mean_r"]["drifted"], "blur keeps the mean colour"
    assert report["out_of_domain"]["share"] == 0.0, "a blurred 32x32 PNG is in the domain by format and size"
    assert any(reason.startswith("hf_energy shifted") for reason in report["reasons"])


def test_enlarged_uploads_are_out_of_domain(cifake, served) -> None:
    report = _compare(cifake[1], served["upscale_4x"])
    print(
        f"upscale_4x: PSI {report['psi']:.3f}, KS {_ks(report)}, OOD {report['out_of_domain']['share']:.0%}"
    )
    assert report["status"] == DRIFT and report["out_of_domain"] == {"count": 500, "share": 1.0}
    assert any(reason.startswith("out-of-domain inputs: 100.0%") for reason in report["reasons"])


def test_too_few_records_is_no_verdict(cifake, served) -> None:
    report = _compare(cifake[1], served["blur_1.0"][: SETTINGS.min_records - 1])
    assert report["status"] == INSUFFICIENT and report["drift"] is False and report["reasons"] == []


def test_a_handful_of_records_exports_no_psi_for_the_dashboard(cifake, served, tmp_path: Path) -> None:
    from serving.metrics import DriftCollector  # the predictor's exporter of the summary

    # Three clean images: PSI over ten bins is mostly empty bins, far above the threshold, and meaningless.
    report = _compare(cifake[1], served["clean"][:3])
    assert report["status"] == INSUFFICIENT and report["psi"] > SETTINGS.psi_threshold
    summary = latest_summary({**report, "model_version": "1", "window": {"end": NOW.isoformat()}})
    assert summary["drift"] is False and summary["psi"] is None
    (tmp_path / DRIFT_LATEST).write_text(json.dumps(summary))
    exported = {family.name for family in DriftCollector(tmp_path).collect()}
    assert exported == {"deepguard_drift_detected", "deepguard_drift_report_timestamp_seconds"}, "and no PSI"
    enough = _compare(cifake[1], served["clean"])
    assert latest_summary({**enough, "window": {}})["psi"] == enough["psi"]


def test_verdict_mix_of_the_reference_uses_the_champions_bands(cifake, served) -> None:
    report = _compare(cifake[1], served["clean"])
    scores = np.asarray(cifake[1]["scores"])
    assert report["verdicts"]["reference"]["FAKE"] == pytest.approx(np.mean(scores >= 0.6))
    assert report["verdicts"]["reference"]["REAL"] == pytest.approx(np.mean(scores <= 0.4))
    assert sum(report["verdicts"]["window"].values()) == pytest.approx(1.0)


def test_psi_is_zero_for_equal_samples_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.beta(2, 5, 5000)
    assert population_stability_index(base, base) == pytest.approx(0.0, abs=1e-12)
    small, large = (population_stability_index(base, np.clip(base + d, 0, 1)) for d in (0.02, 0.2))
    assert 0 < small < 0.1 < SETTINGS.psi_threshold < large


# The KS rule of params.yaml's comment, pinned here so that the cases below sit where they are meant to.
KS_RULE = SETTINGS.model_copy(update={"ks_pvalue": 0.01, "ks_statistic": 0.1, "min_records": 200})


def _even(count: int) -> np.ndarray:
    return (np.arange(count) + 0.5) / count


def _even_world(count: int, **shifted: np.ndarray) -> tuple[dict, list[dict]]:
    """A reference whose scores and statistics spread evenly over [0, 1], and ``count`` records spread the
    same way, but for the statistics given, which take the values given."""
    spread = _even(5000).tolist()
    reference = {
        "count": 5000,
        "image_size": 32,
        "scores": spread,
        "statistics": dict.fromkeys(STAT_NAMES, spread),
    }
    even = _even(count)
    rows = [
        {"fake_probability": float(p), "verdict": "REAL", "width": 32, "height": 32, "format": "PNG"}
        | {name: float(shifted.get(name, even)[i]) for name in STAT_NAMES}
        for i, p in enumerate(even)
    ]
    return reference, rows


def test_the_figure_of_an_hour_without_traffic_draws_without_warnings() -> None:
    # Quiet hours are common: each hourly monitor run drew an empty density histogram, and numpy's
    # "RuntimeWarning: invalid value encountered in divide" went into the task log.
    import warnings

    import matplotlib.pyplot as plt

    from stages.monitor import plot_drift

    reference, rows = _even_world(0)
    report = compare(reference, rows, (0.3, 0.7), KS_RULE)
    report |= {"model_name": "deepguard", "model_version": "1", "window": {"hours": 1.0}}
    assert report["status"] == INSUFFICIENT and report["records"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plot_drift(reference, rows, report)
    plt.close(figure)


def test_a_tiny_shift_that_many_records_make_significant_is_not_drift() -> None:
    reference, rows = _even_world(5000, mean_r=np.clip(_even(5000) + 0.05, 0, 1))
    report = compare(reference, rows, (0.3, 0.7), KS_RULE)
    ks = report["ks"]["mean_r"]
    assert ks["pvalue"] < 0.01 / len(STAT_NAMES) and ks["statistic"] < 0.1, "significant, but small"
    assert not ks["drifted"] and report["status"] == OK


def test_one_of_seven_statistics_needs_a_bonferroni_corrected_p_value() -> None:
    """p between ks_pvalue / 7 and ks_pvalue is what one of seven tests reaches by chance: not drift."""
    reference, rows = _even_world(200, mean_r=0.12 + 0.88 * _even(200))
    report = compare(reference, rows, (0.3, 0.7), KS_RULE)
    ks = report["ks"]["mean_r"]
    assert 0.01 / len(STAT_NAMES) < ks["pvalue"] < 0.01 and ks["statistic"] > 0.1
    assert not ks["drifted"] and report["status"] == OK, "exactly min_records records get a verdict"
    reference, rows = _even_world(200, mean_r=0.2 + 0.8 * _even(200))
    report = compare(reference, rows, (0.3, 0.7), KS_RULE)
    assert report["ks"]["mean_r"]["drifted"] and report["status"] == DRIFT


def test_an_upload_of_another_size_or_format_is_out_of_domain() -> None:
    formats = SETTINGS.in_domain_formats
    assert not out_of_domain({"width": 32, "height": 32, "format": "png"}, 32, formats)
    assert out_of_domain({"width": 32, "height": 48, "format": "PNG"}, 32, formats)
    assert out_of_domain({"width": 48, "height": 32, "format": "PNG"}, 32, formats)
    assert out_of_domain({"width": 32, "height": 32, "format": "GIF"}, 32, formats)


def test_a_pixel_tensor_of_the_models_size_is_in_the_domain() -> None:
    """A V2 client sending the model's 32x32 pixels (recorded as format RAW) counted as out of domain: such
    traffic alone raised the out-of-domain share to 100 % and triggered a retraining."""
    tensor = facts_of(Image.fromarray(np.zeros((32, 32, 3), np.uint8)))  # what the predictor records for one
    record = {"width": tensor.width, "height": tensor.height, "format": tensor.format}
    assert tensor.format == RAW_FORMAT and not out_of_domain(record, 32, SETTINGS.in_domain_formats)
    assert out_of_domain({**record, "width": 48, "height": 48}, 32, SETTINGS.in_domain_formats)
    rows = [{**SERVED, **record}] * SETTINGS.min_records
    reference, _ = _even_world(10)
    assert compare(reference, rows, (0.3, 0.7), SETTINGS)["out_of_domain"] == {"count": 0, "share": 0.0}


def test_reference_is_sampled_and_rounded() -> None:
    images = np.random.default_rng(1).integers(0, 256, (REFERENCE_MAX + 5, 8, 8, 3), np.uint8)
    reference = build_reference(images, np.linspace(0, 1, len(images)))
    assert reference["count"] == REFERENCE_MAX and len(reference["scores"]) == REFERENCE_MAX
    assert set(reference["statistics"]) == set(STAT_NAMES) and reference["image_size"] == 8
    with pytest.raises(ValueError, match="scores"):
        build_reference(images[:3], np.zeros(2))


def test_a_record_with_a_null_or_non_finite_number_is_malformed_not_fatal(tmp_path: Path) -> None:
    """A null fake_probability crashed the monitor with a TypeError; such a line is skipped and counted."""
    from stages.monitor import read_records

    good = {
        "ts": (NOW - timedelta(minutes=1)).isoformat(),
        "model_version": "1",
        "fake_probability": 0.25,
        "verdict": "REAL",
        "width": 32,
        "height": 32,
        "format": "PNG",
        **dict.fromkeys(STAT_NAMES, 0.5),
    }
    bad = [
        {**good, "fake_probability": None},
        {**good, "fake_probability": "0.3"},
        {**good, "fake_probability": True},
        {**good, "hf_energy": float("nan")},  # json.dumps writes NaN, which json.loads reads back
        {**good, "mean_r": float("inf")},
        {**good, "width": None},
    ]
    write_records(tmp_path / "records", [good, *bad, good])
    served, malformed, in_window, _ = read_records(tmp_path / "records", NOW - timedelta(hours=1), NOW)
    assert served == [good, good] and malformed == len(bad) and in_window == 2
    rng = np.random.default_rng(0)
    reference = build_reference(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.uniform(size=20))
    assert compare(reference, served, (0.3, 0.7), SETTINGS)["records"] == 2


def test_only_the_records_of_the_window_are_read(tmp_path: Path) -> None:
    """``[start, end)``: the DAG passes its run's time as ``--now``; a rerun of an earlier run sees no traffic
    served after it, nor twice the record at a window's edge."""
    from stages.monitor import read_records

    start = NOW - timedelta(hours=1)
    stamps = [start - timedelta(seconds=1), start, NOW - timedelta(seconds=1), NOW]
    write_records(tmp_path / "records", [{**SERVED, "ts": ts.isoformat()} for ts in stamps])
    records, malformed, _, _ = read_records(tmp_path / "records", start, NOW)
    assert [r["ts"] for r in records] == [stamps[1].isoformat(), stamps[2].isoformat()] and malformed == 0


def test_a_record_file_deleted_after_the_listing_is_skipped(tmp_path: Path) -> None:
    """A predictor deletes the oldest record files whenever the folder is over its size cap (any replica, any
    time); one listed by the monitor and gone before it was opened crashed the monitor (FileNotFoundError)."""
    from stages.monitor import read_records

    record = {**SERVED, "ts": (NOW - timedelta(minutes=1)).isoformat()}
    write_records(tmp_path / "records", [record])
    gone = tmp_path / "records" / "20261201T00-host-1-0000.jsonl"
    gone.symlink_to(tmp_path / "deleted.jsonl")  # listed, but not there any more when opened
    assert read_records(tmp_path / "records", NOW - timedelta(hours=1), NOW) == ([record], 0, 1, 0)


def test_a_busy_window_is_read_as_a_bounded_uniform_sample(tmp_path: Path) -> None:
    """The predictors keep up to 1 GiB of records (~3 million); parsed, a full window would not fit the
    monitor pod's memory. Past max_records the monitor keeps a seeded uniform sample and counts the rest."""
    from stages.monitor import read_records

    stamps = [NOW - timedelta(minutes=50) + timedelta(seconds=i) for i in range(3000)]
    write_records(tmp_path / "records", [{**SERVED, "ts": ts.isoformat()} for ts in stamps])
    records, malformed, served, _ = read_records(
        tmp_path / "records", NOW - timedelta(hours=1), NOW, max_records=300
    )
    assert len(records) == 300 and served == 3000 and malformed == 0
    kept = sorted(stamps.index(datetime.fromisoformat(r["ts"])) for r in records)
    assert len(set(kept)) == 300, "each record at most once"
    assert kept[0] < 300 and kept[-1] >= 2700, "the sample spans the window, not only its first records"
    assert 100 < sum(k < 1500 for k in kept) < 200, "about half from each half of the window"
    again, _, _, _ = read_records(tmp_path / "records", NOW - timedelta(hours=1), NOW, max_records=300)
    assert again == records, "seeded: a rerun of the same window compares the same sample"


def test_a_new_champion_outnumbered_by_the_old_version_gets_the_whole_sample(tmp_path: Path) -> None:
    """After a rollout the window still holds mostly the replaced version's records. Sampling the window first
    and keeping the champion's afterwards left it a tenth of the sample (``insufficient_data`` while its
    300 records were on disk); the champion's records are sampled, the others only counted."""
    from stages.monitor import read_records

    stamps = [NOW - timedelta(minutes=58) + timedelta(seconds=i) for i in range(3300)]
    rows = [
        {**SERVED, "ts": ts.isoformat(), "model_version": "2" if i % 11 == 0 else "1"}
        for i, ts in enumerate(stamps)
    ]
    write_records(tmp_path / "records", rows)
    records, malformed, served, others = read_records(
        tmp_path / "records", NOW - timedelta(hours=1), NOW, "2", max_records=300
    )
    assert len(records) == 300 and {r["model_version"] for r in records} == {"2"}
    assert (served, others, malformed) == (3300, 3000, 0)


def _ks(report: dict) -> str:
    return ", ".join(f"{name} {r['statistic']:.3f} (p {r['pvalue']:.1e})" for name, r in report["ks"].items())


# --- python -m stages.monitor against a real MLflow store ------------------------------------------------


def test_monitor_stage_reports_to_mlflow_and_tags_the_champion(cifake, served, tmp_path: Path) -> None:
    import mlflow

    root = make_workspace(tmp_path / "ws")
    monitoring = tmp_path / "monitoring"
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(monitoring))
    version = register_champion(env["MLFLOW_TRACKING_URI"], cifake[1])
    rows = served["blur_1.0"]
    old = [{**row, "ts": (NOW - timedelta(days=3)).isoformat()} for row in served["clean"][:50]]
    other = [{**row, "model_version": "99"} for row in served["clean"][:50]]
    path = write_records(monitoring / "records", rows + old + other)
    with path.open("a") as out:
        out.write('{"ts": "2026-12-01T11:59:00+00:00", "model_ver')  # a predictor killed mid-line
    xcom = tmp_path / "xcom" / "return.json"
    args = ("--now", NOW.isoformat(), "--xcom", str(xcom))
    result = run_stage("monitor", root, env, *args)
    assert "monitor done: deepguard v1 drift over 500 served images" in result.stdout
    # params.yaml's data.feedback is exclude: the retraining it triggers learns nothing new, and says so.
    assert "trains on the same data as the champion (data.feedback: exclude)" in result.stdout

    report = json.loads((root / DRIFT_FILE).read_text())
    assert report["status"] == "drift" and report["records"] == 500
    assert report["retrain_with_feedback"] is False
    assert report["other_versions"] == 50 and report["malformed"] == 1, "old records are outside the window"
    assert (root / DRIFT_FIGURE).stat().st_size > 10_000
    # The summary the predictor exports to Prometheus (serving.metrics.DriftCollector), beside the records.
    latest = json.loads((monitoring / "drift.json").read_text())
    assert latest["drift"] is True and latest["psi"] == pytest.approx(report["psi"])
    decision = json.loads(xcom.read_text())
    assert decision["drift"] is True and decision["model_version"] == version
    assert "hf_energy shifted" in decision["reason"]

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version("deepguard", version).tags
    assert tags["drift_status"] == "drift" and tags["drift_checked_at"] == "2026-12-01T12:00:00+00:00"
    run = client.get_run(tags["drift_run_id"])
    assert run.data.tags["model_version"] == version and run.data.metrics["psi"] == pytest.approx(
        report["psi"]
    )
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert logged == {"drift/drift.json", "drift/drift.png"}


def test_a_cleared_run_of_an_earlier_hour_does_not_replace_the_published_report(
    cifake, served, tmp_path: Path
) -> None:
    """Clearing yesterday's deepguard_monitor run (to look at it again) reran the monitor for that window; it
    replaced the summary the predictor exports and the champion's drift tags with yesterday's: the drift
    alert went out while traffic still drifted, and DeepGuardDriftReportStale fired on a day-old report."""
    import mlflow

    root = make_workspace(tmp_path / "ws")
    monitoring = tmp_path / "monitoring"
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(monitoring))
    version = register_champion(env["MLFLOW_TRACKING_URI"], cifake[1])
    write_records(monitoring / "records", served["blur_1.0"])
    run_stage("monitor", root, env, "--now", NOW.isoformat())
    earlier = NOW - timedelta(days=1)
    result = run_stage("monitor", root, env, "--now", earlier.isoformat())

    latest = json.loads((monitoring / DRIFT_LATEST).read_text())
    assert latest["status"] == "drift" and latest["ts"] == NOW.isoformat(), latest
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version("deepguard", version).tags
    assert tags["drift_status"] == "drift" and tags["drift_checked_at"] == "2026-12-01T12:00:00+00:00"
    assert "a report of a later window (ending 2026-12-01T12:00:00+00:00) is already published" in (
        result.stdout
    )
    # The earlier window's own report is still kept: in reports/drift.json and its MLflow run.
    assert json.loads((root / DRIFT_FILE).read_text())["status"] == INSUFFICIENT
    experiment = client.get_experiment_by_name("deepguard").experiment_id
    assert len(client.search_runs([experiment], "tags.drift = 'insufficient_data'")) == 1


def test_monitor_that_cannot_log_to_mlflow_publishes_no_alert_and_no_decision(
    cifake, served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow going down while the monitor logs failed the stage, yet the summary the predictor exports (the
    DeepGuardInputDrift alert: "the DAG has already triggered a retraining run") already said drift. Now the
    previous summary stays and no decision reaches the DAG: nothing claims what did not happen."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_uri_state
    from mlflow.exceptions import MlflowException

    from core.atomic import write_json
    from stages import monitor

    root = make_workspace(tmp_path / "ws")
    monitoring = tmp_path / "monitoring"
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(monitoring))
    version = register_champion(env["MLFLOW_TRACKING_URI"], cifake[1])
    write_records(monitoring / "records", served["blur_1.0"])  # drift
    previous = {"status": "ok", "drift": False, "psi": 0.01, "model_version": version, "ts": "earlier"}
    write_json(monitoring / "drift.json", previous)
    # The stage sets MLflow's process-wide URI and experiment: put them back for the tests after this one.
    monkeypatch.setattr(tracking_uri_state, "_tracking_uri", tracking_uri_state._tracking_uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    for name in ("MLFLOW_TRACKING_URI", "DEEPGUARD_MONITORING_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.chdir(root)

    def server_down(*args: object, **kwargs: object) -> None:
        raise MlflowException("API request to the tracking server failed: connection refused")

    monkeypatch.setattr(mlflow, "log_artifact", server_down)
    xcom = tmp_path / "xcom" / "return.json"
    with pytest.raises(MlflowException, match="connection refused"):
        monitor.run(load_params(root / "params.yaml"), now=NOW, xcom=xcom)
    assert json.loads((monitoring / "drift.json").read_text()) == previous, "the alert claims no new drift"
    assert not xcom.exists(), "no decision: the DAG triggers no retraining"
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    assert "drift_status" not in client.get_model_version("deepguard", version).tags
    assert json.loads((root / DRIFT_FILE).read_text())["status"] == "drift", "the measurement is kept"


def test_monitor_stage_without_champion_or_reference_fails_in_one_line(tmp_path: Path) -> None:
    import mlflow

    root = make_workspace(tmp_path / "ws")
    env = stage_env(root)
    failed = run_stage("monitor", root, env, check=False)
    assert failed.returncode == 2
    line = failed.stderr.strip().splitlines()[-1]  # before it: MLflow's own log lines
    assert line == "stages.monitor: error: no champion of 'deepguard' in MLflow: run the pipeline first"

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.get_experiment_by_name("deepguard").experiment_id)  # the monitor made it
    client.create_registered_model("deepguard")
    client.create_model_version("deepguard", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("deepguard", "champion", "1")
    failed = run_stage("monitor", root, env, check=False)
    line = failed.stderr.strip().splitlines()[-1]  # before it: MLflow's own log lines
    assert failed.returncode == 2 and "deepguard v1 has no monitoring/reference.json" in line


@pytest.mark.slow
def test_pipeline_logs_the_reference_with_the_registered_version(trained_workspace, tmp_path: Path) -> None:
    import mlflow

    reference = json.loads((trained_workspace.root / REFERENCE_FILE).read_text())
    test_size = len(np.load(trained_workspace.root / "data" / "processed" / "test_labels.npy"))
    assert reference["count"] == min(test_size, REFERENCE_MAX) and reference["image_size"] == 32
    assert all(0.0 <= s <= 1.0 for s in reference["scores"])
    client = mlflow.MlflowClient(tracking_uri=trained_workspace.tracking_uri)
    champion = client.get_model_version_by_alias("deepguard", "champion")
    path = client.download_artifacts(champion.run_id, "monitoring/reference.json", str(tmp_path))
    logged = json.loads(Path(path).read_text())
    assert logged["scores"] == reference["scores"] and logged["model_version"] == str(champion.version)
    metrics = json.loads((trained_workspace.root / "reports" / "metrics.json").read_text())
    assert logged["bands"][0] <= metrics["threshold"] <= logged["bands"][1]


def test_monitor_with_too_few_records_says_why_not_a_meaningless_psi(cifake, served, tmp_path: Path) -> None:
    """An on-call engineer reading the monitor's log learns that drift was not judged and why: too few images
    of the champion, and, when the window holds another version's records, that the champion may not be the
    version being served (a deploy that never happened or was rolled back)."""
    root = make_workspace(tmp_path / "ws")
    monitoring = tmp_path / "monitoring"
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(monitoring))
    register_champion(env["MLFLOW_TRACKING_URI"], cifake[1])
    other = [{**row, "model_version": "7"} for row in served["clean"][:50]]
    write_records(monitoring / "records", served["clean"][:3] + other)
    result = run_stage("monitor", root, env, "--now", NOW.isoformat())
    (done,) = [line for line in result.stdout.splitlines() if "monitor done:" in line]
    assert "PSI" not in done, done  # over 3 images it reads several times the threshold and means nothing
    assert (
        f"insufficient_data: 3 served images of v1 in the last {SETTINGS.window_hours:g} h, fewer than "
        f"monitoring.min_records ({SETTINGS.min_records}): drift not judged" in done
    ), done
    assert "50 records of the window are of another version than the champion v1" in done


def test_monitor_without_any_record_says_where_it_looked(cifake, tmp_path: Path) -> None:
    """No record at all is what a predictor writing to its own pod storage looks like (the chart's default,
    predictor.monitoring.claimName empty): the log names the folder and that setting, not only "too few"."""
    root = make_workspace(tmp_path / "ws")
    monitoring = tmp_path / "monitoring"
    env = stage_env(root, DEEPGUARD_MONITORING_DIR=str(monitoring))
    register_champion(env["MLFLOW_TRACKING_URI"], cifake[1])
    result = run_stage("monitor", root, env, "--now", NOW.isoformat())
    (done,) = [line for line in result.stdout.splitlines() if "monitor done:" in line]
    assert f"not one record of the window in {monitoring / 'records'}" in done, done
    assert "predictor.monitoring.claimName" in done, done
