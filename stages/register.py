"""Stage 6, register: log the model to MLflow, register a version, alias it challenger, gate champion.

The challenger becomes ``champion`` only when it beats the current champion on the same test data by the gate
in params (``promotion.metric`` and ``promotion.min_improvement``) and its mean over the robustness report's
degradations is not worse than the champion's by more than ``promotion.max_robustness_drop``; the first model
becomes champion. A worse model stays registered and is not promoted; the log and
``reports/registration.json`` say why. A model trained on synthetic data never replaces a champion trained on
real data. The champion's own model file (same ``model_sha256`` tag) evaluated again with another threshold or
bands replaces it without the gate: the same weights, with the new settings.

Every version ends with a ``promotion`` tag: ``champion``, ``rejected``, ``superseded`` (it was champion until
a better one came) or ``abandoned`` (its registration was killed and never resumed). A version still without
one was created by an attempt that died before the gate ran: rerunning register on the same training run
completes that version instead of registering a duplicate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core import tracking
from core.atomic import read_json, write_json
from core.cli import run_stage, stage_parser
from core.config import Params
from core.labels import band_edge
from core.metrics import classification_metrics
from core.modelstore import (
    ModelMetadata,
    download_model,
    load_keras,
    load_model_dir,
    predict_fake_probability,
)
from core.names import CHALLENGER, CHAMPION, PINNED_TAG, PROMOTION_TAG, SUPERSEDED
from core.pipeline import (
    DATA_REPORT,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_FILE,
    PROCESSED_DIR,
    REFERENCE_ARTIFACT,
    REFERENCE_FILE,
    REGISTRATION_FILE,
    ROBUSTNESS_FILE,
    SPLIT_SUMMARY,
)
from core.settings import settings
from core.tracking import load_run_id
from stages import model_card, robustness
from stages.shards import load_split

if TYPE_CHECKING:  # MLflow is imported lazily, where it is used
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature

log = logging.getLogger(__name__)

PROMOTION = PROMOTION_TAG  # the version tag every registration ends with
GATE = "gate_decision"  # the gate's decision, recorded when the version is created so a resumed run reuses it
ABANDONED = "abandoned"
TIE_TOLERANCE = 1e-9  # differences below this are float noise, not an improvement
# What evaluate chooses for a model without changing it: the lineage tags a re-evaluation may change.
EVALUATION_TAGS = ("threshold", "real_below", "fake_above")


@dataclass(frozen=True)
class GateDecision:
    """The outcome of comparing a challenger with the champion."""

    promote: bool
    reason: str
    metric: str
    challenger_value: float | None  # None: the metric has no value (null in metrics.json)
    champion_value: float | None
    champion_version: str | None
    # The robustness check (defaults: decisions recorded before it existed still load on a resumed run).
    degraded_metric: str | None = None
    challenger_degraded: float | None = None
    champion_degraded: float | None = None


def edge_tag(edge: float) -> str:
    """A band edge as a version tag: six places, or ``none`` for an empty band (core.labels.band_edge)."""
    shown = band_edge(edge)
    return "none" if shown is None else f"{shown:.6f}"


def degraded_metric(metric: str) -> str:
    """The degraded-mean metric the robustness check compares: ``metric`` itself when the robustness report
    has it (accuracy, roc_auc), else accuracy (the report has no precision, recall or F1)."""
    return metric if metric in robustness.MEAN_METRICS else "accuracy"


def decide(
    metric: str,
    challenger: float | None,
    champion: float | None,
    min_improvement: float,
    champion_version: str | None,
    *,
    challenger_degraded: float | None = None,
    champion_degraded: float | None = None,
    max_robustness_drop: float = float("inf"),
    new_settings_for_champion: str | None = None,
    synthetic_over_real: bool = False,
    pinned: str | None = None,
) -> GateDecision:
    """Apply the gate: promote the first model, or one that beats the champion by at least the minimum
    without losing more than ``max_robustness_drop`` of the champion's degraded-mean metric.

    ``min_improvement`` 0 still requires a strictly better value: a tie keeps the current champion. The
    robustness check is skipped (and the reason says so) when either degraded mean is unknown, e.g. for a
    champion registered before robustness reports existed. ``new_settings_for_champion`` names what differs
    when the challenger is the champion's own model file evaluated again with other settings (a new threshold
    or bands): the same weights, so there is nothing to compare, and it replaces the champion.
    ``synthetic_over_real``: the challenger was trained on synthetic data and the champion on real data; it is
    never promoted, whatever its scores on its own (synthetic) test split. A metric with no value (None)
    on either side promotes nothing: there is nothing to compare. ``pinned``: the registered model's
    ``champion_pinned`` tag; while it is set nothing replaces the champion (an operator pinned it).
    """
    robust = degraded_metric(metric)
    if champion_version is None:
        reason = "no champion yet: the first model becomes champion"
        return GateDecision(True, reason, metric, challenger, None, None, robust, challenger_degraded, None)
    if pinned is not None:
        reason = (
            f"champion v{champion_version} is pinned (registered model tag {PINNED_TAG}: {pinned}); "
            "nothing replaces it until `python -m deploy --unpin`"
        )
        return GateDecision(False, reason, metric, challenger, champion, champion_version, robust)
    if synthetic_over_real:
        reason = (
            f"trained on synthetic data (see the data report's source): it never replaces champion "
            f"v{champion_version}, trained on real data"
        )
        return GateDecision(False, reason, metric, challenger, champion, champion_version, robust)
    if new_settings_for_champion:
        reason = (
            f"the champion v{champion_version}'s own model file (same sha256) evaluated again with other "
            f"settings ({new_settings_for_champion}): the same weights, so it replaces v{champion_version}"
        )
        return GateDecision(
            True, reason, metric, challenger, champion, champion_version, robust, challenger_degraded, None
        )
    if challenger is None or champion is None:
        # No value (ROC-AUC of a test split with one class; null in metrics.json): nothing to compare.
        which = "the challenger" if challenger is None else f"champion v{champion_version}"
        reason = f"test {metric} has no value for {which} (one class in the test split?): the champion stays"
        return GateDecision(False, reason, metric, challenger, champion, champion_version, robust)
    gain = challenger - champion
    # The minimum is met within float noise: 0.9980 - 0.9965 is 0.0014999999999999458 in binary floats.
    promote = gain > TIE_TOLERANCE and gain >= min_improvement - TIE_TOLERANCE
    if not promote:
        reason = (
            f"test {metric} {challenger:.5f} vs champion v{champion_version} {champion:.5f} ({gain:+.5f}); "
            f"the gate needs an improvement > 0 and >= {min_improvement}"
        )
    else:
        reason = (
            f"test {metric} {challenger:.5f} beats champion v{champion_version} {champion:.5f} by {gain:+.5f}"
        )
        if challenger_degraded is None or champion_degraded is None:
            reason += f"; degraded-mean {robust} not compared (unknown for the champion or the challenger)"
        else:
            drop = champion_degraded - challenger_degraded
            promote = drop <= max_robustness_drop + TIE_TOLERANCE
            reason += (
                f"; {'' if promote else 'but '}degraded-mean {robust} {challenger_degraded:.5f} vs champion "
                f"{champion_degraded:.5f} ({-drop:+.5f}) "
                + ("is within" if promote else "drops more than")
                + f" promotion.max_robustness_drop {max_robustness_drop}"
            )
    return GateDecision(
        promote,
        reason,
        metric,
        challenger,
        champion,
        champion_version,
        robust,
        challenger_degraded,
        champion_degraded,
    )


@dataclass(frozen=True)
class ChampionScore:
    """What the gate compares of the champion: its test metric and its degraded mean (None: unknown)."""

    value: float | None
    degraded: float | None
    version: str | None
    tags: dict[str, str] = field(default_factory=dict)  # the champion version's tags (lineage, settings)
    pinned: str | None = None  # the registered model's champion_pinned tag: the gate keeps the champion


def _champion_score(
    client, name: str, metric: str, test_hash: str, robustness_sample: int | None
) -> ChampionScore:
    """The champion's test ``metric`` and degraded-mean metric on the current test data: its tags when the
    test set is the same, else re-measured by downloading the champion and scoring the current test split
    (the robustness report on the same sample as the challenger's)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        pinned = client.get_registered_model(name).tags.get(PINNED_TAG)
    except MlflowException as exc:  # no champion, unless the registry failed: that would promote unopposed
        tracking.raise_unless_refused(exc, f"reading the {CHAMPION} of model {name!r}")
        return ChampionScore(None, None, None)
    tag = champion.tags.get(f"test_{metric}")
    robust = champion.tags.get(f"degraded_mean_{degraded_metric(metric)}")
    # Its degraded mean is comparable when measured on the same draw: same test split, same sample size.
    same_sample = champion.tags.get("robustness_sample", str(robustness_sample)) == str(robustness_sample)
    if champion.tags.get("test_hash") == test_hash and tag is not None and same_sample:
        # A champion registered before robustness reports has no degraded-mean tag: the check is skipped.
        degraded = None if robust is None else float(robust)
        return ChampionScore(float(tag), degraded, str(champion.version), dict(champion.tags), pinned)
    log.info(
        "champion v%s was measured on other test data or sample: re-evaluating it on this test split",
        champion.version,
    )
    model, metadata = load_model_dir(download_model(f"models:/{name}/{champion.version}"))
    test_x, test_y = load_split(PROCESSED_DIR, "test")
    measured = classification_metrics(
        np.asarray(test_y), predict_fake_probability(model, test_x), metadata.threshold
    )
    chosen = robustness.sample_indices(np.asarray(test_y), robustness_sample)
    report = robustness.robustness_report(
        model, np.asarray(test_x[chosen]), np.asarray(test_y)[chosen], metadata.threshold
    )
    value = measured[metric]  # None: no value (ROC-AUC of a one-class test split); decide keeps the champion
    return ChampionScore(
        None if value is None else float(value),
        report["degraded_mean"][degraded_metric(metric)],
        str(champion.version),
        dict(champion.tags),
        pinned,
    )


def _settings_changed(champion_tags: dict[str, str], lineage: dict[str, str]) -> str | None:
    """What evaluate chose differently for the champion's own model file, e.g. ``threshold 0.416000 ->
    0.420000``; None when the challenger's model file is another one (or the champion's is unknown: registered
    before the ``model_sha256`` tag) or nothing changed."""
    if champion_tags.get("model_sha256") != lineage["model_sha256"]:
        return None
    changed = [
        f"{key} {champion_tags.get(key)} -> {lineage[key]}"
        for key in EVALUATION_TAGS
        if champion_tags.get(key) != lineage[key]
    ]
    return ", ".join(changed) or None


def _resume_unfinished(client: MlflowClient, name: str, training_run: str) -> ModelVersion | None:
    """Find the version an interrupted register of this model created but never tagged; settle the others.

    The model is named by its training run (``training_run_id`` tag), which stays the same however often
    register reruns. Any other version without a ``promotion`` tag whose registering run is no longer RUNNING
    was abandoned by a killed registration: it is tagged ``abandoned`` so that no version stays untagged. One
    whose run is still RUNNING may be another workspace's registration in progress, and is left alone.

    Returns:
        The version to complete, or None when this run has none unfinished.
    """
    resumed = None
    for version in client.search_model_versions(f"name = '{name}'"):
        if PROMOTION in version.tags:
            continue
        if version.tags.get("training_run_id") == training_run and GATE in version.tags:
            resumed = version
            log.warning(
                "v%s was registered by an interrupted attempt of this run: completing it", version.version
            )
        elif not _running(client, version.run_id):
            reason = "its registration was interrupted before the gate and never resumed"
            client.set_model_version_tag(name, version.version, "promotion_reason", reason)
            client.set_model_version_tag(name, version.version, PROMOTION, ABANDONED)
            log.warning("v%s: %s; tagged %s", version.version, reason, ABANDONED)
    return resumed


def _registered_already(client: MlflowClient, name: str, lineage: dict[str, str]) -> ModelVersion | None:
    """The completed version registered from this very model and evaluation, when register runs again.

    A cleared Airflow task (or ``python -m stages.register`` typed twice) must not register the same model
    again: the copy would lose the gate to its original and move the challenger alias to a duplicate. Same
    lineage means same training run, model file, data, params, code and evaluation results; an evaluation
    rerun with other settings changes the lineage and registers anew, as it should.
    """
    done = [
        version
        for version in client.search_model_versions(f"name = '{name}'")
        if version.tags.get(PROMOTION) not in (None, ABANDONED)
        and GATE in version.tags
        and all(version.tags.get(key) == value for key, value in lineage.items())
    ]
    return max(done, key=lambda version: int(version.version), default=None)


def _running(client, run_id: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return bool(run_id) and client.get_run(run_id).info.status == "RUNNING"
    except MlflowException:
        return False  # the run was deleted: nobody is registering through it


def _settle_promotion_tags(client, name: str) -> None:
    """Tag ``superseded`` every version still tagged champion that no longer holds the champion alias."""
    from mlflow.exceptions import MlflowException

    try:
        champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return  # nobody holds the alias (removed by hand): no version can be said to have lost it to another
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(PROMOTION) == CHAMPION and str(version.version) != champion:
            reason = f"was champion until v{champion} replaced it"
            client.set_model_version_tag(name, version.version, "promotion_reason", reason)
            client.set_model_version_tag(name, version.version, PROMOTION, SUPERSEDED)
            log.info("v%s lost the champion alias to v%s: tagged superseded", version.version, champion)


def _signature(image_size: int) -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "fake_probability")]),
    )


def run(params: Params) -> dict:
    """Run register in the current workspace.

    Returns:
        The registration record written to reports/registration.json.
    """
    import keras
    import mlflow

    metrics = read_json(METRICS_FILE)
    data_report = read_json(DATA_REPORT)
    summary = read_json(SPLIT_SUMMARY)
    name = params.mlflow.model_name
    metadata = ModelMetadata(
        threshold=metrics["threshold"],
        image_size=params.data.image_size,
        architecture=params.model.architecture,
        data_source=data_report["source"]["kind"],
        synthetic_data=bool(data_report["synthetic"]),
        real_below=metrics["real_below"],
        fake_above=metrics["fake_above"],
        temperature=metrics["calibration"]["temperature"],
        calibration_bias=metrics["calibration"]["bias"],
    )
    experiment = tracking.setup(params.mlflow)
    client = mlflow.MlflowClient()
    robust = read_json(ROBUSTNESS_FILE)["degraded_mean"]
    champion = _champion_score(
        client, name, params.promotion.metric, summary["test_hash"], params.evaluation.robustness_sample
    )
    training_run = load_run_id()
    with open(MODEL_DIR / MODEL_FILE, "rb") as model_file:
        model_sha256 = hashlib.file_digest(model_file, "sha256").hexdigest()
    lineage = {
        "training_run_id": training_run,
        "model_sha256": model_sha256,  # the model file as train wrote it: evaluate never changes it
        "git_commit": tracking.git_commit(),
        "data_hash": data_report["data_hash"],
        "test_hash": summary["test_hash"],
        "params_hash": params.digest(),
        "architecture": params.model.architecture,
        "data_source": metadata.data_source,
        "synthetic_data": str(metadata.synthetic_data).lower(),
        "threshold": f"{metrics['threshold']:.6f}",
        "real_below": edge_tag(metadata.real_below),
        "fake_above": edge_tag(metadata.fake_above),
        "temperature": f"{metadata.temperature:.6f}",
        "calibration_bias": f"{metadata.calibration_bias:.6f}",
        **{f"test_{k}": repr(v) for k, v in metrics["test"].items() if isinstance(v, float)},
        # The degraded means travel with the version, so that a later challenger is gated against them.
        **{f"degraded_mean_{k}": repr(v) for k, v in robust.items() if v is not None},
        "robustness_sample": str(params.evaluation.robustness_sample),
        **({tracking.AIRFLOW_RUN_TAG: settings().airflow_run_id} if settings().airflow_run_id else {}),
    }
    decision = decide(
        params.promotion.metric,
        metrics["test"][params.promotion.metric],
        champion.value,
        params.promotion.min_improvement,
        champion.version,
        challenger_degraded=robust[degraded_metric(params.promotion.metric)],
        champion_degraded=champion.degraded,
        max_robustness_drop=params.promotion.max_robustness_drop,
        new_settings_for_champion=_settings_changed(champion.tags, lineage),
        synthetic_over_real=metadata.synthetic_data and champion.tags.get("synthetic_data") == "false",
        pinned=champion.pinned,
    )
    done = _registered_already(client, name, lineage)
    if done is not None:
        decision = GateDecision(**json.loads(done.tags[GATE]))
        log.info(
            "register done: %s v%s was registered from this model and evaluation already (%s): nothing to do",
            name,
            done.version,
            done.tags[PROMOTION],
        )
        # The champion now: not this version's any more when an operator rolled back since (deploy --pin).
        return _record(name, str(done.version), done.run_id, decision, lineage, champion.version)
    with tracking.stage_run("register", experiment.experiment_id, training_run) as mlrun:
        unfinished = _resume_unfinished(client, name, training_run)
        if unfinished is not None:
            # The champion may already be this version: the gate's verdict is the one recorded at creation.
            version, decision = str(unfinished.version), GateDecision(**json.loads(unfinished.tags[GATE]))
        else:
            requirements = [f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
            info = mlflow.keras.log_model(
                load_keras(MODEL_DIR / MODEL_FILE),
                name="model",
                signature=_signature(params.data.image_size),
                metadata=metadata.to_dict(),
                pip_requirements=requirements,
            )
            # Created with its lineage tags in one call; from here to the promotion tag every step is
            # idempotent, so a rerun after a kill anywhere below resumes this version.
            tags = {**lineage, GATE: json.dumps(asdict(decision))}
            version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
        # The drift monitor's reference, beside the model in the version's run (idempotent: same file).
        reference = {**read_json(REFERENCE_FILE), "bands": list(metadata.bands), "model_version": version}
        client.log_dict(client.get_model_version(name, version).run_id, reference, REFERENCE_ARTIFACT)
        # Before the aliases: a served version always has its card (stages/model_card.py).
        model_card.publish(client, params, metadata, lineage, version, mlrun.info.run_id)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promotion_reason", decision.reason)
        client.set_model_version_tag(name, version, PROMOTION, CHAMPION if decision.promote else "rejected")
        _settle_promotion_tags(client, name)
        mlflow.set_tags({"registered_version": version, "promoted": str(decision.promote).lower()})
    record = _record(name, str(version), mlrun.info.run_id, decision, lineage)
    if decision.promote:
        log.info("register done: %s v%s is the new champion (%s)", name, version, decision.reason)
    else:
        log.warning(
            "register done: %s v%s registered as challenger, NOT promoted: %s", name, version, decision.reason
        )
    return record


def _record(
    name: str,
    version: str,
    run_id: str,
    decision: GateDecision,
    lineage: dict[str, str],
    champion_version: str | None = None,
) -> dict:
    """Write reports/registration.json for ``version``, registered by the MLflow run ``run_id``; the champion
    is the one the gate left, unless ``champion_version`` says which version holds the alias now."""
    if champion_version is None:
        champion_version = version if decision.promote else decision.champion_version
    record = {
        "model_name": name,
        "version": version,
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version}",
        "promoted": decision.promote,
        "champion_version": champion_version,
        "decision": asdict(decision),
        "lineage": lineage,
    }
    write_json(REGISTRATION_FILE, record)
    return record


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.register``."""
    return run_stage("register", _main, stage_parser("register", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
