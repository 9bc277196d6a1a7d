"""Faults lose nothing: no temporary output or RUNNING run after a kill; register resumes, no duplicates."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from workspace import REPO, run_stage

from core.atomic import atomic_path, clean_stale, read_json, write_json
from core.cli import run_stage as run_stage_cli
from core.cli import stage_parser
from core.errors import DeepGuardError
from core.pipeline import STAGES, MissingInputError, writer_of
from core.tracking import ACTIVE_RUNS_DIR

MODEL = "deepguard"


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    target = tmp_path / "models"
    (tmp_path / ".models.k1ll3d_1.tmp").mkdir()  # a folder a killed train was filling
    (tmp_path / ".models.k1ll3d_1.tmp" / "model.keras").write_bytes(b"half")
    (tmp_path / ".models.zz_99_aa.tmp").write_text("half a file")
    others = [tmp_path / ".models.json.abcdefgh.tmp", tmp_path / ".models2.abcdefgh.tmp", tmp_path / "x.tmp"]
    for other in others:  # other targets' temporaries, possibly being written right now: not ours to touch
        other.write_text("someone else's")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model.keras").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["models", *(p.name for p in others)])
    assert (target / "model.keras").read_bytes() == b"whole"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_report_is_strict_json_or_not_written(tmp_path: Path, value: float) -> None:
    """Python's json writes NaN and Infinity, tokens jq, JavaScript's JSON.parse and Go refuse: no report
    may hold one. A non-finite value fails the write, naming the file, and the previous report stays."""
    target = tmp_path / "metrics.json"
    write_json(target, {"precision": None})
    assert target.read_text() == '{\n  "precision": null\n}\n'
    with pytest.raises(ValueError, match=re.escape(str(target))):
        write_json(target, {"bands": {"precision": value}})
    assert json.loads(target.read_text()) == {"precision": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_folder_moved_aside_by_a_killed_swap_is_restored(tmp_path: Path) -> None:
    """Killed between the two renames of a folder swap: the previous output is whole and comes back."""
    target = tmp_path / "models"
    (tmp_path / ".models.old").mkdir()
    (tmp_path / ".models.old" / "model.keras").write_bytes(b"previous")
    (tmp_path / ".models.abcdefgh.tmp").mkdir()  # the new output, never renamed into place
    assert [p.name for p in clean_stale(target)] == [".models.abcdefgh.tmp"]
    assert (target / "model.keras").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_every_declared_output_is_traced_back_to_the_stage_that_writes_it() -> None:
    for stage in STAGES:
        for out in (*stage.outs, *stage.metrics, *stage.plots):
            assert writer_of(Path(out)) is stage
            if not Path(out).suffix:  # a folder: its files too
                assert writer_of(Path(out) / "inside.json") is stage
    assert writer_of(Path("data/raw/index.json")).name == "ingest"
    assert writer_of(Path("data/processed/train_images.npy")).name == "preprocess"
    assert writer_of(Path("reports/metrics.json")).name == "evaluate"
    assert writer_of(Path("params.yaml")) is None


def test_a_missing_input_names_the_file_and_the_stage_that_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = r"^reports/metrics\.json: not found; the evaluate stage writes it"
    with pytest.raises(MissingInputError, match=expected):
        read_json(Path("reports/metrics.json"))
    absolute = tmp_path / "reports/metrics.json"  # inside the workspace: still traced to its stage
    with pytest.raises(MissingInputError, match=re.escape(f"{absolute}: not found; the evaluate stage")):
        read_json(absolute)
    with pytest.raises(MissingInputError, match=r"^elsewhere\.json: not found$"):
        read_json(Path("elsewhere.json"))
    assert issubclass(MissingInputError, DeepGuardError) and issubclass(MissingInputError, FileNotFoundError)


@pytest.mark.parametrize(
    ("stage", "missing", "writer"),
    [
        ("preprocess", "data/raw/index.json", "ingest"),
        ("features", "data/processed/train_images.npy", "preprocess"),
        ("train", "data/processed/train_images.npy", "preprocess"),
        ("evaluate", "models/model.keras", "train"),
        ("register", "reports/metrics.json", "evaluate"),
    ],
)
def test_a_stage_run_alone_without_its_input_is_one_line(
    stage: str,
    missing: str,
    writer: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    """docs/pipeline.md: a stage run on its own stops on bad input with one line and exit 2, no traceback."""
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"stages.{stage}")
    assert module.main(["--params", str(REPO / "params.yaml")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"stages.{stage}: error: {missing}: not found; the {writer} stage writes it")


def test_a_stage_input_that_is_not_json_is_one_line_naming_its_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    """A JSON input cut short or edited by hand stopped the stage on a JSONDecodeError traceback."""
    from stages import preprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/index.json").write_text('{"kept": {}\n')
    assert preprocess.main(["--params", str(REPO / "params.yaml")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("stages.preprocess: error: data/raw/index.json: not valid JSON (")
    assert "the ingest stage writes it" in line


def test_a_bad_parameter_is_one_line_and_creates_no_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    """The run folder of --workdir was created before params.yaml was checked: a bad value left it behind."""
    from stages import preprocess

    monkeypatch.chdir(tmp_path)
    argv = ["--params", str(REPO / "params.yaml"), "--set", "training.epochs=0", "--workdir", "runs/one"]
    assert preprocess.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "stages.preprocess: error: override 'training.epochs=0': training.epochs: "
        "Input should be greater than or equal to 1"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_stage_reads_its_profile_relative_to_where_it_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    """The DAG's GPU pods pass ``--profile /app/params-gpu.yaml``; no stage took a profile, only bench-gpu."""
    from stages import preprocess

    monkeypatch.chdir(tmp_path)
    Path("gpu.yaml").write_text("training:\n  batch_size: 0\n")
    argv = ["--params", str(REPO / "params.yaml"), "--profile", "gpu.yaml", "--workdir", "runs/one"]
    assert preprocess.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"stages.preprocess: error: {tmp_path / 'gpu.yaml'}: training.batch_size: "), line
    # The profile comes before --set, as in load_params and bench/gpu_bench.py.
    assert preprocess.main([*argv, "--set", "training.batch_size=-1"]) == 2
    assert "override 'training.batch_size=-1'" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_workdir_that_cannot_be_a_folder_is_one_line(
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    """``--workdir`` naming a file (or a path through one) stopped the stage on an OSError traceback."""
    from stages import preprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    assert preprocess.main(["--params", str(REPO / "params.yaml"), "--workdir", where]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"stages.preprocess: error: --workdir {where}: cannot create or enter it: ")


def _client(env: dict[str, str]) -> mlflow.MlflowClient:
    uri = env["MLFLOW_TRACKING_URI"]
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _start_train_and_wait_until_writing(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start `python -m stages.train`; return once its MLflow run is open and its temporary folder exists."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = root / ACTIVE_RUNS_DIR / "train.json"
    deadline = time.monotonic() + 300
    while not (marker.is_file() and list(root.glob(".models.*.tmp"))):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"train never wrote (exit {process.returncode}):\n{out[-2000:]}{err[-2000:]}")
        time.sleep(0.1)
    return process, json.loads(marker.read_text())["run_id"]


def test_killed_train_leaves_no_temporary_folder_and_no_running_run(workspace_copy) -> None:
    root, env = workspace_copy
    client = _client(env)
    before = (root / "models/model.keras").read_bytes()

    # SIGTERM (how Kubernetes stops a pod): the stage unwinds at once and says so in one line.
    process, terminated_run = _start_train_and_wait_until_writing(root, env)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "stages.train: interrupted"
    assert not list(root.glob(".models.*")), "SIGTERM left a temporary folder"
    assert client.get_run(terminated_run).info.status == "KILLED"
    assert (root / "models/model.keras").read_bytes() == before, "the previous good output stays"

    # SIGKILL: nothing runs in the process; the next run of the stage cleans up after it.
    process, killed_run = _start_train_and_wait_until_writing(root, env)
    process.kill()
    process.communicate(timeout=60)
    assert list(root.glob(".models.*.tmp")) and client.get_run(killed_run).info.status == "RUNNING"
    result = run_stage("train", root, env)
    assert not list(root.glob(".models.*")), "the rerun left the killed attempt's temporary folder"
    assert client.get_run(killed_run).info.status == "KILLED"
    assert f"MLflow run {killed_run} of an interrupted train stage ended as KILLED" in result.stdout
    new_run = json.loads((root / "models/run.json").read_text())["run_id"]
    assert client.get_run(new_run).info.status == "FINISHED"
    assert not list((root / ACTIVE_RUNS_DIR).iterdir())


# A stage whose stop signal arrives inside a weakref callback, which is where garbage collection runs Python
# code at any moment: Python prints the exception the handler raises there and carries on.
_STOPPED_DURING_GARBAGE_COLLECTION = """
import signal, sys, time, weakref
from core.cli import run_stage, stage_parser

# Ctrl-C as in a terminal: a parent that runs us in the background (CI) hands SIGINT down ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Held:
    pass

def main(args, params):
    held = Held()
    ref = weakref.ref(held, lambda _: signal.raise_signal(signal.Signals[sys.argv[1]]))
    del held
    time.sleep(30)
    print("finished as if never stopped")

sys.exit(run_stage("demo", main, stage_parser("demo", "a stage stopped during garbage collection"), []))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_garbage_collection_still_stops_the_stage(name: str) -> None:
    """CI once saw a SIGTERM land in a weakref callback: train then ran to the end and exited 0."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _STOPPED_DURING_GARBAGE_COLLECTION, name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 130, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == "stages.demo: interrupted"
    assert f"{name} arrived during garbage collection, which drops it: sending it again" in result.stdout
    assert "finished" not in result.stdout
    assert time.monotonic() - started < 20, "the stage slept on instead of stopping"


# A stage whose stop a library catches: TensorFlow's C++ code swallows an exception raised in a Python call
# it makes, or turns it into a ValueError (a fresh `make test` saw train exit 0 after a SIGTERM; a loop of 39
# stops, twice exit 0 and once exit 1).
_STOP_CAUGHT_BY_A_LIBRARY = """
import signal, sys, time
from core import tracking
from core.cli import run_stage, stage_parser

signal.signal(signal.SIGINT, signal.default_int_handler)

def main(args, params):
    experiment = tracking.setup(params.mlflow)
    with tracking.stage_run("demo", experiment.experiment_id) as run:
        print("run", run.info.run_id, flush=True)
        caught = False
        try:
            signal.raise_signal(signal.Signals[sys.argv[1]])
        except KeyboardInterrupt:
            caught = True
        if caught and sys.argv[2] == "turned into an error":
            raise ValueError("The two structures don't have the same nested structure.")
        time.sleep(30)
        print("finished as if never stopped")

sys.exit(run_stage("demo", main, stage_parser("demo", "a stage whose stop a library catches"), []))
"""


def _run_demo_stage_with_a_store(script: str, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a demo stage in ``workdir`` with the repository's params.yaml and an MLflow store of its own."""
    (workdir / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSHUB_"))}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def _assert_stopped_with_its_run_killed(result: subprocess.CompletedProcess[str], workdir: Path) -> None:
    """The demo stage exited 130 with the one line, never finished, and its MLflow run ended as KILLED."""
    assert result.returncode == 130, result.stdout + result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "stages.demo: interrupted"
    assert "finished" not in result.stdout
    run_id = result.stdout.split("run ", 1)[1].split()[0]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("caught", ["swallowed", "turned into an error"])
def test_a_stop_a_library_catches_still_stops_the_stage(name: str, caught: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run_demo_stage_with_a_store(_STOP_CAUGHT_BY_A_LIBRARY, tmp_path, name, caught)
    _assert_stopped_with_its_run_killed(result, tmp_path)
    assert time.monotonic() - started < 25, "the stage slept on instead of stopping"


def _run_demo_stage(script: str) -> subprocess.CompletedProcess[str]:
    """Run a demo stage with the repository's params.yaml and no MLflow."""
    command = [sys.executable, "-c", script]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


_STOP_LOST_AS_THE_STAGE_FINISHES = """
import signal, sys
from core.cli import run_stage, stage_parser

def main(args, params):
    try:
        signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        pass  # swallowed, and the stage returns before the stop is sent again
    print("work complete", flush=True)

sys.exit(run_stage("demo", main, stage_parser("demo", "a stage that finishes after losing its stop"), []))
"""


def test_a_stage_that_finishes_after_losing_its_stop_still_exits_as_stopped() -> None:
    result = _run_demo_stage(_STOP_LOST_AS_THE_STAGE_FINISHES)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "work complete" in result.stdout and "its outputs are complete" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "stages.demo: interrupted"


_STOP_SENT_AGAIN_WHILE_CLEANING_UP = """
import signal, sys, time
from core.cli import run_stage, stage_parser

signal.signal(signal.SIGINT, signal.default_int_handler)

def main(args, params):
    try:
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            print("swallowed", flush=True)
        time.sleep(30)  # where the stop, sent again, lands
    finally:
        time.sleep(2)  # cleanup, during which the stop would be sent again if still sent
        print("cleaned up", flush=True)

sys.exit(run_stage("demo", main, stage_parser("demo", "a stage cleaning up after a stop sent again"), []))
"""


def test_a_stop_sent_again_does_not_cut_the_cleanup_short() -> None:
    result = _run_demo_stage(_STOP_SENT_AGAIN_WHILE_CLEANING_UP)
    assert result.returncode == 130, result.stdout + result.stderr
    assert result.stdout.count("swallowed") == 1 and "cleaned up" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "stages.demo: interrupted"


# A stage stopped while MLflow's database session holds SQLite's write lock: right after a row is written,
# before the session commits. CI once saw train's SIGTERM land there; ending the run then hit "database is
# locked" and the stage exited 1 with its run left RUNNING.
_STOPPED_DURING_A_DATABASE_WRITE = """
import signal, sys, time
import mlflow
from mlflow.entities import Param
from sqlalchemy import event
from sqlalchemy.engine import Engine
from core import tracking
from core.cli import run_stage, stage_parser

stopped = []

def stop_after_the_first_param_row(conn, cursor, statement, *rest):
    if statement.startswith("INSERT INTO params") and not stopped:
        stopped.append(statement)
        signal.raise_signal(signal.SIGTERM)

def main(args, params):
    experiment = tracking.setup(params.mlflow)
    with tracking.stage_run("demo", experiment.experiment_id) as run:
        print("run", run.info.run_id, flush=True)
        event.listen(Engine, "after_cursor_execute", stop_after_the_first_param_row)
        # Straight to the store, back to back: outside its calls the main thread spends almost no time, so a
        # stop that waits by sending the signal again later lands in the next call, and the next.
        store = mlflow.MlflowClient()._tracking_client.store
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            store.log_param(run.info.run_id, Param(f"p{time.monotonic_ns()}", "1"))
        print("finished as if never stopped")

sys.exit(run_stage("demo", main, stage_parser("demo", "a stage stopped inside a database write"), []))
"""


def test_a_stop_inside_an_mlflow_database_write_still_ends_the_run_as_killed(tmp_path: Path) -> None:
    result = _run_demo_stage_with_a_store(_STOPPED_DURING_A_DATABASE_WRITE, tmp_path)
    _assert_stopped_with_its_run_killed(result, tmp_path)
    assert not list((tmp_path / ACTIVE_RUNS_DIR).iterdir())


def test_a_stage_run_in_process_leaves_the_signal_handlers_as_it_found_them(root_logging: None) -> None:
    hook, handlers = sys.unraisablehook, [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]

    def main(args: object, params: object) -> None:
        assert signal.getsignal(signal.SIGTERM) is not handlers[0]
        assert sys.unraisablehook is not hook

    argv = ["--params", str(REPO / "params.yaml")]
    assert run_stage_cli("demo", main, stage_parser("demo", "test"), argv) == 0
    assert sys.unraisablehook is hook
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers


def _tags(client: mlflow.MlflowClient) -> dict[str, dict[str, str]]:
    return {str(v.version): v.tags for v in client.search_model_versions(f"name = '{MODEL}'")}


def test_register_run_again_on_the_same_model_and_evaluation_registers_nothing(workspace_copy) -> None:
    # A cleared Airflow task reruns register in the same run folder: it registered a duplicate version,
    # which lost the gate to its original and took the challenger alias.
    root, env = workspace_copy
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = _client(env)
    run_stage("register", root, env)
    first = json.loads((root / "reports/registration.json").read_text())
    again = run_stage("register", root, env)
    assert "deepguard v1 was registered from this model and evaluation already (champion)" in again.stdout
    assert list(_tags(client)) == ["1"], "a duplicate version"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert json.loads((root / "reports/registration.json").read_text()) == first


def test_evaluate_stopped_while_scoring_leaves_the_last_reports_as_they_were(
    workspace_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each output is atomic, and so is the set: a stop during the long robustness scoring (a fault injected
    into it here) leaves no new drift reference or figures beside the last run's metrics."""
    from core.config import load_params
    from stages import evaluate, robustness

    class StoppedError(Exception):
        pass

    def stopped(*args: object) -> dict:
        raise StoppedError

    root, _ = workspace_copy
    reports = root / "reports"
    outputs = [reports / "metrics.json", reports / "robustness.json", reports / "reference.json"]
    outputs += sorted((reports / "figures").glob("*.png"))
    assert len(outputs) > 5, "the trained workspace has evaluate's outputs"
    before = {path: path.stat().st_mtime_ns for path in outputs}
    monkeypatch.chdir(root)
    monkeypatch.setattr(robustness, "robustness_report", stopped)
    with pytest.raises(StoppedError):
        evaluate.run(load_params(root / "params.yaml"))
    assert {path: path.stat().st_mtime_ns for path in outputs} == before


def test_register_completes_the_version_a_kill_left_instead_of_duplicating_it(workspace_copy) -> None:
    root, env = workspace_copy
    # The registry resolves a models:/ source with the process-wide tracking URI, which an earlier test may
    # have set (set_tracking_uri wins over the environment): point it at this workspace's store.
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = _client(env)
    run_stage("register", root, env)
    first = client.get_model_version(MODEL, "1")
    assert first.tags["promotion"] == "champion"

    # What a SIGKILL right after "version created" leaves: the version with its lineage and the gate's
    # decision, no alias, no promotion tag; its run RUNNING and named by the workspace's marker.
    for alias in ("champion", "challenger"):
        client.delete_registered_model_alias(MODEL, alias)
    for tag in ("promotion", "promotion_reason"):
        client.delete_model_version_tag(MODEL, "1", tag)
    client.update_run(first.run_id, status="RUNNING")
    (root / ACTIVE_RUNS_DIR).mkdir(exist_ok=True)  # left empty by the first run
    (root / ACTIVE_RUNS_DIR / "register.json").write_text(json.dumps({"run_id": first.run_id}))

    result = run_stage("register", root, env)
    assert "v1 was registered by an interrupted attempt of this run: completing it" in result.stdout
    assert list(_tags(client)) == ["1"], "no duplicate version"
    assert _tags(client)["1"]["promotion"] == "champion"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert json.loads((root / "reports/registration.json").read_text())["version"] == "1"

    # A version whose registration died elsewhere and was never resumed: untagged, its run over.
    other = client.create_run(client.get_run(first.run_id).info.experiment_id)
    client.set_terminated(other.info.run_id, "KILLED")
    client.create_model_version(MODEL, first.source, run_id=other.info.run_id)
    # Make v1 a weaker champion on this test set, so the next registration is promoted over it.
    client.set_model_version_tag(MODEL, "1", "test_roc_auc", "0.5")
    run_stage("register", root, env)
    tags = _tags(client)
    assert {version: t["promotion"] for version, t in tags.items()} == {
        "1": "superseded",
        "2": "abandoned",
        "3": "champion",
    }
    assert tags["1"]["promotion_reason"] == "was champion until v3 replaced it"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"
