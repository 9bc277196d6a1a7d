"""MLflow set-up: a local sqlite store by default, MLFLOW_TRACKING_URI or DagsHub when configured.

An unreachable remote gives one clear error within seconds, never a hang. A stage's run that a kill left
RUNNING is ended as KILLED by the next stage that runs in the same workspace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from core.atomic import read_json, write_json
from core.cli import stop_received
from core.config import MlflowParams
from core.errors import DeepGuardError, TransientError, redact_credentials
from core.pipeline import MODEL_DIR, RUN_FILE
from core.settings import settings

if TYPE_CHECKING:  # MLflow is imported lazily, where it is used
    from mlflow import ActiveRun
    from mlflow.entities import Experiment

log = logging.getLogger(__name__)

LOCAL_STORE = Path("mlruns")
# Workspace-relative: <stage>.json names the MLflow run a stage has open; gone when the stage ends its run.
ACTIVE_RUNS_DIR = Path(".mlflow-active")
DAGSHUB_VARS = ("DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO")
DAGSHUB_HOST = "https://dagshub.com"
PROBE_TIMEOUT_S = 5


class TrackingUnavailableError(DeepGuardError):
    """The tracking server cannot be reached or refused us."""


class TrackingUnreachableError(TrackingUnavailableError, TransientError):
    """The tracking server did not answer, or failed on its side: a later try may succeed."""


def _credentials_to_env(uri: str) -> str:
    """Move the ``user:password@`` of a tracking URI into MLFLOW_TRACKING_USERNAME / _PASSWORD.

    MLflow sends those as basic auth itself, so the URI it keeps, quotes in errors and prints in run links
    ("View run ... at") holds no secret. Variables already set win, as they do in MLflow.

    Args:
        uri: An http(s) tracking URI, possibly with percent-encoded ``user:password@``.

    Returns:
        The URI without userinfo (also written back to MLFLOW_TRACKING_URI for child processes), or the URI
        unchanged when it has a user but no password.
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    if parts.password is None:
        # A bare token as the user (http://token@host): MLflow sends basic auth only with a password, so the
        # URI keeps it (requests sends it) and MLflow is told not to print the URI in its run links.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


def local_tracking_uri(root: Path | None = None) -> str:
    """The default store: ``sqlite:///<root>/mlruns/mlflow.db``."""
    return f"sqlite:///{((root or Path.cwd()) / LOCAL_STORE / 'mlflow.db').resolve()}"


def _probe(url: str, path: str = "") -> None:
    """GET ``url + path`` with a short timeout; any HTTP answer means the server is there."""
    import requests

    try:
        requests.get(url.rstrip("/") + path, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as exc:
        raise TrackingUnreachableError(
            f"MLflow tracking server {url} unreachable "
            f"({type(exc).__name__}); check MLFLOW_TRACKING_URI / DAGSHUB_* or "
            "unset them to use the local store"
        ) from None


def _describe(exc: Exception) -> str:
    """``Type: message`` of an exception, on one line; some of the dagshub package's cannot be printed."""
    try:
        message = " ".join(str(exc).split())[:200]
    except Exception:  # e.g. InvalidTokenError's __str__ fails
        message = ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _dagshub() -> str:
    env = settings()
    given = {"DAGSHUB_USERNAME": env.dagshub_username, "DAGSHUB_REPO": env.dagshub_repo}
    missing = [name for name in DAGSHUB_VARS if not given.get(name, env.dagshub_token)]
    if missing:
        needed, absent = ", ".join(DAGSHUB_VARS), ", ".join(missing)
        raise TrackingUnavailableError(f"DagsHub needs {needed}; missing: {absent}")
    owner, repo = env.dagshub_username, env.dagshub_repo
    if "/" in repo:
        owner, repo = repo.split("/", 1)
    _probe(DAGSHUB_HOST)
    import dagshub
    from dagshub.common import config as dagshub_config

    # The token the package would read from DAGSHUB_USER_TOKEN: used from memory, ahead of any cached one.
    # (dagshub.auth.add_app_token would save it in plain text in ~/.cache/dagshub/tokens, and a read-only
    # root filesystem refuses that write.)
    dagshub_config.token = env.dagshub_token.get_secret_value()
    try:
        dagshub.init(repo_owner=owner, repo_name=repo, mlflow=True)
    except Exception as exc:  # the package raises RuntimeError, its own errors and requests' for all of these
        raise TrackingUnavailableError(
            f"DagsHub refused repository {owner}/{repo} ({_describe(exc)}); "
            "check DAGSHUB_TOKEN (DagsHub > Settings > Tokens), DAGSHUB_USERNAME and DAGSHUB_REPO"
        ) from None
    # dagshub.init sets MLFLOW_TRACKING_URI: read the environment again.
    return _credentials_to_env(settings().mlflow_tracking_uri or f"{DAGSHUB_HOST}/{owner}/{repo}.mlflow")


def resolve_tracking_uri() -> str:
    """Pick the tracking URI: DagsHub when all DAGSHUB_* are set, else MLFLOW_TRACKING_URI, else local.

    Remote servers are probed first, so a wrong address fails in seconds with one message.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    env = settings()
    if env.dagshub_configured:
        return _dagshub()
    uri = env.mlflow_tracking_uri
    if not uri:
        uri = local_tracking_uri()
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return uri
    if urlsplit(uri).scheme in ("http", "https"):
        uri = _credentials_to_env(uri)
        _probe(uri, "/health")
    return uri


def setup(params: MlflowParams) -> Experiment:
    """Point MLflow at the resolved store and select the experiment (created on first use).

    Returns:
        The experiment.
    """
    import mlflow

    uri = resolve_tracking_uri()
    mlflow.set_tracking_uri(uri)
    log.info("MLflow tracking at %s, experiment %r", redact_credentials(uri), params.experiment)
    try:
        experiment = mlflow.get_experiment_by_name(params.experiment)
        if experiment is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                # Keep artifacts beside the local database, not in a folder relative to wherever we run.
                artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
            mlflow.create_experiment(params.experiment, artifact_location=artifacts)
        return mlflow.set_experiment(params.experiment)
    except mlflow.exceptions.MlflowException as exc:
        error = TrackingUnavailableError if refused(exc) else TrackingUnreachableError
        raise error(f"MLflow at {uri}: {exc.message.splitlines()[0]}") from None


def refused(exc: Exception) -> bool:
    """Whether MLflow refused a call, which fails the same way next time, or failed on its side (may pass).

    A 4xx but 429 (bad credentials, no permission, no such model) is a refusal; a 5xx, a lost connection and a
    store that is busy now (a locked sqlite file: ``TEMPORARILY_UNAVAILABLE``, 503) are not.

    Args:
        exc: An ``mlflow.exceptions.MlflowException``.
    """
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


def raise_unless_refused(exc: Exception, what: str) -> None:
    """Raise :class:`TrackingUnreachableError` when MLflow failed on its side or was busy while ``what``.

    Returns for a refusal (no such model or alias), which the caller reports its own way: a busy registry
    read as "no champion" let register promote without a comparison, and stopped deploy and monitor for good.

    Args:
        exc: An ``mlflow.exceptions.MlflowException``.
        what: What was being done, e.g. "reading the champion of model 'deepguard'".
    """
    if not refused(exc):
        raise TrackingUnreachableError(f"the registry failed {what}: {exc.message.splitlines()[0]}") from None


def git_commit() -> str:
    """The commit the code came from: GIT_COMMIT (set in images) or ``git rev-parse``; "unknown" otherwise."""
    if settings().git_commit:
        return settings().git_commit
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def continue_run(run_id: str, experiment_id: str) -> ActiveRun:
    """Reopen the training run so evaluate and register log beside it.

    When the store does not know the run (the model was trained against another store, or restored from
    DVC's cache), log to a new run that records where the model came from instead of failing.
    """
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
        # In its own experiment: MLflow refuses to resume a run from another one, which is the case once
        # mlflow.experiment changed after training (DVC then reruns register alone).
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        return mlflow.start_run(run_id=run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("training run %s is not in this tracking store; logging to a new run", run_id)
        return mlflow.start_run(experiment_id=experiment_id, tags={"continued_from_run": run_id})


def end_abandoned_runs() -> list[str]:
    """End as KILLED the runs that stages of this workspace opened and never ended (killed by SIGKILL).

    A workspace runs one stage at a time (DVC's lock, Airflow's task order), so a marker that exists when a
    stage starts was left by a stage that died. Runs in other workspaces are never touched.

    Returns:
        The ids of the runs ended.
    """
    import mlflow

    client = mlflow.MlflowClient()
    ended = []
    for marker in sorted(ACTIVE_RUNS_DIR.glob("*.json")):
        run_id = read_json(marker)["run_id"]
        try:
            status = client.get_run(run_id).info.status
        except mlflow.exceptions.MlflowException:
            status = None  # deleted, or recorded against another store: nothing to end here
        if status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
            log.warning("MLflow run %s of an interrupted %s stage ended as KILLED", run_id, marker.stem)
            ended.append(run_id)
        marker.unlink()
    return ended


AIRFLOW_RUN_TAG = "airflow_run_id"  # the tag naming the Airflow run (DEEPGUARD_RUN_ID) on runs and versions


@contextlib.contextmanager
def stage_run(stage: str, experiment_id: str, run_id: str | None = None) -> Iterator:  # mlflow.ActiveRun
    """Open ``stage``'s MLflow run (a new one, or ``run_id`` continued) and end it however the stage ends.

    FINISHED on success, KILLED on SIGTERM or Ctrl-C (see :func:`core.cli.run_stage`), FAILED on an error;
    while it is open a marker in the workspace lets the next stage end it if this process is killed outright.

    Args:
        stage: The stage name, which names the marker.
        experiment_id: The experiment of a new run.
        run_id: The run to continue (evaluate and register log beside training), or None for a new run.
    """
    import mlflow

    end_abandoned_runs()
    run = continue_run(run_id, experiment_id) if run_id else mlflow.start_run(experiment_id=experiment_id)
    if settings().airflow_run_id:  # lineage: the Airflow run (a continued run: the latest stage's)
        mlflow.set_tag(AIRFLOW_RUN_TAG, settings().airflow_run_id)
    marker = ACTIVE_RUNS_DIR / f"{stage}.json"
    write_json(marker, {"run_id": run.info.run_id, "stage": stage})
    try:
        yield run
    except BaseException as exc:
        # A stop can surface as another exception (core.cli._Stop); the run was killed all the same.
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) or stop_received() else "FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        marker.unlink(missing_ok=True)


def load_run_id(model_dir: Path = MODEL_DIR) -> str:
    """The MLflow run that trained the model in ``model_dir`` (train writes it; evaluate, register read it).

    Args:
        model_dir: The train stage's output folder.

    Returns:
        The run id.
    """
    return read_json(model_dir / RUN_FILE)["run_id"]
