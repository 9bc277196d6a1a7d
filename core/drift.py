"""Drift statistics: the champion's reference, and how a window of served records is compared with it.

The reference is built by evaluate from the test split (the images the champion was measured on: their
core.imagestats statistics and P(FAKE) scores) and logged by register beside the registered model; the
monitor (stages.monitor) compares served records with it. Pure functions: no I/O, no MLflow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from core.config import MonitoringParams
from core.imagestats import STAT_NAMES, image_statistics
from core.labels import VERDICTS, verdicts

# At most this many reference images (a seeded sample): KS and PSI need no more; the file stays small.
REFERENCE_MAX = 10_000
# At most this many served records of a window are compared (a seeded uniform sample): KS and PSI need no
# more, and parsed records take ~2 KB each (300,000 took 0.7 GB), so a window of the predictors' full 1 GiB of
# records (~3 million) would not fit the monitor pod's 2 GiB, while 50,000 take ~0.1 GB.
WINDOW_MAX = 50_000
REFERENCE_DECIMALS = 6
PSI_BINS = np.linspace(0.0, 1.0, 11)  # ten equal-width bins of P(FAKE)
PSI_FLOOR = 1e-4  # share given to an empty bin, so that the log stays finite
OK, DRIFT, INSUFFICIENT = "ok", "drift", "insufficient_data"


def build_reference(images: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict:
    """The reference of a model: statistics and scores of (a seeded sample of) its test images.

    Args:
        images: uint8 ``(N, H, W, 3)`` at the model's size.
        scores: The model's P(FAKE) for each image.
        seed: Sampling seed (used only above :data:`REFERENCE_MAX` images).

    Returns:
        ``{"count", "image_size", "scores": [...], "statistics": {STAT_NAMES: [...]}}`` (JSON-ready).
    """
    if len(images) != len(scores):
        raise ValueError(f"{len(images)} images but {len(scores)} scores")
    keep = np.arange(len(images))
    if len(keep) > REFERENCE_MAX:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), REFERENCE_MAX, replace=False))
    chosen = np.asarray(images[keep])
    statistics = image_statistics(chosen)
    return {
        "count": len(keep),
        "image_size": int(chosen.shape[1]),
        "scores": np.round(np.asarray(scores)[keep].astype(float), REFERENCE_DECIMALS).tolist(),
        "statistics": {name: np.round(statistics[name], REFERENCE_DECIMALS).tolist() for name in STAT_NAMES},
    }


def population_stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two P(FAKE) samples over ten equal-width bins: sum of (c - r) * ln(c / r) over bin shares.

    Under 0.1 the distributions are usually called stable, 0.1-0.2 a moderate shift, above 0.2 a large one.
    """
    ref = np.histogram(np.clip(reference, 0, 1), PSI_BINS)[0] / max(len(reference), 1)
    cur = np.histogram(np.clip(current, 0, 1), PSI_BINS)[0] / max(len(current), 1)
    ref, cur = np.maximum(ref, PSI_FLOOR), np.maximum(cur, PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def out_of_domain(record: Mapping, image_size: int, formats: Sequence[str]) -> bool:
    """An upload unlike the training data: not ``image_size`` square, or a format outside ``formats``."""
    return (
        record.get("width") != image_size
        or record.get("height") != image_size
        or str(record.get("format", "")).upper() not in {f.upper() for f in formats}
    )


def _shares(labels: Sequence[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {name: counts[name] / max(len(labels), 1) for name in VERDICTS}


def compare(
    reference: Mapping,
    records: Sequence[Mapping],
    bands: tuple[float, float],
    params: MonitoringParams,
) -> dict:
    """Compare served records with the reference and decide whether the traffic has drifted.

    Args:
        reference: From :func:`build_reference`.
        records: Served records (``fake_probability``, ``verdict``, ``width``, ``height``, ``format`` and
            every ``STAT_NAMES`` key), already limited to the window and the champion's version.
        bands: The champion's ``(real_below, fake_above)``: the reference's verdict mix uses them.
        params: Thresholds (params.yaml ``monitoring``).

    Returns:
        The report: ``status`` (ok | drift | insufficient_data), ``reasons`` (why drift, one line each),
        ``records``, ``psi``, ``ks`` per statistic, ``verdicts`` and ``out_of_domain``.
    """
    ref_scores = np.asarray(reference["scores"], dtype=float)
    scores = np.asarray([float(r["fake_probability"]) for r in records], dtype=float)
    ood = sum(out_of_domain(r, reference["image_size"], params.in_domain_formats) for r in records)
    ood_share = ood / len(records) if records else 0.0
    # Bonferroni: any one of the statistics crossing ks_pvalue by chance must stay as rare as ks_pvalue.
    alpha = params.ks_pvalue / len(STAT_NAMES)
    ks: dict[str, dict] = {}
    for name in STAT_NAMES:
        values = np.asarray([float(r[name]) for r in records], dtype=float)
        if len(values) == 0:
            ks[name] = {"statistic": 0.0, "pvalue": 1.0, "drifted": False}
            continue
        test = stats.ks_2samp(np.asarray(reference["statistics"][name], dtype=float), values)
        ks[name] = {
            "statistic": float(test.statistic),
            "pvalue": float(test.pvalue),
            "drifted": bool(test.pvalue < alpha and test.statistic > params.ks_statistic),
        }
    psi = population_stability_index(ref_scores, scores) if len(scores) else 0.0
    reasons = []
    if psi > params.psi_threshold:
        reasons.append(f"P(FAKE) distribution shifted: PSI {psi:.3f} > {params.psi_threshold}")
    for name, result in ks.items():
        if result["drifted"]:
            reasons.append(
                f"{name} shifted: KS {result['statistic']:.3f} > {params.ks_statistic}, "
                f"p {result['pvalue']:.2g} < {alpha:.2g}"
            )
    if ood_share > params.ood_share:
        reasons.append(f"out-of-domain inputs: {ood_share:.1%} > {params.ood_share:.0%}")
    status = INSUFFICIENT if len(records) < params.min_records else DRIFT if reasons else OK
    return {
        "status": status,
        "drift": status == DRIFT,
        "reasons": reasons if status != INSUFFICIENT else [],
        "records": len(records),
        "reference_count": int(reference["count"]),
        "psi": psi,
        "ks": ks,
        "verdicts": {
            "reference": _shares(verdicts(ref_scores, *bands)),
            "window": _shares([str(r.get("verdict")) for r in records]),
        },
        "out_of_domain": {"count": ood, "share": ood_share},
        "thresholds": params.model_dump(exclude={"schedule"}),
    }


def latest_summary(report: dict) -> dict:
    """What the predictor exports of a drift report: status, drifted or not, the score PSI, the version.

    Below ``min_records`` the PSI is left out (None: no ``deepguard_drift_score_psi``): over a handful of
    images most bins are empty and PSI reads several times the threshold (5.6 measured over 3 in-domain
    images), which the dashboard would show as a drift the report itself declines to call.
    """
    return {
        "status": report["status"],
        "drift": report["status"] == DRIFT,
        "psi": report.get("psi") if report["status"] != INSUFFICIENT else None,
        "model_version": report.get("model_version"),
        "ts": report.get("window", {}).get("end"),
    }
