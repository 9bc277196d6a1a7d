"""The model card (stages/model_card.py): built from whatever reports exist, and register publishes it."""

from __future__ import annotations

import json

import pytest

from core.config import load_params
from core.labels import EMPTY_FAKE_BAND, EMPTY_REAL_BAND
from core.modelstore import ModelMetadata, read_model_card
from stages.model_card import build_card, to_markdown

METADATA = ModelMetadata(
    threshold=0.48, image_size=32, architecture="DeepGuardCNN", data_source="local", synthetic_data=False
)
LINEAGE = {"git_commit": "abc123", "training_run_id": "run-1", "data_hash": "d" * 64, "params_hash": "p" * 64}
DATA_REPORT = {
    "source": {"kind": "local", "location": "/somewhere/cifake.zip"},
    "synthetic": False,
    "data_hash": "d" * 64,
    "rejected": {"corrupt": 2},
    "duplicates_within_split": {"train": {"REAL": 3, "FAKE": 1}},
    "test_in_train": {"test": {"FAKE": 5}},
}
SUMMARY = {
    "counts": {"train": {"REAL": 900, "FAKE": 900}, "test": {"REAL": 250, "FAKE": 250}},
    "test_hash": "t",
}
METRICS = {"threshold": 0.48, "test": {"accuracy": 0.91, "roc_auc": 0.97, "ece": 0.02, "count": 500}}
ROBUSTNESS = {
    "threshold": 0.48,
    "degradations": {
        "clean": {"accuracy": 0.91, "roc_auc": 0.97, "flipped": 0.0, "fake_called_real": 0.04, "count": 500},
        "blur_1.0": {
            "accuracy": 0.62,
            "roc_auc": 0.80,
            "flipped": 0.3,
            "fake_called_real": 0.5,
            "count": 500,
        },
        "jpeg_q50": {
            "accuracy": 0.75,
            "roc_auc": 0.88,
            "flipped": 0.2,
            "fake_called_real": 0.3,
            "count": 500,
        },
    },
    "degraded_mean": {"accuracy": 0.68, "roc_auc": 0.84},
}


def assert_card_shape(card: dict) -> None:
    """The contract: title, model_name, version, sections of heading and optional text/facts/list."""
    assert set(card) == {"title", "model_name", "version", "sections"}
    assert all(isinstance(card[key], str) for key in ("title", "model_name", "version"))
    for section in card["sections"]:
        assert isinstance(section["heading"], str)
        assert set(section) <= {"heading", "text", "facts", "list"}
        assert isinstance(section.get("text", ""), str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in section.get("facts", {}).items())
        assert all(isinstance(item, str) for item in section.get("list", []))


def card(**changes) -> dict:
    arguments = dict(
        params=load_params(),
        metadata=METADATA,
        lineage=LINEAGE,
        model_name="deepguard",
        version="7",
        run_id="reg-run",
        metrics=METRICS,
        data_report=DATA_REPORT,
        summary=SUMMARY,
    )
    return build_card(**{**arguments, **changes})


def sections(built: dict) -> dict[str, dict]:
    return {section["heading"]: section for section in built["sections"]}


def test_card_has_the_contract_shape_and_every_section():
    built = card()
    assert_card_shape(built)
    assert built["version"] == "7" and built["model_name"] == "deepguard"
    assert list(sections(built)) == [
        "Intended use",
        "Out-of-scope use",
        "Training data",
        "Training recipe",
        "Test metrics",
        "Robustness",
        "Known limits",
        "Lineage",
    ]
    json.dumps(built)  # plain JSON types only


def test_card_reports_data_counts_hashes_and_what_was_dropped():
    data = sections(card())["Training data"]["facts"]
    assert data["train images"] == "1800 (FAKE 900, REAL 900)"
    assert data["data hash (sha256)"] == "d" * 64 and data["test split hash (sha256)"] == "t"
    assert data["duplicates dropped (within a split)"] == "4"
    assert data["leaks dropped (test images also in train)"] == "5"
    assert data["files rejected"] == "2"
    # A local archive is named, not its path on the machine that trained.
    assert data["source"] == "local: cifake.zip"


def test_card_says_how_much_accepted_user_feedback_the_model_trained_on():
    """A model retrained after users' corrections: its card (what the registry and the page show) said nothing
    of them, only the data report of the run did; nor, without feedback, that none was used."""
    facts = sections(card())["Training data"]["facts"]
    assert facts["user feedback trained on"] == "none (data.feedback: exclude)"
    outcomes = {"seen": 9, "kept": 5, "rejected": 2, "duplicate": 1, "test_in_train": 1, "capped": 0}
    facts = sections(card(data_report={**DATA_REPORT, "feedback": outcomes}))["Training data"]["facts"]
    assert facts["user feedback trained on"] == (
        "5 of 9 accepted images (left out: rejected 2, duplicate 1, test image 1)"
    )


def test_card_reads_metrics_bands_and_lineage():
    calibrated = {"real_below": 0.2, "fake_above": 0.8, "temperature": 1.7, "calibration_bias": -0.3}
    banded = ModelMetadata(**{**METADATA.__dict__, **calibrated})
    hashes = {"model_sha256": "m" * 64, "test_hash": "t" * 64}
    built = sections(card(metadata=banded, lineage={**LINEAGE, **hashes}))
    metrics = built["Test metrics"]["facts"]
    assert metrics["decision threshold"] == "0.4800"
    assert (metrics["REAL at or below"], metrics["FAKE at or above"]) == ("0.2000", "0.8000")
    assert metrics["temperature (calibration)"] == "1.7000"
    assert metrics["logit offset (calibration)"] == "-0.3000"  # Platt's bias, the default calibration
    assert metrics["accuracy"] == "0.9100" and metrics["test images"] == "500"
    assert metrics["expected calibration error"] == "0.0200"
    lineage = built["Lineage"]["facts"]
    assert lineage["git commit"] == "abc123" and lineage["registering run"] == "reg-run"
    assert (lineage["model file hash"], lineage["test split hash"]) == ("m" * 64, "t" * 64)


def test_card_shows_an_empty_band_as_none_not_as_an_edge():
    """An empty band decides nothing: the card says so instead of showing its edge (outside [0, 1])."""
    empty = ModelMetadata(**{**METADATA.__dict__, "real_below": EMPTY_REAL_BAND, "fake_above": 0.8})
    metrics = sections(card(metadata=empty))["Test metrics"]["facts"]
    assert metrics["REAL at or below"] == "none (empty band: decides nothing)"
    assert metrics["FAKE at or above"] == "0.8000"
    empty = ModelMetadata(**{**METADATA.__dict__, "real_below": 0.2, "fake_above": EMPTY_FAKE_BAND})
    metrics = sections(card(metadata=empty))["Test metrics"]["facts"]
    assert metrics["FAKE at or above"] == "none (empty band: decides nothing)"


def test_card_reports_what_training_ran():
    training = {
        "epochs_run": 41,
        "best_epoch": 38,
        "parameters": 356002,
        "device": "CPU",
        "train_seconds": 2220.5,
    }
    recipe = sections(card(training=training))["Training recipe"]["facts"]
    assert (recipe["epochs run"], recipe["best epoch"], recipe["parameters"]) == ("41", "38", "356002")
    assert (recipe["device"], recipe["train seconds"]) == ("CPU", "2220.5000")
    assert recipe["architecture"] == load_params().model.architecture
    assert "epochs run" not in sections(card())["Training recipe"]["facts"]


def test_card_tolerates_missing_reports_and_keys():
    built = sections(card(metrics={}, data_report={}, summary={}))
    assert "Not measured" in built["Robustness"]["text"]
    assert built["Test metrics"]["facts"]["decision threshold"] == "0.4800"
    assert built["Training data"]["facts"]["data hash (sha256)"] == "unknown"


def test_card_reports_robustness_and_names_the_worst_degradations():
    built = sections(card(robustness=ROBUSTNESS))
    assert built["Robustness"]["facts"]["blur_1.0"] == "accuracy 0.6200, roc_auc 0.8000, flipped 0.3000"
    assert "mean over degradations" in built["Robustness"]["facts"]
    worst = built["Known limits"]["list"][-1]
    assert worst.startswith("What degrades it most") and worst.index("blur_1.0") < worst.index("jpeg_q50")


def test_synthetic_model_says_so_first():
    synthetic = ModelMetadata(**{**METADATA.__dict__, "synthetic_data": True})
    assert sections(card(metadata=synthetic))["Known limits"]["list"][0].startswith("TRAINED ON SYNTHETIC")


def test_markdown_has_the_sections_facts_and_lists():
    text = to_markdown(card(robustness=ROBUSTNESS))
    assert text.startswith("# Model card: deepguard v7 (DeepGuardCNN)")
    assert "## Known limits" in text and "| train images | 1800 (FAKE 900, REAL 900) |" in text
    assert "- Deciding on its own" in text


@pytest.mark.slow
def test_register_publishes_the_card_with_the_version(trained_workspace, tmp_path):
    """The real pipeline: reports/model_card.*, the register run's artifacts, and the model folder's copy."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=trained_workspace.tracking_uri)
    registration = json.loads((trained_workspace.root / "reports" / "registration.json").read_text())
    local = json.loads((trained_workspace.root / "reports" / "model_card.json").read_text())
    assert_card_shape(local)
    assert local["version"] == registration["version"]
    assert sections(local)["Lineage"]["facts"]["registering run"] == registration["run_id"]
    markdown = (trained_workspace.root / "reports" / "model_card.md").read_text()
    assert markdown.startswith(f"# {local['title']}")
    logged = {artifact.path for artifact in client.list_artifacts(registration["run_id"], "model_card")}
    assert logged == {"model_card/model_card.json", "model_card/model_card.md"}
    mlflow.set_tracking_uri(trained_workspace.tracking_uri)
    folder = mlflow.artifacts.download_artifacts(registration["model_uri"], dst_path=str(tmp_path))
    assert json.loads((tmp_path / "model_card.json").read_text()) == local, folder


def test_model_folder_card_is_read_or_absent(tmp_path):
    """The predictor's reader: the card, or None for a folder without one or with an unreadable one."""
    assert read_model_card(tmp_path) is None
    (tmp_path / "model_card.json").write_text(json.dumps(card()))
    assert read_model_card(tmp_path) == card()
    (tmp_path / "model_card.json").write_text("{not json")
    assert read_model_card(tmp_path) is None
    (tmp_path / "model_card.json").write_text("[1, 2]")
    assert read_model_card(tmp_path) is None


def test_card_reports_the_extra_sets_the_user_added():
    """evaluate scored the user's own sets into reports/metrics.json, but the card (and /model) left them out:
    the one place a reader looks for what the version was tested on did not say it was tried on them."""
    metrics = {
        **METRICS,
        "extra_sets": {"phone": {"accuracy": 0.75, "roc_auc": None, "count": 12, "fake_called_real": 0.5}},
    }
    built = card(metrics=metrics)
    assert_card_shape(built)
    headings = list(sections(built))
    assert headings.index("Extra evaluation sets") == headings.index("Robustness") + 1
    assert sections(built)["Extra evaluation sets"]["facts"] == {
        "phone": "accuracy 0.7500, roc_auc n/a, fakes called REAL 0.5000, images 12"
    }
    assert "Extra evaluation sets" not in sections(card()), "no section without extra sets"
    assert "| phone | accuracy 0.7500" in to_markdown(built)


def test_card_lists_clean_first_then_the_degradations_in_the_reports_order():
    """reports/robustness.json has sorted keys, and the card kept them: blur_0.6 and blur_1.0 above clean,
    the row every other one is read against."""
    degradations = dict(sorted(ROBUSTNESS["degradations"].items()))
    assert list(degradations)[0] == "blur_1.0", "the report's own order, as write_json sorts it"
    built = sections(card(robustness={**ROBUSTNESS, "degradations": degradations}))
    assert list(built["Robustness"]["facts"]) == ["clean", "jpeg_q50", "blur_1.0", "mean over degradations"]


def test_card_says_how_the_verdict_bands_did_on_test_and_on_how_few_images_they_were_chosen():
    """A one-epoch sample model's FAKE edge reached 0.99 on 5 validation images; on test 2 of its 16 FAKE
    verdicts were real photos. The card showed the edge only: now it shows what the verdicts did on test."""
    bands = {
        "val": {"count": 200, "real_coverage": 0.13, "fake_coverage": 0.025, "real_precision": 1.0},
        "test": {
            "count": 500,
            "real_coverage": 0.088,
            "fake_coverage": 0.032,
            "real_precision": 1.0,
            "fake_precision": 0.875,
        },
    }
    facts = sections(card(metrics={**METRICS, "band_precision": 0.99, "bands": bands}))["Test metrics"][
        "facts"
    ]
    assert facts["FAKE verdicts on test"] == (
        "16 images, 0.8750 of them FAKE (edge chosen for 0.9900 on 5 validation images)"
    )
    assert facts["REAL verdicts on test"].startswith("44 images, 1.0000 of them REAL")
    empty = {**bands, "test": {**bands["test"], "fake_coverage": 0.0, "fake_precision": None}}
    facts = sections(card(metrics={**METRICS, "band_precision": 0.99, "bands": empty}))["Test metrics"][
        "facts"
    ]
    assert facts["FAKE verdicts on test"].startswith("no image")


def test_the_card_file_keeps_the_cards_order(tmp_path, monkeypatch):
    """/model renders model_card.json's facts as they come, and the file was written with sorted keys: the
    page read "Brier score, F1 (FAKE), FAKE at or above, ..., accuracy, decision threshold" where the card
    (and its Markdown) starts with the decision threshold and the band edges."""
    from stages.model_card import write_card

    built = card()  # params.yaml read here, before moving to the empty folder
    monkeypatch.chdir(tmp_path)
    json_file, _ = write_card(built)
    written = json.loads(json_file.read_text())
    assert written == built
    facts = sections(written)["Test metrics"]["facts"]
    assert list(facts) == list(sections(built)["Test metrics"]["facts"])
    assert list(facts)[:3] == ["decision threshold", "REAL at or below", "FAKE at or above"]
