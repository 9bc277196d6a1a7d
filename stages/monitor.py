"""Drift monitor: compare the champion's served records of the last window with its reference; report.

Reads ``$DEEPGUARD_MONITORING_DIR/records/*.jsonl`` (one JSON object per served image, written by the
predictor) and the champion's reference (``monitoring/reference.json`` in its MLflow run, logged by register).
Writes ``reports/drift.json`` and ``reports/figures/drift.png``, logs both to an MLflow run tagged with the
version, and tags the version ``drift_status``. Only then does it publish: ``--xcom PATH`` writes the decision
the Airflow DAG deepguard_monitor branches on (a KubernetesPodOperator returns ``/airflow/xcom/return.json``),
and ``$DEEPGUARD_MONITORING_DIR/drift.json`` the summary the predictor exports (the drift alert).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from core import tracking
from core.atomic import write_json
from core.cli import run_stage, stage_parser
from core.config import Params
from core.drift import INSUFFICIENT, WINDOW_MAX, compare, latest_summary
from core.errors import DeepGuardError
from core.imagestats import STAT_NAMES
from core.names import CHAMPION, DRIFT_LATEST
from core.pipeline import DRIFT_FIGURE, DRIFT_FILE, REFERENCE_ARTIFACT
from core.settings import settings as environment
from stages.figures import plt, save_figure

log = logging.getLogger(__name__)

REQUIRED = ("ts", "model_version", "fake_probability", "verdict", "width", "height", "format", *STAT_NAMES)
# The fields core.drift computes with: each must be a finite number (JSON's null, NaN or "0.3" is not one).
NUMERIC = ("fake_probability", "width", "height", *STAT_NAMES)


class MonitorError(DeepGuardError):
    """No champion, or a champion without a drift reference."""


def records_dir() -> Path:
    """``$DEEPGUARD_MONITORING_DIR/records`` (default ``monitoring/records`` in the workspace)."""
    return environment().monitoring_dir / "records"


def iso_time(value: str) -> datetime:
    """Parse an ISO-8601 time; one without a zone is UTC."""
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_records(
    folder: Path,
    start: datetime,
    end: datetime,
    version: str | None = None,
    max_records: int = WINDOW_MAX,
    seed: int = 0,
) -> tuple[list[dict], int, int, int]:
    """At most ``max_records`` of ``version``'s records served in ``[start, end)``, from each ``*.jsonl``.

    A line that is not a complete record (a predictor killed mid-write, a hand edit, a null or non-finite
    number) is skipped and counted, never fatal: monitoring must survive the traffic it watches. Records of
    another version (``None``: none is) are counted, not kept. Beyond ``max_records`` the records kept are a
    uniform sample of the version's (reservoir sampling, seeded): memory stays bounded however busy the window
    was, and a champion outnumbered by the version it replaced still gets the whole sample.

    Returns:
        ``(records, malformed, served, other_versions)``: ``served`` counts every well-formed record of the
        window, ``other_versions`` those of another version.
    """
    records: list[dict] = []
    malformed = served = other_versions = kept = 0
    rng = random.Random(seed)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            lines = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:  # deleted since listed: a predictor keeps the folder under its size cap
            continue
        with lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or any(key not in record for key in REQUIRED):
                        raise ValueError("incomplete record")
                    if not all(_finite_number(record[key]) for key in NUMERIC):
                        raise ValueError("a numeric field is not a finite number")
                    when = iso_time(str(record["ts"]))
                except ValueError:
                    malformed += 1
                    continue
                if not start <= when < end:
                    continue
                served += 1
                if version is not None and str(record["model_version"]) != version:
                    other_versions += 1
                    continue
                kept += 1
                if len(records) < max_records:
                    records.append(record)
                elif (slot := rng.randrange(kept)) < max_records:
                    records[slot] = record
    return records, malformed, served, other_versions


def champion_reference(client, model_name: str) -> tuple[str, dict]:  # client: mlflow.MlflowClient
    """The champion's version and its reference (``monitoring/reference.json`` of its run).

    Raises:
        MonitorError: when there is no champion or it was registered without a reference.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:  # a failing or busy registry is not "no champion": a retry may pass
        tracking.raise_unless_refused(exc, f"reading the {CHAMPION} of model {model_name!r}")
        raise MonitorError(f"no {CHAMPION} of {model_name!r} in MLflow: run the pipeline first") from None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=REFERENCE_ARTIFACT)
    except Exception:  # MLflow raises several types for a missing artifact
        raise MonitorError(
            f"{model_name} v{champion.version} has no {REFERENCE_ARTIFACT} (registered before drift "
            "monitoring): rerun evaluate and register"
        ) from None
    return str(champion.version), json.loads(Path(path).read_text())


def published_window_end(path: Path) -> datetime | None:
    """The window end of the summary already published at ``path``, or None (none, or unreadable).

    A cleared or retried run of an earlier hour must not replace it: the alert would show that hour's status,
    and ``DeepGuardDriftReportStale`` would fire on a report that went backwards in time.
    """
    try:
        return iso_time(str(json.loads(path.read_text(encoding="utf-8"))["ts"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _later(stamp: str | None, end: datetime) -> bool:
    """Whether ``stamp`` (a version's ``drift_checked_at``) is a window end after ``end``."""
    try:
        return stamp is not None and iso_time(stamp) > end
    except ValueError:  # edited by hand: this run's tags replace it
        return False


def plot_drift(reference: dict, records: list[dict], report: dict) -> plt.Figure:
    """Score histograms (reference vs window), KS statistic per image statistic, verdict mix."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    bins = np.linspace(0, 1, 21)
    axes[0].hist(reference["scores"], bins, density=True, alpha=0.5, label="reference (test split)")
    if records:  # a density of no values divides by zero: an hour without traffic draws the reference alone
        axes[0].hist([r["fake_probability"] for r in records], bins, density=True, alpha=0.5, label="served")
    axes[0].set(title=f"P(FAKE): PSI {report['psi']:.3f}", xlabel="P(FAKE)")
    axes[0].legend()
    names = list(report["ks"])
    colours = ["tab:red" if report["ks"][n]["drifted"] else "tab:blue" for n in names]
    axes[1].barh(names, [report["ks"][n]["statistic"] for n in names], color=colours)
    axes[1].axvline(report["thresholds"]["ks_statistic"], color="k", ls=":")
    axes[1].set(title="KS statistic (red: drifted)", xlim=(0, 1))
    mix = report["verdicts"]
    positions = np.arange(len(mix["reference"]))
    axes[2].bar(positions - 0.2, list(mix["reference"].values()), 0.4, label="reference")
    axes[2].bar(positions + 0.2, list(mix["window"].values()), 0.4, label="served")
    axes[2].set_xticks(positions, list(mix["reference"]))
    axes[2].set(title=f"Verdicts; out-of-domain {report['out_of_domain']['share']:.0%}", ylim=(0, 1))
    axes[2].legend()
    figure.suptitle(
        f"{report['model_name']} v{report['model_version']}: {report['status']} "
        f"({report['records']} served images, last {report['window']['hours']:g} h)"
    )
    return figure


def run(params: Params, now: datetime | None = None, xcom: Path | None = None) -> dict:
    """Run the drift monitor in the current workspace.

    Args:
        params: The validated params (``monitoring`` thresholds, ``mlflow`` names).
        now: End of the window (default: the current time).
        xcom: Where to write the DAG's decision (``drift``, ``status``, ``reason``, ``model_version``).

    Returns:
        The drift report written to reports/drift.json.
    """
    import mlflow

    settings = params.monitoring
    name = params.mlflow.model_name
    experiment = tracking.setup(params.mlflow)
    client = mlflow.MlflowClient()
    version, reference = champion_reference(client, name)
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=settings.window_hours)
    records, malformed, in_window, other_versions = read_records(records_dir(), start, end, version)
    if in_window - other_versions > len(records):
        log.info(
            "monitor: comparing a sample of %d of the %d records v%s served in the window",
            len(records),
            in_window - other_versions,
            version,
        )
    report = compare(reference, records, tuple(reference["bands"]), settings)
    report.update(
        model_name=name,
        model_version=version,
        window={"start": start.isoformat(), "end": end.isoformat(), "hours": settings.window_hours},
        other_versions=other_versions,
        malformed=malformed,
        # Every record of the window, all versions; above WINDOW_MAX the champion's are compared as a sample.
        served_in_window=in_window,
        # What a retraining this report triggers trains on: the pipeline reads the same params.yaml.
        retrain_with_feedback=params.data.feedback == "include",
    )
    if malformed:
        log.warning("monitor: %d malformed record lines skipped in %s", malformed, records_dir())
    write_json(DRIFT_FILE, report)
    save_figure(plot_drift(reference, records, report), DRIFT_FIGURE)
    with tracking.stage_run("monitor", experiment.experiment_id) as mlrun:
        mlflow.set_tags(
            {
                "deepguard.stage": "monitor",
                "model_name": name,
                "model_version": version,
                "drift": report["status"],
            }
        )
        mlflow.log_metrics(
            {
                "psi": report["psi"],
                "out_of_domain_share": report["out_of_domain"]["share"],
                "records": report["records"],
                **{f"ks_{stat}": result["statistic"] for stat, result in report["ks"].items()},
            }
        )
        mlflow.log_artifact(str(DRIFT_FILE), "drift")
        mlflow.log_artifact(str(DRIFT_FIGURE), "drift")
    latest = environment().monitoring_dir / DRIFT_LATEST
    newer = published_window_end(latest)
    checked = client.get_model_version(name, version).tags.get("drift_checked_at")
    if not _later(checked, end):
        client.set_model_version_tag(name, version, "drift_status", report["status"])
        client.set_model_version_tag(name, version, "drift_checked_at", end.isoformat(timespec="seconds"))
        client.set_model_version_tag(name, version, "drift_run_id", mlrun.info.run_id)
    # The decision and the alert go out last, once the report is in MLflow and the version tagged: with MLflow
    # down the stage stops above, so no retraining is triggered (no XCom) and the predictor keeps exporting
    # the previous summary, instead of an alert saying that a drift was found and a retraining started.
    reason = "; ".join(report["reasons"]) or report["status"]
    if xcom is not None:
        write_json(
            xcom,
            {
                "drift": report["drift"],
                "status": report["status"],
                "reason": reason,
                "model_version": version,
            },
        )
    # Beside the records, where the predictor (same volume in a cluster) picks it up for Prometheus; a run
    # of an earlier window (a cleared or late DAG run) leaves the newer summary and the tags as they are.
    if newer is not None and newer > end:
        log.info(
            "monitor: a report of a later window (ending %s) is already published; this one (ending %s) is "
            "in MLflow run %s only",
            newer.isoformat(timespec="seconds"),
            end.isoformat(timespec="seconds"),
            mlrun.info.run_id,
        )
    else:
        write_json(latest, latest_summary(report))
    if report["status"] == INSUFFICIENT:
        # No PSI or KS here: over a handful of images they read several times their thresholds and mean
        # nothing (core.drift.latest_summary leaves the PSI out of the alert for the same reason).
        log.info(
            "monitor done: %s v%s insufficient_data: %d served images of v%s in the last %g h, fewer than "
            "monitoring.min_records (%d): drift not judged%s",
            name,
            version,
            report["records"],
            version,
            settings.window_hours,
            settings.min_records,
            # The predictor records the version it serves: after a deploy the previous one's records are
            # expected; long after it, the champion is not what users get (a deploy failed or rolled back).
            f"; {other_versions} records of the window are of another version than the champion v{version}: "
            "a recent deploy, or the predictor serves another version (deepguard_model_info on its /metrics)"
            if other_versions
            # Nothing at all: nobody used it, or the predictor records where this pod does not look.
            else f"; not one record of the window in {records_dir()}: unused, or the predictor records "
            "elsewhere (in a cluster, predictor.monitoring.claimName: docs/monitoring.md)"
            if not in_window
            else "",
        )
    else:
        ks_max = max(report["ks"].items(), key=lambda item: item[1]["statistic"])
        log.info(
            "monitor done: %s v%s %s over %d served images (PSI %.3f, max KS %s %.3f, "
            "out-of-domain %.1f%%)%s",
            name,
            version,
            report["status"],
            report["records"],
            report["psi"],
            ks_max[0],
            ks_max[1]["statistic"],
            100 * report["out_of_domain"]["share"],
            f": {reason}" if report["drift"] else "",
        )
    if report["drift"] and not report["retrain_with_feedback"]:
        log.warning(
            "monitor: the retraining this drift triggers trains on the same data as the champion "
            "(data.feedback: exclude); to learn from the new traffic, accept user feedback and set "
            "data.feedback: include"
        )
    return report


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params, now=args.now, xcom=args.xcom.resolve() if args.xcom else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.monitor``."""
    parser = stage_parser("monitor", __doc__.splitlines()[0])
    parser.add_argument(
        "--now", type=iso_time, default=None, help="end of the window, ISO-8601 (default: now)"
    )
    parser.add_argument("--xcom", type=Path, default=None, help="also write the decision as JSON here")
    return run_stage("monitor", _main, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
