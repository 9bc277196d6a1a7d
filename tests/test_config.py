"""Unit tier: the one typed params loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_committed_params_load() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.model.architecture == "SimpleCNN"
    assert params.mlflow.model_name == "deepguard"
    assert len(params.digest()) == 64


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["training"].update(epochz=3))
    with pytest.raises(ConfigError, match=r"training\.epochz: unknown key"):
        load_params(path)


def test_unknown_section_names_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw.update(secrets={"token": "x"}))
    with pytest.raises(ConfigError, match=r"secrets: unknown key"):
        load_params(path)


def test_wrong_type_names_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["training"].update(batch_size="big"))
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*integer"):
        load_params(path)


def test_string_number_is_a_wrong_type_not_a_silent_cast(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["training"].update(epochs="3"))
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_params(path)


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda raw: raw["model"].update(architecture="ResNet9000"))
    with pytest.raises(ConfigError, match=r"model\.architecture"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_overrides_are_validated_like_the_file() -> None:
    params = load_params(REPO / "params.yaml", ["training.epochs=1", "data.source=synthetic"])
    assert params.training.epochs == 1 and params.data.source == "synthetic"
    with pytest.raises(ConfigError, match=r"unknown key training\.epoch"):
        load_params(REPO / "params.yaml", ["training.epoch=1"])
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_params(REPO / "params.yaml", ["training.epochs=many"])


def test_params_hold_no_credentials() -> None:
    text = (REPO / "params.yaml").read_text().lower()
    for word in ("password", "token:", "kaggle_key", "secret"):
        assert word not in text
