"""Pipeline tier: all six stages on real CIFAKE images through `dvc repro`, the registry, the gate."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from workspace import TrainedWorkspace, all_layers, dvc, run_stage

from core.degrade import DEGRADATIONS
from core.layers import Temperature, without_temperature
from core.modelstore import download_model, load_keras, read_metadata
from core.pipeline import DEPLOY, STAGE_NAMES, STAGES, code_deps, dvc_yaml, writer_of
from stages.register import edge_tag
from stages.train import precision_policy


def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_committed_dvc_yaml_is_generated_from_the_stage_list() -> None:
    from workspace import REPO

    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(), "run `make dvc-yaml` after editing the stage list"


def test_every_stage_comes_after_the_stages_that_write_its_inputs() -> None:
    """DVC orders the stages by their deps, but the Airflow DAG runs them in the order of ``STAGES``: a stage
    listed before the writer of one of its inputs passed `make pipeline` and failed on every DAG run."""
    for position, stage in enumerate((*STAGES, DEPLOY)):
        for path in stage.inputs:
            writer = writer_of(Path(path))
            assert writer is None or STAGES.index(writer) < position, (
                f"{stage.name} reads {path}, which {writer.name} writes: list {stage.name} after it in STAGES"
            )


def test_make_dvc_yaml_with_a_stage_list_that_fails_keeps_dvc_yaml(tmp_path: Path) -> None:
    """`make dvc-yaml` after an edit that breaks core/pipeline.py must not leave an empty dvc.yaml behind
    (a shell redirect truncates its file before the command runs)."""
    from workspace import REPO

    for name in ("Makefile", "dvc.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "dvc-yaml", "PY=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (tmp_path / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "dvc.yaml"]


def test_every_dvc_output_is_cached_because_git_ignores_them() -> None:
    """reports/ is git-ignored: an uncached metric or plot would exist in no revision, so `dvc exp show`,
    `dvc metrics diff`, `dvc plots diff` and `dvc pull` could not read it, and a killed `dvc repro` (DVC
    removes a stage's outputs before running it) would lose it for good, not restored by `dvc checkout`."""
    from workspace import REPO

    paths = ["reports/metrics.json", "reports/figures/roc_curve.png", "models/model.keras"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths
    for name, stage in yaml.safe_load(dvc_yaml())["stages"].items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                options = {} if isinstance(out, str) else next(iter(out.values()))
                assert options.get("cache", True), f"{name}: {kind} {out} is not cached (cache: false)"


def test_dvc_plots_pages_and_a_killed_trains_leftovers_are_git_ignored() -> None:
    """`dvc plots show/diff` write dvc_plots/; a train killed by SIGKILL (the OOM killer) leaves its partial
    model beside models/ until its next run: neither may show in `git status` or be taken by `git add -A`."""
    from workspace import REPO

    paths = ["dvc_plots/index.html", ".models.k3j9x0ab.tmp/model.keras", ".models.old/model.keras"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths


def test_dvc_never_replays_register_from_its_run_cache() -> None:
    """Register's work is the MLflow registry, not its files: replayed from DVC's run cache (after `make
    clean` emptied the store, or params set back), it would leave the store without the version. DVC runs a
    stage whose outputs persist instead of replaying it."""
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert all(next(iter(out.values())) == {"persist": True} for out in stages["register"]["outs"])
    others = [out for name, stage in stages.items() if name != "register" for out in stage.get("outs", [])]
    assert all(isinstance(out, str) for out in others), "the other stages replay from the run cache"


def test_the_documented_rescoring_of_edited_extra_sets_reruns_evaluate_alone(tmp_path: Path) -> None:
    """docs/pipeline.md told a user who edited an extra set's files to run `dvc repro --force evaluate`, which
    forces every stage before evaluate too: ingest to train ran again (training on the full archive, 37
    minutes) for a rescoring. Real DVC, asked for a dry run of the documented command, in a git checkout."""
    from workspace import make_workspace, stage_env

    doc = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text()
    documented = re.search(r"after editing a set, run `(dvc repro [^`]+)`", " ".join(doc.split()))
    assert documented, "docs/pipeline.md no longer says how to rescore an edited extra set"
    root = make_workspace(tmp_path / "clone")
    env = stage_env(root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, env, "init", "-q")
    dry = dvc(root, env, *documented.group(1).split()[1:], "--dry")
    assert re.findall(r"Running stage '(\w+)'", dry.stdout) == ["evaluate"], dry.stdout


def _imported_project_files(path: Path, root: Path) -> set[str]:
    """An independent oracle for code_deps: walk the syntax trees of the project files ``path`` imports."""
    found, todo = set(), [path]
    while todo:
        file = todo.pop()
        rel = file.relative_to(root).as_posix()
        if rel in found:
            continue
        found.add(rel)
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
                    for candidate in (
                        root.joinpath(*parts[:i], "__init__.py"),
                        root.joinpath(*parts[:i]).with_suffix(".py"),
                    ):
                        if candidate.is_file():
                            todo.append(candidate)
    return found


@pytest.mark.parametrize("stage", [*STAGES, DEPLOY], ids=lambda stage: stage.name)
def test_dvc_deps_list_every_project_module_the_stage_imports(stage) -> None:
    from workspace import REPO

    path = REPO.joinpath(*stage.module.split("."))
    script = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    imported = _imported_project_files(script, REPO)
    missing = imported - set(stage.deps)
    assert not missing, f"{stage.name} imports {sorted(missing)} but its DVC deps do not list them"
    assert set(stage.inputs) <= set(stage.deps)


def test_a_new_import_becomes_a_dependency(tmp_path: Path) -> None:
    from workspace import REPO

    for package in ("core", "stages"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "core/brand_new.py").write_text('"""A module another engineer adds later."""\n')
    train = tmp_path / "stages/train.py"
    assert "core/brand_new.py" not in code_deps("stages.train", tmp_path)
    assert "core/tracking.py" in code_deps("stages.train", tmp_path)
    # Imported inside a function, as train imports the architectures: still a dependency.
    later = "\n\ndef _later() -> None:\n    from core import brand_new  # noqa: F401\n"
    train.write_text(train.read_text() + later)
    code_deps.cache_clear()
    assert "core/brand_new.py" in code_deps("stages.train", tmp_path)


def test_train_evaluate_and_register_depend_on_what_they_were_missing() -> None:
    deps = {stage.name: set(stage.deps) for stage in STAGES}
    train = {"core/modelstore.py", "core/tracking.py", "core/layers.py", "stages/architectures.py"}
    assert train <= deps["train"]
    assert {"core/metrics.py", "core/modelstore.py", "stages/figures.py"} <= deps["evaluate"]
    assert {"core/metrics.py", "core/modelstore.py", "stages/shards.py"} <= deps["register"]


def test_repro_runs_all_six_stages_in_order(trained_workspace: TrainedWorkspace) -> None:
    ran = re.findall(r"Running stage '(\w+)'", trained_workspace.repro_output)
    assert ran == list(STAGE_NAMES)


def test_pipeline_leaves_a_champion_with_metrics_and_lineage(trained_workspace: TrainedWorkspace) -> None:
    client = _client(trained_workspace.tracking_uri)
    champion = client.get_model_version_by_alias(trained_workspace.model_name, "champion")
    for tag in (
        "git_commit",
        "data_hash",
        "test_hash",
        "params_hash",
        "architecture",
        "test_accuracy",
        "test_roc_auc",
        "threshold",
        "degraded_mean_accuracy",
        "degraded_mean_roc_auc",
    ):
        assert champion.tags.get(tag), f"champion lacks lineage tag {tag}"
    assert champion.tags["synthetic_data"] == "false"
    assert champion.tags["data_source"] == "local"
    assert 0.5 < float(champion.tags["test_roc_auc"]) <= 1.0, "one epoch on real CIFAKE beats chance"
    assert (
        client.get_model_version_by_alias(trained_workspace.model_name, "challenger").version
        == champion.version
    )
    run = client.get_run(champion.run_id)
    assert "test_accuracy" in run.data.metrics and "epoch_val_auc" in run.data.metrics
    assert run.data.params["training.epochs"] == "1"
    artifacts = {a.path for a in client.list_artifacts(champion.run_id, "data")}
    assert "data/index.json" in artifacts


def test_pipeline_outputs_are_declared_and_complete(trained_workspace: TrainedWorkspace) -> None:
    root = trained_workspace.root
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"} <= metrics["test"].keys()
    assert np.sum(metrics["test"]["confusion_matrix"]) == 500
    assert 0.0 < metrics["threshold"] < 1.0
    robustness = json.loads((root / "reports/robustness.json").read_text())
    assert robustness["threshold"] == metrics["threshold"]
    assert set(robustness["degradations"]) == set(DEGRADATIONS)
    assert {s["count"] for s in robustness["degradations"].values()} == {500}  # default sample > 250/class
    assert robustness["degradations"]["clean"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert robustness["degradations"]["clean"]["flipped"] == 0.0
    assert 0.0 < robustness["degraded_mean"]["roc_auc"] <= 1.0
    assert metrics["extra_sets"] == {}
    plots = [plot for stage in STAGES for plot in stage.plots]
    assert len(plots) == 6  # confusion matrix, ROC, PR, calibration, robustness; the spectrum
    for plot in plots:
        assert (root / plot).read_bytes()[:4] == b"\x89PNG", plot
    report = json.loads((root / "reports/data_report.json").read_text())
    assert report["kept"] == {"test": {"FAKE": 250, "REAL": 250}, "train": {"FAKE": 1000, "REAL": 1000}}
    images = np.load(root / "data/processed/train_images.npy", mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    registration = json.loads((root / "reports/registration.json").read_text())
    assert registration["promoted"] is True
    model = load_keras(root / "models/model.keras")
    assert isinstance(model.get_layer("fake_probability"), Temperature), "calibration.enabled: true"
    # mixed_precision: auto trains in bfloat16 on a CPU with AMX tiles, float32 on others; either way the
    # saved model computes in float32.
    assert f"dtype policy {precision_policy('auto', gpus=0)}" in trained_workspace.repro_output
    assert {layer.dtype_policy.name for layer in all_layers(model)} == {"float32"}, "saved in float32"
    flip_averaged = without_temperature(model)
    assert flip_averaged.get_layer("mirror"), (
        "model.test_time_flip: true wraps the trained model in flip averaging"
    )


def test_second_repro_skips_and_a_training_param_reruns_train_onward_only(workspace_copy) -> None:
    root, env = workspace_copy
    again = dvc(root, env, "repro")
    assert "Running stage" not in again.stdout
    assert len(re.findall(r"didn't change, skipping", again.stdout)) == len(STAGE_NAMES)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("learning_rate: 0.003", "learning_rate: 0.0025"))
    changed = dvc(root, env, "repro")
    ran = re.findall(r"Running stage '(\w+)'", changed.stdout)
    assert ran == ["train", "evaluate", "register"]


def test_a_touched_archive_with_the_same_images_reruns_ingest_only(workspace_copy) -> None:
    root, env = workspace_copy
    archive = root.parent / "cifake-sample.zip"
    shutil.copyfile(env["DEEPGUARD_DATA"], archive)
    env = {**env, "DEEPGUARD_DATA": str(archive)}
    run_stage("ingest", root, env, "--locate")
    # The same images at another path (a fresh clone after `dvc pull` on another machine): no retraining, the
    # report names the new path, and register, which reads the report, runs again.
    moved = dvc(root, env, "repro")
    assert re.findall(r"Running stage '(\w+)'", moved.stdout) == ["ingest", "register"]
    assert json.loads((root / "reports/data_report.json").read_text())["source"]["location"] == str(archive)
    mtime = archive.stat().st_mtime
    os.utime(archive, (mtime + 3600, mtime + 3600))  # copied again, re-downloaded: new time, same bytes
    run_stage("ingest", root, env, "--locate")
    again = dvc(root, env, "repro")
    assert re.findall(r"Running stage '(\w+)'", again.stdout) == ["ingest"]
    marker = json.loads((root / "data/source.json").read_text())
    assert marker["fingerprint"].endswith(f":{int(mtime) + 3600}")


def test_gate_registers_a_worse_challenger_without_promoting_it(workspace_copy) -> None:
    import keras

    root, env = workspace_copy
    run_stage("register", root, env)  # the copied model becomes champion of this fresh store
    client = _client(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("deepguard", "champion")
    # Deliberately worse: zero the output layer, so every image gets the same score (ROC-AUC 0.5).
    model = load_keras(root / "models/model.keras")
    # The trained network sits inside the flip-averaging wrapper, inside the calibration wrapper.
    flip_averaged = without_temperature(model)
    trained = next((layer for layer in flip_averaged.layers if isinstance(layer, keras.Model)), flip_averaged)
    output = trained.get_layer("fake_probability")
    assert output.get_weights(), "the trained Dense output layer"
    output.set_weights([np.zeros_like(w) for w in output.get_weights()])
    model.save(root / "models/model.keras")
    run_stage("evaluate", root, env)
    result = run_stage("register", root, env)
    assert "NOT promoted" in result.stdout
    assert client.get_model_version_by_alias("deepguard", "champion").version == champion.version
    challenger = client.get_model_version_by_alias("deepguard", "challenger")
    assert int(challenger.version) == int(champion.version) + 1
    assert challenger.tags["promotion"] == "rejected"
    assert "roc_auc" in challenger.tags["promotion_reason"]
    registration = json.loads((root / "reports/registration.json").read_text())
    assert registration["promoted"] is False


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_gate_refuses_a_cleanly_better_but_fragile_challenger_from_edited_reports(workspace_copy) -> None:
    """Stand-ins for retrained models: evaluate's reports are edited, register and MLflow are real."""
    root, env = workspace_copy
    run_stage("register", root, env)
    client = _client(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("deepguard", "champion")
    champion_degraded = float(champion.tags["degraded_mean_roc_auc"])
    metrics, robustness = root / "reports/metrics.json", root / "reports/robustness.json"
    _edit_json(metrics, lambda m: m["test"].update(roc_auc=m["test"]["roc_auc"] + 0.01))
    _edit_json(robustness, lambda r: r["degraded_mean"].update(roc_auc=champion_degraded - 0.05))
    result = run_stage("register", root, env)
    assert "NOT promoted" in result.stdout
    challenger = client.get_model_version_by_alias("deepguard", "challenger")
    assert challenger.tags["promotion"] == "rejected"
    assert "drops more than promotion.max_robustness_drop" in challenger.tags["promotion_reason"]
    assert client.get_model_version_by_alias("deepguard", "champion").version == champion.version
    decision = json.loads((root / "reports/registration.json").read_text())["decision"]
    assert decision["champion_degraded"] == pytest.approx(champion_degraded)
    # Within the allowed drop (params.yaml: 0.01), the same clean gain promotes.
    _edit_json(robustness, lambda r: r["degraded_mean"].update(roc_auc=champion_degraded - 0.005))
    result = run_stage("register", root, env)
    assert "new champion" in result.stdout
    promoted = client.get_model_version_by_alias("deepguard", "champion")
    assert int(promoted.version) == int(challenger.version) + 1
    assert "is within promotion.max_robustness_drop" in promoted.tags["promotion_reason"]
    assert float(promoted.tags["degraded_mean_roc_auc"]) == pytest.approx(champion_degraded - 0.005)


def _deploy(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m deploy --target local`` as an operator types it, with no predictor running."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on: deploy says `make serve` will serve it
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    command = [sys.executable, "-m", "deploy", "--target", "local", "--workdir", str(root), *args]
    env = {**env, "PREDICTOR_URL": url, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_a_rolled_back_champion_is_pinned_until_the_operator_unpins_it(workspace_copy) -> None:
    """A bad v2 beat v1 and was rolled back with `deploy --pin 1`: the next scheduled run's better-scoring
    model must not replace v1 until `deploy --unpin`. Stand-ins for retrained models: evaluate's reports are
    edited; register, deploy and the MLflow store are real."""
    root, env = workspace_copy
    metrics = root / "reports/metrics.json"
    run_stage("register", root, env)
    client = _client(env["MLFLOW_TRACKING_URI"])
    _edit_json(metrics, lambda m: m["test"].update(roc_auc=m["test"]["roc_auc"] + 0.01))
    assert "new champion" in run_stage("register", root, env).stdout
    assert str(client.get_model_version_by_alias("deepguard", "champion").version) == "2"

    _deploy(root, env, "--pin", "1")
    assert str(client.get_model_version_by_alias("deepguard", "champion").version) == "1"
    assert "v1" in client.get_registered_model("deepguard").tags["champion_pinned"]
    assert client.get_model_version("deepguard", "1").tags["promotion"] == "champion"
    assert client.get_model_version("deepguard", "2").tags["promotion"] == "superseded"
    deployment = json.loads((root / "reports/deployment.json").read_text())
    assert deployment["version"] == "1"
    # The bad run's register task cleared and rerun: its record names the champion v1, not itself.
    run_stage("register", root, env)
    assert json.loads((root / "reports/registration.json").read_text())["champion_version"] == "1"

    _edit_json(metrics, lambda m: m["test"].update(roc_auc=m["test"]["roc_auc"] + 0.01))
    result = run_stage("register", root, env)
    assert "NOT promoted" in result.stdout and "champion v1 is pinned" in result.stdout
    assert str(client.get_model_version_by_alias("deepguard", "champion").version) == "1"
    assert client.get_model_version("deepguard", "3").tags["promotion"] == "rejected"

    _deploy(root, env, "--unpin")
    assert "champion_pinned" not in client.get_registered_model("deepguard").tags
    _edit_json(metrics, lambda m: m["test"].update(roc_auc=m["test"]["roc_auc"] + 0.001))
    assert "new champion" in run_stage("register", root, env).stdout
    assert str(client.get_model_version_by_alias("deepguard", "champion").version) == "4"


def test_pinning_a_version_the_registry_lacks_is_one_line_and_moves_nothing(workspace_copy) -> None:
    """A store restored from an older backup lacks the version the operator names."""
    root, env = workspace_copy
    run_stage("register", root, env)
    command = [sys.executable, "-m", "deploy", "--target", "local", "--workdir", str(root), "--pin", "7"]
    env = {**env, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot pin version 7 of model 'deepguard'" in result.stderr
    assert "Traceback" not in result.stderr
    client = _client(env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("deepguard", "champion").version) == "1"
    assert "champion_pinned" not in client.get_registered_model("deepguard").tags


def test_gate_never_promotes_a_synthetic_data_model_over_a_real_data_champion(workspace_copy) -> None:
    """A run that found no data (no Kaggle Secret, no DEEPGUARD_DATA) trains on synthetic data; stand-in:
    the data report and metrics are edited, register and MLflow are real."""
    root, env = workspace_copy
    run_stage("register", root, env)
    client = _client(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("deepguard", "champion")
    assert champion.tags["synthetic_data"] == "false"
    _edit_json(root / "reports/data_report.json", lambda r: r.update(synthetic=True))
    _edit_json(root / "reports/metrics.json", lambda m: m["test"].update(roc_auc=0.9999))
    result = run_stage("register", root, env)
    assert "NOT promoted" in result.stdout and "trained on synthetic data" in result.stdout
    assert client.get_model_version_by_alias("deepguard", "champion").version == champion.version
    challenger = client.get_model_version_by_alias("deepguard", "challenger")
    assert challenger.tags["synthetic_data"] == "true" and challenger.tags["promotion"] == "rejected"


def test_gate_measures_again_a_champion_tagged_on_other_test_data(workspace_copy) -> None:
    """Its tags describe another test split: the champion is downloaded and scored on this one, where the
    same model ties with itself (trusting its tag of 0.5 would have promoted it over itself)."""
    root, env = workspace_copy
    run_stage("register", root, env)
    client = _client(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("deepguard", "champion")
    client.set_model_version_tag("deepguard", champion.version, "test_hash", "another test split")
    client.set_model_version_tag("deepguard", champion.version, "test_roc_auc", "0.5")
    result = run_stage("register", root, env)
    assert "re-evaluating it on this test split" in result.stdout
    assert "NOT promoted" in result.stdout
    assert client.get_model_version_by_alias("deepguard", "champion").version == champion.version
    decision = json.loads((root / "reports/registration.json").read_text())["decision"]
    assert decision["champion_value"] == pytest.approx(decision["challenger_value"], abs=1e-6)


def test_champion_evaluated_again_with_new_bands_is_served_with_them(workspace_copy) -> None:
    """An ``evaluation`` setting changed: evaluate and register rerun on the same model file. Its new bands
    can only reach the predictor through a new champion version: a tie with itself must not keep them out."""
    root, env = workspace_copy
    run_stage("register", root, env)
    client = _client(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("deepguard", "champion")
    run_stage("register", root, env)  # the same model and settings again (a cleared task): nothing registered
    assert client.get_model_version_by_alias("deepguard", "champion").version == champion.version
    assert len(client.search_model_versions("name = 'deepguard'")) == 1
    run_stage("evaluate", root, env, "--set", "evaluation.band_precision=0.9")
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert (edge_tag(metrics["real_below"]), edge_tag(metrics["fake_above"])) != (
        champion.tags["real_below"],
        champion.tags["fake_above"],
    ), "band_precision 0.9 should widen the bands on this workspace"
    result = run_stage("register", root, env)
    assert "new champion" in result.stdout
    promoted = client.get_model_version_by_alias("deepguard", "champion")
    assert int(promoted.version) == int(champion.version) + 1
    assert promoted.tags["model_sha256"] == champion.tags["model_sha256"]
    assert f"v{champion.version}'s own model file" in promoted.tags["promotion_reason"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # download_model reads the global tracking URI
    served = read_metadata(download_model("models:/deepguard@champion", root / "served"))
    assert served.real_below == pytest.approx(metrics["real_below"])
    assert served.fake_above == pytest.approx(metrics["fake_above"])


def test_the_airflow_run_is_on_the_version_and_the_stage_run(workspace_copy) -> None:
    """The DAGs set DEEPGUARD_RUN_ID in every stage pod: the version and its registering run name it."""
    root, env = workspace_copy
    run_stage("register", root, {**env, "DEEPGUARD_RUN_ID": "scheduled__2026-12-06T00:00:00+00:00"})
    client = _client(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("deepguard", "champion")
    assert version.tags["airflow_run_id"] == "scheduled__2026-12-06T00:00:00+00:00"
    registration = json.loads((root / "reports/registration.json").read_text())
    run = client.get_run(registration["run_id"])
    assert run.data.tags["airflow_run_id"] == "scheduled__2026-12-06T00:00:00+00:00"
    card = (root / "reports/model_card.md").read_text()
    assert "scheduled__2026-12-06T00:00:00+00:00" in card


def test_unreachable_tracking_server_is_one_clear_error(workspace_copy) -> None:
    import socket

    root, env = workspace_copy
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    result = run_stage("register", root, env, check=False)
    assert result.returncode == 75, "a transient error (core/errors.py): the Airflow task retries it"
    assert "Traceback" not in result.stderr
    assert re.search(rf"127\.0\.0\.1:{port} unreachable", result.stderr.strip().splitlines()[-1])
