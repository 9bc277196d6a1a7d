"""Credentials embedded in a URI (``http://user:secret@host``) never reach a log, an error or a report."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
from workspace import REPO, free_port

from core import tracking
from core.cli import run_stage, stage_parser
from core.config import Params
from core.errors import DeepGuardError, redact_credentials
from deploy.local import deploy_local
from deploy.manifest import Champion

SECRET = "s3cret-token"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"http://user:{SECRET}@127.0.0.1:9", "http://***@127.0.0.1:9"),
        (f"https://{SECRET}@host/path?q=1", "https://***@host/path?q=1"),
        # An unencoded "@" in the password: everything up to the last "@" before the host is userinfo.
        (f"http://user:{SECRET}@x@host:5000/api", "http://***@host:5000/api"),
        (
            f"API request to 'postgresql://db:{SECRET}@pg:5432/mlflow' failed; see http://u:{SECRET}@h/x",
            "API request to 'postgresql://***@pg:5432/mlflow' failed; see http://***@h/x",
        ),
        ("http://127.0.0.1:8080/v2/models/x@1", "http://127.0.0.1:8080/v2/models/x@1"),
        ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
    ],
)
def test_redact_credentials(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected


def test_errors_never_show_url_credentials() -> None:
    error = DeepGuardError(f"predictor at http://user:{SECRET}@127.0.0.1:9 refused the reload")
    assert str(error) == "predictor at http://***@127.0.0.1:9 refused the reload"


def test_unreachable_tracking_uri_keeps_its_password_out_of_logs_and_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    """The stage CLI path that logs and prints the probe's failure, against a port nothing listens on."""
    port = free_port()
    for name in ("DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the values the code sets are undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:{port}")

    def main(args: argparse.Namespace, params: Params) -> None:
        tracking.setup(params.mlflow)

    argv = ["--params", str(REPO / "params.yaml")]
    code = run_stage("register", main, stage_parser("register", "test"), argv)
    out, err = capsys.readouterr()
    assert code == 75  # transient: the Airflow task retries it
    assert f"MLflow tracking server http://127.0.0.1:{port} unreachable" in err  # the one-line CLI error
    assert f"127.0.0.1:{port} unreachable" in out  # the same failure in the log
    assert SECRET not in out + err


def test_library_log_records_are_redacted_by_the_stage_logging(
    capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    from core.cli import configure_logging

    configure_logging()
    logging.getLogger("urllib3.connectionpool").warning("Retrying %s", f"http://user:{SECRET}@127.0.0.1:9/x")
    out = capsys.readouterr().out
    assert "Retrying http://***@127.0.0.1:9/x" in out
    assert SECRET not in out


def test_local_deploy_reports_and_logs_predictor_url_without_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    champion = Champion(
        model_name="deepguard",
        version="3",
        artifact_uri="mlflow-artifacts:/1/m",
        storage_uri="mlflow-artifacts:/1/m",
    )
    url = f"http://user:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens: deploy logs "no predictor"
    with caplog.at_level(logging.INFO, logger="deploy"):
        result = deploy_local(champion, url, "deepguard", timeout_s=5)
    assert result.status == "no_predictor"
    assert result.endpoint == redact_credentials(url) and "***@127.0.0.1" in result.target
    assert "no predictor is running at http://***@127.0.0.1" in caplog.text
    assert SECRET not in caplog.text + repr(result)


@pytest.mark.parametrize(
    ("userinfo", "username", "password"),
    [("pipeline:s3cret-token", "pipeline", SECRET), ("pipe%40line:s3cret%2Dtoken", "pipe@line", SECRET)],
)
def test_tracking_uri_credentials_move_to_mlflows_basic_auth_settings(
    monkeypatch: pytest.MonkeyPatch, userinfo: str, username: str, password: str
) -> None:
    for name in ("DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the values the code sets are undone
        monkeypatch.delenv(name)
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{userinfo}@127.0.0.1:{port}/prefix")
    with pytest.raises(tracking.TrackingUnavailableError) as error:  # nothing listens; moved before the probe
        tracking.resolve_tracking_uri()
    assert SECRET not in str(error.value)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}/prefix"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        username,
        password,
    )


def test_a_bare_token_stays_in_the_uri_and_mlflow_prints_no_run_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "placeholder")
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    uri = f"http://{SECRET}@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.TrackingUnavailableError) as error:
        tracking.resolve_tracking_uri()
    assert SECRET not in str(error.value)
    assert os.environ["MLFLOW_TRACKING_URI"] == uri  # requests sends the token from the URI
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


@pytest.fixture()
def dagshub_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """DagsHub is unreachable here: answers faked at the HTTP boundary; the token cache file in tmp_path.

    Returns:
        The path of the dagshub package's token cache file.
    """
    import dagshub.auth.tokens as tokens
    from dagshub.common import config as dagshub_config
    from dagshub.common.api.repo import RepoAPI
    from dagshub.common.api.user import UserAPI

    cache = tmp_path / "dagshub" / "tokens"
    monkeypatch.setattr(dagshub_config, "cache_location", str(cache))
    monkeypatch.setattr(dagshub_config, "token", None)  # DAGSHUB_USER_TOKEN of the shell stays out
    monkeypatch.setattr(tokens, "_token_storage", None)  # built again, on the cache above
    monkeypatch.setattr(tokens, "_validated_env_tokens", set())
    monkeypatch.setattr(tracking, "_probe", lambda url, path="": None)
    monkeypatch.setattr(RepoAPI, "get_repo_info", lambda self: None)
    user = type("User", (), {"username": "u"})
    monkeypatch.setattr(UserAPI, "get_user_from_token", lambda token, host=None: user)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the values dagshub.init sets are undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSHUB_USERNAME", "u")
    monkeypatch.setenv("DAGSHUB_TOKEN", SECRET)
    monkeypatch.setenv("DAGSHUB_REPO", "deepguard")
    return cache


def test_dagshub_token_stays_in_the_environment_never_in_a_file_with_fake_dagshub_answers(
    dagshub_answers: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The dagshub package's add_app_token saves the token in plain text (~/.cache/dagshub/tokens)."""
    import dagshub.auth.tokens as tokens

    valid = staticmethod(lambda token, host: {"username": "u"})
    monkeypatch.setattr(tokens.TokenStorage, "get_username_of_token", valid)
    assert tracking.resolve_tracking_uri() == "https://dagshub.com/u/deepguard.mlflow"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET  # MLflow gets it from the environment
    written = [path for path in tmp_path.rglob("*") if path.is_file() and SECRET in path.read_text()]
    assert not written, f"DAGSHUB_TOKEN written to {written}"


def test_a_rejected_dagshub_token_from_a_fake_dagshub_is_one_error_naming_the_variable(
    dagshub_answers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagshub.auth.tokens as tokens

    rejected = staticmethod(lambda token, host: None)  # what DagsHub's user API answers for a bad token
    monkeypatch.setattr(tokens.TokenStorage, "get_username_of_token", rejected)
    with pytest.raises(tracking.TrackingUnavailableError, match="DAGSHUB_TOKEN") as error:
        tracking.resolve_tracking_uri()
    assert SECRET not in str(error.value)
    assert "Provided DagsHub token is not valid" in str(error.value)
