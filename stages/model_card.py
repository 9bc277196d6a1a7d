"""The model card of a registered version: what it is for, what it learned from, how well, where it fails.

register builds it from the pipeline's reports (data report, processed-data summary, training summary, test
metrics, the robustness report when evaluate wrote one) and the version's lineage, writes
``reports/model_card.json`` and ``reports/model_card.md``, logs both as artifacts of the version's run and
puts ``model_card.json`` inside the logged MLflow model folder, so the predictor serves it (``/mnt/models``).
Reports written by newer or older stages are read for what they hold: a missing key is left out of the card,
never an error.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import atomic_path, read_json, write_json
from core.config import Params
from core.degrade import DEGRADATIONS
from core.labels import band_edge_text
from core.metrics import format_metric
from core.modelstore import MODEL_CARD_FILE, ModelMetadata
from core.pipeline import (
    DATA_REPORT,
    METRICS_FILE,
    MODEL_CARD_JSON,
    MODEL_CARD_MARKDOWN,
    ROBUSTNESS_FILE,
    SPLIT_SUMMARY,
    TRAINING_REPORT,
)

if TYPE_CHECKING:  # MLflow is imported lazily, where it is used
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# Test metrics shown in this order, with the names a reader knows; other numeric keys follow as they are.
METRIC_NAMES = {
    "accuracy": "accuracy",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "precision": "precision (FAKE)",
    "recall": "recall (FAKE)",
    "f1": "F1 (FAKE)",
    "brier": "Brier score",
    "ece": "expected calibration error",
    "count": "test images",
}
INTENDED_USE = (
    "Flag whether a small image (CIFAKE-style, 32x32 pixels) looks AI-generated, as a triage aid: the "
    "verdict is REAL, FAKE or UNCERTAIN with P(FAKE), and a person makes the decision."
)
OUT_OF_SCOPE = [
    "Deciding on its own whether a photo is authentic (news, legal, insurance, moderation decisions).",
    "Large photos: they are shrunk to 32x32, which removes most of what the model looks at.",
    "Images from other generators (GANs, newer diffusion models, edited photos): it learned one family.",
    "Screenshots, drawings, documents, faces or any content unlike CIFAR-10's ten object classes.",
]


def _total(value: Any) -> int:
    """Sum the counts of a (possibly nested) ``{name: count}`` mapping of the data report."""
    if isinstance(value, Mapping):
        return sum(_total(v) for v in value.values())
    return int(value) if isinstance(value, int | float) else 0


def _counts(counts: Mapping) -> dict[str, str]:
    """``{"train": {"REAL": n, "FAKE": m}}`` -> ``{"train images": "n+m (REAL n, FAKE m)"}``."""
    facts = {}
    for split, per_class in counts.items():
        if isinstance(per_class, Mapping):
            detail = ", ".join(f"{cls} {n}" for cls, n in sorted(per_class.items()))
            facts[f"{split} images"] = f"{_total(per_class)} ({detail})"
    return facts


def feedback_summary(counts: Mapping | None) -> str:
    """The accepted user feedback the model trained on, of how many, and why the others were left out."""
    if counts is None:  # ingest's report holds None under data.feedback: exclude
        return "none (data.feedback: exclude)"
    left_out = ", ".join(
        f"{label} {counts.get(key, 0)}"
        for key, label in (
            ("rejected", "rejected"),
            ("duplicate", "duplicate"),
            ("test_in_train", "test image"),
            ("capped", "capped"),
        )
        if counts.get(key)
    )
    kept = f"{counts.get('kept', 0)} of {counts.get('seen', 0)} accepted images"
    return f"{kept} (left out: {left_out})" if left_out else kept


def _data_section(params: Params, data_report: Mapping, summary: Mapping) -> dict:
    source = data_report.get("source", {})
    kind = source.get("kind", "unknown")
    where = {"kaggle": params.data.kaggle_dataset, "synthetic": "generated offline (NOT real CIFAKE)"}
    facts = {
        "source": f"{kind}: {where.get(kind, Path(str(source.get('location', ''))).name or 'unknown')}",
        "synthetic data": str(bool(data_report.get("synthetic"))).lower(),
        **_counts(summary.get("counts", {})),
        "data hash (sha256)": str(data_report.get("data_hash", summary.get("data_hash", "unknown"))),
        "test split hash (sha256)": str(summary.get("test_hash", "unknown")),
        "files rejected": str(_total(data_report.get("rejected", {}))),
        "duplicates dropped (within a split)": str(_total(data_report.get("duplicates_within_split", {}))),
        "leaks dropped (test images also in train)": str(_total(data_report.get("test_in_train", {}))),
        "user feedback trained on": feedback_summary(data_report.get("feedback")),
    }
    text = (
        "CIFAKE: CIFAR-10 photos (REAL) and Stable Diffusion v1.4 images in their style (FAKE), 32x32 JPEG. "
        "Validation is held out of train, stratified by class; the threshold is chosen on validation only."
    )
    return {"heading": "Training data", "text": text, "facts": facts}


def _recipe_section(params: Params, lineage: Mapping, training: Mapping) -> dict:
    facts = {
        "architecture": params.model.architecture,
        "epochs": str(params.training.epochs),
        "batch size": str(params.training.batch_size),
        "learning rate": str(params.training.learning_rate),
        "weight decay": str(params.training.weight_decay),
        "augmentation": ", ".join(f"{k}={v}" for k, v in params.augmentation.model_dump().items()),
        "spectrum branch": str(params.model.spectrum_branch).lower(),
        "test-time flip": str(params.model.test_time_flip).lower(),
        "params hash (sha256 of the params, --set included)": str(
            lineage.get("params_hash", params.digest())
        ),
    }
    for key in ("epochs_run", "best_epoch", "parameters", "device", "train_seconds"):
        if key in training:
            facts[key.replace("_", " ")] = format_metric(training[key])
    return {"heading": "Training recipe", "facts": facts}


def _metrics_section(metadata: ModelMetadata, metrics: Mapping) -> dict:
    real_below, fake_above = metadata.bands
    facts = {
        "decision threshold": format_metric(metadata.threshold),
        "REAL at or below": band_edge_text(real_below),
        "FAKE at or above": band_edge_text(fake_above),
        "temperature (calibration)": format_metric(metadata.temperature),
        "logit offset (calibration)": format_metric(metadata.calibration_bias),
    }
    if "threshold_metric" in metrics:
        facts["threshold chosen for"] = f"best validation {metrics['threshold_metric']}"
    test = metrics.get("test", {})
    for key in [*METRIC_NAMES, *sorted(set(test) - set(METRIC_NAMES))]:
        if isinstance(test.get(key), int | float) and not isinstance(test.get(key), bool):
            facts[METRIC_NAMES.get(key, key.replace("_", " "))] = format_metric(test[key])
    facts.update(_band_facts(metrics))
    text = (
        "On the held-out CIFAKE test split, at the threshold chosen on validation. Between the two band "
        "edges the verdict is UNCERTAIN."
    )
    return {"heading": "Test metrics", "text": text, "facts": facts}


def _band_facts(metrics: Mapping) -> dict[str, str]:
    """How the REAL and FAKE verdicts did on test, beside the precision their edges were chosen for.

    The edges reach ``band_precision`` on validation, which can rest on a handful of images; a reader judging
    a FAKE verdict needs the share of test images in that band that were FAKE, and how many there were.
    """
    bands = metrics.get("bands")
    test = bands.get("test") if isinstance(bands, Mapping) else None
    if not isinstance(test, Mapping) or not isinstance(test.get("count"), int):
        return {}
    val = bands.get("val") if isinstance(bands.get("val"), Mapping) else {}
    target = metrics.get("band_precision")
    facts = {}
    for name, key in (("REAL", "real"), ("FAKE", "fake")):
        coverage, precision = test.get(f"{key}_coverage"), test.get(f"{key}_precision")
        if not isinstance(coverage, int | float):
            continue
        shown = round(coverage * test["count"])
        said = (
            "no image" if precision is None else f"{shown} images, {format_metric(precision)} of them {name}"
        )
        chosen = ""
        if isinstance(target, int | float) and isinstance(val.get("count"), int):
            on_val = round((val.get(f"{key}_coverage") or 0.0) * val["count"])
            chosen = f" (edge chosen for {format_metric(target)} on {on_val} validation images)"
        facts[f"{name} verdicts on test"] = said + chosen
    return facts


def _robustness_section(robustness: Mapping | None) -> dict:
    if not robustness or not isinstance(robustness.get("degradations"), Mapping):
        return {
            "heading": "Robustness",
            "text": "Not measured for this version (evaluate wrote no reports/robustness.json).",
        }
    facts = {}
    # reports/robustness.json is written with sorted keys (blur_0.6 first, clean in the middle): the card
    # lists clean first, then the degradations as core.degrade orders them, so each reads against clean.
    order = {name: index for index, name in enumerate(DEGRADATIONS)}
    rows = sorted(
        robustness["degradations"].items(), key=lambda item: (order.get(item[0], len(order)), item[0])
    )
    for name, row in rows:
        if isinstance(row, Mapping):
            parts = [f"{k} {format_metric(row[k])}" for k in ("accuracy", "roc_auc", "flipped") if k in row]
            facts[name] = ", ".join(parts)
    mean = robustness.get("degraded_mean", {})
    if isinstance(mean, Mapping) and mean:
        facts["mean over degradations"] = ", ".join(f"{k} {format_metric(v)}" for k, v in mean.items())
    text = (
        "Test images re-saved as users' uploads are (JPEG recompression, resizing, blur, noise) and scored "
        "as the predictor scores them; 'flipped' is the share whose label changed."
    )
    return {"heading": "Robustness", "text": text, "facts": facts}


def _extra_sets_section(metrics: Mapping) -> dict | None:
    """``evaluation.extra_sets`` as reports/metrics.json scored them; None when there were none.

    Each set goes by the name the user gave it: its path is this machine's, and register, which writes the
    card, is not rerun when only a path changes.
    """
    scored = metrics.get("extra_sets")
    if not isinstance(scored, Mapping) or not scored:
        return None
    labels = {"accuracy": "accuracy", "roc_auc": "roc_auc", "fake_called_real": "fakes called REAL"}
    facts = {
        name: ", ".join(
            [f"{label} {format_metric(row[key])}" for key, label in labels.items() if key in row]
            + ([f"images {row['count']}"] if "count" in row else [])
        )
        for name, row in scored.items()
        if isinstance(row, Mapping)
    }
    text = (
        "Other images (evaluation.extra_sets: the user's own photos, other generators), decoded and resized "
        "as the predictor does uploads and scored at the same threshold as the test split."
    )
    return {"heading": "Extra evaluation sets", "text": text, "facts": facts}


def _limits_section(metadata: ModelMetadata, robustness: Mapping | None) -> dict:
    size = metadata.image_size
    limits = [
        f"It sees {size}x{size} pixels: any larger image is shrunk first, and the detail that shows "
        "generation is mostly lost. The predictor adds a note then and gives a verdict only for a score "
        "near 0 or 1, and none at all for an image resized more than 4x (a phone photo).",
        "It learned one generator family (Stable Diffusion v1.4 imitating CIFAR-10): other generators, "
        "edited photos and other subjects are outside what it was tested on.",
        "Blur, strong JPEG compression and enlargement change its scores; such uploads more often get "
        "UNCERTAIN, and some still get a wrong, confident verdict.",
        "P(FAKE) is calibrated on CIFAKE's validation images: a score for images like those, not a "
        "probability for yours.",
    ]
    if robustness and isinstance(robustness.get("degradations"), Mapping):
        rows = {
            name: row["accuracy"]
            for name, row in robustness["degradations"].items()
            if isinstance(row, Mapping) and isinstance(row.get("accuracy"), int | float)
        }
        worst = sorted(rows, key=rows.get)[:3]
        if worst:
            listed = ", ".join(f"{name} (accuracy {rows[name]:.2f})" for name in worst)
            limits.append(f"What degrades it most on the test split: {listed}.")
    if metadata.synthetic_data:
        limits.insert(0, "TRAINED ON SYNTHETIC DATA: a smoke-test model, useless for real images.")
    return {"heading": "Known limits", "list": limits}


def build_card(
    *,
    params: Params,
    metadata: ModelMetadata,
    lineage: Mapping[str, str],
    model_name: str,
    version: str,
    run_id: str,
    metrics: Mapping,
    data_report: Mapping,
    summary: Mapping,
    training: Mapping | None = None,
    robustness: Mapping | None = None,
) -> dict:
    """Build the model card of one registered version (pure: everything it says comes in as arguments).

    Args:
        params: The pipeline parameters the version was trained with.
        metadata: The serving metadata written into its MLmodel file (threshold, bands, temperature).
        lineage: register's lineage tags (git commit, training run, hashes).
        model_name: The registered model's name.
        version: The registered version.
        run_id: The MLflow run that registered it.
        metrics: reports/metrics.json.
        data_report: reports/data_report.json.
        summary: data/processed/summary.json (split counts and hashes).
        training: reports/training.json, when present.
        robustness: reports/robustness.json, when present.

    Returns:
        ``{"title", "model_name", "version", "sections": [{"heading", "text"?, "facts"?, "list"?}]}``.
    """
    lineage_facts = {
        "model": f"{model_name} version {version}",
        "git commit": str(lineage.get("git_commit", "unknown")),
        "training run": str(lineage.get("training_run_id", "unknown")),
        "registering run": run_id,
        "data hash": str(lineage.get("data_hash", "unknown")),
        "test split hash": str(lineage.get("test_hash", "unknown")),
        "params hash": str(lineage.get("params_hash", "unknown")),
        "model file hash": str(lineage.get("model_sha256", "unknown")),
    }
    if "airflow_run_id" in lineage:
        lineage_facts["Airflow run"] = str(lineage["airflow_run_id"])
    sections = [
        {"heading": "Intended use", "text": INTENDED_USE},
        {"heading": "Out-of-scope use", "list": list(OUT_OF_SCOPE)},
        _data_section(params, data_report, summary),
        _recipe_section(params, lineage, training or {}),
        _metrics_section(metadata, metrics),
        _robustness_section(robustness),
        *filter(None, [_extra_sets_section(metrics)]),
        _limits_section(metadata, robustness),
        {"heading": "Lineage", "facts": lineage_facts},
    ]
    return {
        "title": f"Model card: {model_name} v{version} ({metadata.architecture})",
        "model_name": model_name,
        "version": str(version),
        "sections": sections,
    }


def to_markdown(card: Mapping) -> str:
    """Render a card as Markdown: a heading per section, its text, its facts as a table, its list."""
    lines = [f"# {card['title']}", ""]
    for section in card["sections"]:
        lines += [f"## {section['heading']}", ""]
        if section.get("text"):
            lines += [section["text"], ""]
        if section.get("facts"):
            lines += ["| | |", "|---|---|"]
            lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in section["facts"].items()]
            lines.append("")
        if section.get("list"):
            lines += [f"- {item}" for item in section["list"]] + [""]
    return "\n".join(lines)


def read_optional(path: Path) -> dict | None:
    """A JSON report another stage may not have written (yet): its content, or None."""
    return read_json(path) if path.is_file() else None


def write_card(card: Mapping) -> tuple[Path, Path]:
    """Write ``reports/model_card.json`` and ``reports/model_card.md`` atomically; return both paths."""
    # In the card's order, as the Markdown shows it: /model renders this file's facts as they come, and
    # sorted keys put "Brier score" first and the decision threshold after the accuracy.
    write_json(MODEL_CARD_JSON, card, sort_keys=False)
    with atomic_path(MODEL_CARD_MARKDOWN) as tmp:
        tmp.write_text(to_markdown(card))
    return MODEL_CARD_JSON, MODEL_CARD_MARKDOWN


def publish(
    client: MlflowClient,
    params: Params,
    metadata: ModelMetadata,
    lineage: Mapping[str, str],
    version: str,
    run_id: str,
) -> dict:
    """Build the card of a just-registered version, write it, log it, and put it inside the model folder.

    Logged to the active (registering) run under ``model_card/``; ``model_card.json`` is also uploaded to the
    root of the version's model folder, which is what ``models:/<name>/<version>`` downloads.

    Args:
        client: The MLflow client of the registry.
        params: The pipeline parameters.
        metadata: The serving metadata logged with the model.
        lineage: The version's lineage tags.
        version: The registered version.
        run_id: The registering run (the active run).

    Returns:
        The card.
    """
    import mlflow

    name = params.mlflow.model_name
    card = build_card(
        params=params,
        metadata=metadata,
        lineage=lineage,
        model_name=name,
        version=version,
        run_id=run_id,
        metrics=read_json(METRICS_FILE),
        data_report=read_json(DATA_REPORT),
        summary=read_json(SPLIT_SUMMARY),
        training=read_optional(TRAINING_REPORT),
        robustness=read_optional(ROBUSTNESS_FILE),
    )
    card_json, card_md = write_card(card)
    mlflow.log_artifact(str(card_json), artifact_path="model_card")
    mlflow.log_artifact(str(card_md), artifact_path="model_card")
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # Where models:/<name>/<version> downloads from, whatever the artifact store (local, S3, DagsHub).
    model_folder = get_artifact_repository(client.get_model_version_download_uri(name, version))
    with tempfile.TemporaryDirectory(prefix="deepguard-card-") as tmp:
        # The file inside the model folder has the fixed name the predictor reads (core.modelstore).
        inside = Path(tmp) / MODEL_CARD_FILE
        write_json(inside, card, sort_keys=False)
        model_folder.log_artifact(str(inside))
    log.info("model card of %s v%s written to %s and logged with the model", name, version, card_md)
    return card
