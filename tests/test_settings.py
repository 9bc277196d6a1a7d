"""The environment is read in one place (core/settings.py), typed; a bad value is one line naming it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[1]
# The Kubernetes client's own variable, read when the client is configured, is not a DeepGuard setting.
ALLOWED_READS = {("deploy/rollout.py", "KUBECONFIG")}


def test_values_are_typed_and_empty_means_unset() -> None:
    env = Settings.from_env({"PREDICTOR_PORT": "9000", "DEEPGUARD_DATA": "", "DAGSHUB_TOKEN": "s3cret"})
    assert env.predictor_port == 9000
    assert env.local_predictor_url == "http://127.0.0.1:9000"
    assert env.data is None
    assert env.dagshub_configured
    assert "s3cret" not in repr(env)


def test_a_bad_value_names_the_variable_not_the_value() -> None:
    with pytest.raises(SettingsError, match="environment variable PREDICTOR_PORT: Input should be a valid"):
        Settings.from_env({"PREDICTOR_PORT": "eighty"})
    with pytest.raises(SettingsError, match="WEB_PORT: Input should be less than or equal to 65535"):
        Settings.from_env({"WEB_PORT": "70000"})


# deploy read the environment while building its parser (the default --target), before its error handling:
# `PREDICTOR_PORT=eighty python -m deploy` ended in a traceback.
# So did the predictor (`python -m serving`), reading the monitoring folder before its error handling.
@pytest.mark.parametrize(
    "command", [["serving.serve", "--help"], ["deploy", "--dry-run"], ["serving"]], ids=" ".join
)
def test_a_command_reports_a_bad_variable_in_one_line(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PREDICTOR_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "environment variable PREDICTOR_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def _environ_reads(path: Path) -> list[str]:
    """Variables a module reads with os.environ[...] / .get / os.getenv (writes with setdefault excluded)."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.ctx, ast.Load):
                target = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
            target = node.args[0] if node.args else None
        if target is not None:
            reads.append(target.value if isinstance(target, ast.Constant) else ast.unparse(target))
    return reads


def test_no_module_reads_the_environment_behind_the_settings_back() -> None:
    offenders = []
    for package in ("core", "stages", "serving", "deploy"):
        for path in sorted((REPO / package).glob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative == "core/settings.py":
                continue
            offenders += [
                f"{relative}: {name}"
                for name in _environ_reads(path)
                if (relative, name) not in ALLOWED_READS
            ]
    assert offenders == []


def test_the_scan_sees_a_read(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text('import os\nA = os.environ.get("X")\nB = os.environ["Y"]\nos.environ["Z"] = "1"\n')
    assert _environ_reads(source) == ["X", "Y"]


def test_kaggle_json_is_found_where_the_kaggle_package_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """KAGGLE_CONFIG_DIR, else ~/.kaggle if it exists, else $XDG_CONFIG_HOME/kaggle, as the kaggle package."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    xdg = tmp_path / "xdg"
    (xdg / "kaggle").mkdir(parents=True)
    (xdg / "kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert Settings.from_env({"XDG_CONFIG_HOME": str(xdg)}).kaggle_credentials
    assert not Settings.from_env(
        {"XDG_CONFIG_HOME": str(xdg), "KAGGLE_CONFIG_DIR": str(tmp_path)}
    ).kaggle_credentials
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)  # the package then reads ~/.kaggle only
    assert not Settings.from_env({"XDG_CONFIG_HOME": str(xdg)}).kaggle_credentials
    (tmp_path / "home" / ".config" / "kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".config" / "kaggle" / "kaggle.json").write_text("{}")
    shutil.rmtree(tmp_path / "home" / ".kaggle")
    assert Settings.from_env({}).kaggle_credentials  # XDG_CONFIG_HOME unset: ~/.config


def test_kaggle_auth_login_counts_as_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``kaggle auth login`` (the package's recommended sign-in) keeps OAuth credentials in a fixed file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not Settings.from_env({}).kaggle_credentials
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "credentials.json").write_text('{"refresh_token": "r"}')
    assert Settings.from_env({}).kaggle_credentials
    assert Settings.from_env({"KAGGLE_CONFIG_DIR": str(tmp_path / "elsewhere")}).kaggle_credentials


def test_the_web_app_reports_a_bad_number_in_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`MAX_CONTENT_LENGTH=10MB` (a natural way to write 10 MB) failed every gunicorn worker's boot with
    `invalid literal for int() with base 10: '10MB'`, which names neither the variable nor the web app."""
    from workspace import free_port

    result = subprocess.run(
        [sys.executable, "-m", "flask_app"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "MAX_CONTENT_LENGTH": "10MB", "WEB_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "python -m flask_app: error: environment variable MAX_CONTENT_LENGTH: expected a whole number, "
        "got '10MB'\n",
    )
    # Under gunicorn without `python -m flask_app` (a worker's create_app) the error names it too.
    from flask_app import create_app

    monkeypatch.setenv("FEEDBACK_PER_MINUTE", "-6")
    with pytest.raises(
        ValueError, match="^environment variable FEEDBACK_PER_MINUTE: expected a number of at"
    ):
        create_app()
