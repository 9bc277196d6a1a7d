"""Unit tier: the one typed params loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_params, load_yaml

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


def test_documented_spellings_load_from_the_file(tmp_path: Path) -> None:
    """YAML 1.1 read unquoted ``off`` as a boolean and ``1e-3`` (no dot) as a string: both were refused."""
    text = (REPO / "params.yaml").read_text()
    for before, after in (
        ("mixed_precision: auto", "mixed_precision: off"),
        ("learning_rate: 0.003", "learning_rate: 1e-3"),
    ):
        assert before in text
        text = text.replace(before, after)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.training.mixed_precision == "off"
    assert params.training.learning_rate == 0.001


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("training.mixed_precision=off", "mixed_precision", "off"),
        ("training.mixed_precision=on", "mixed_precision", "on"),
        ("training.mixed_precision=auto", "mixed_precision", "auto"),
        ("training.learning_rate=3e-4", "learning_rate", 0.0003),
        ("training.learning_rate=1E-3", "learning_rate", 0.001),
        ("training.weight_decay=5e-2", "weight_decay", 0.05),
    ],
)
def test_documented_spellings_load_from_overrides(override: str, key: str, expected: object) -> None:
    params = load_params(REPO / "params.yaml", [override])
    assert getattr(params.training, key) == expected


def test_a_profile_value_json_writes_with_an_exponent_is_a_float(tmp_path: Path) -> None:
    """A profile's values go through JSON, which writes 0.00001 as 1e-05: a string to YAML 1.1."""
    profile = tmp_path / "profile.yaml"
    profile.write_text("training:\n  learning_rate: 0.00001\n  mixed_precision: off\n")
    params = load_params(REPO / "params.yaml", profile=profile)
    assert params.training.learning_rate == 1e-05 and params.training.mixed_precision == "off"


def test_the_spellings_stay_strict_elsewhere() -> None:
    with pytest.raises(ConfigError, match=r"training\.epochs: .*integer"):
        load_params(REPO / "params.yaml", ["training.epochs=1e2"])
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        load_params(REPO / "params.yaml", ["training.learning_rate=1e-3x"])
    with pytest.raises(ConfigError, match=r"training\.mixed_precision"):
        load_params(REPO / "params.yaml", ["training.mixed_precision=1"])
    with pytest.raises(ConfigError, match=r"model\.architecture"):
        load_params(REPO / "params.yaml", ["model.architecture=off"])  # a boolean, not mapped here
    assert yaml.safe_load("1e-3") == "1e-3", "PyYAML's own SafeLoader is left as it is"


@pytest.mark.parametrize("value", ["[", "{a: 1", "a: b: c"])
def test_an_override_that_is_not_yaml_is_one_line_naming_it(value: str) -> None:
    """A malformed ``--set`` value raised PyYAML's own error: a traceback instead of the one-line error."""
    with pytest.raises(ConfigError, match=r"override 'training\.epochs=.*': not valid YAML") as raised:
        load_params(REPO / "params.yaml", [f"training.epochs={value}"])
    assert "\n" not in str(raised.value)


def test_a_params_file_that_is_not_yaml_is_one_line_with_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: [\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid YAML: line 3, column 1: ") as raised:
        load_params(bad)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("override", ["split.seed=-1", "training.seed=-1", f"training.seed={2**32}"])
def test_a_seed_numpy_refuses_is_refused_by_name(override: str) -> None:
    """NumPy seeds only from 0 to 2**32 - 1 (``np.random.seed``, which Keras' ``set_random_seed`` calls) and
    ``default_rng`` only from 0: others passed the loader and the stage died on a ValueError traceback."""
    key = override.partition("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"{key}: Input should be"):
        load_params(REPO / "params.yaml", [override])


def test_every_seed_numpy_takes_is_accepted() -> None:
    params = load_params(REPO / "params.yaml", ["split.seed=0", f"training.seed={2**32 - 1}"])
    assert (params.split.seed, params.training.seed) == (0, 2**32 - 1)


@pytest.mark.parametrize(
    "override",
    [
        "training.time_budget_minutes=.inf",  # train: int(inf // epoch seconds) raised ValueError
        "training.learning_rate=.inf",  # NaN weights from the first step
        "monitoring.window_hours=.inf",  # monitor: timedelta(hours=inf) raised OverflowError
        "canary.watch_seconds=.inf",  # deploy would watch a canary forever
    ],
)
def test_an_infinite_number_is_refused_by_name(override: str) -> None:
    """YAML's ``.inf`` passed every ``gt``/``ge`` bound; no parameter means anything by it."""
    key = override.partition("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
        load_params(REPO / "params.yaml", [override])


def test_sample_per_class_below_two_is_refused_before_ingest_reads_anything() -> None:
    """preprocess needs an image of each class for train and one for validation (docs/pipeline.md: "2 at
    least"); 1 passed the loader, ingest read the whole source, and preprocess then stopped on it."""
    with pytest.raises(
        ConfigError, match=r"data\.sample_per_class: Input should be greater than or equal to 2"
    ):
        load_params(REPO / "params.yaml", ["data.sample_per_class=1"])
    assert load_params(REPO / "params.yaml", ["data.sample_per_class=2"]).data.sample_per_class == 2


def test_a_params_path_that_is_no_text_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """``--params`` given a folder, or a binary file, stopped the stage on IsADirectoryError or
    UnicodeDecodeError tracebacks instead of the one-line error."""
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: Is a directory$"):
        load_params(tmp_path)
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"\x97\xff\x00 binary")
    with pytest.raises(ConfigError, match=rf"^{binary}: not a UTF-8 text file"):
        load_params(binary)
    with pytest.raises(ConfigError, match=rf"{tmp_path}: cannot read"):
        load_params(REPO / "params.yaml", profile=tmp_path)


def test_a_profile_that_cannot_be_read_is_named_once(tmp_path: Path) -> None:
    profile = tmp_path / "params-gpu.yaml"
    profile.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError) as raised:
        load_params(REPO / "params.yaml", profile=profile)
    assert str(raised.value).startswith(f"{profile}: not valid YAML")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'absent.yaml'}: file not found$"):
        load_params(REPO / "params.yaml", profile=tmp_path / "absent.yaml")


def test_a_date_is_text_as_in_yaml_1_2(tmp_path: Path) -> None:
    """YAML 1.1 made an unquoted 2026-12-06 a date: in the file the mapping's copy failed on it (a TypeError
    traceback), and through --set the text the user typed was refused as "not a valid string"."""
    path = _write(tmp_path, lambda raw: None)
    path.write_text(path.read_text().replace("experiment: deepguard", "experiment: 2026-12-06"))
    assert load_params(path).mlflow.experiment == "2026-12-06"
    params = load_params(REPO / "params.yaml", ["mlflow.experiment=2026-12-06T10:00:00"])
    assert params.mlflow.experiment == "2026-12-06T10:00:00"
    assert not isinstance(yaml.safe_load("2026-12-06"), str), "PyYAML's own SafeLoader is left as it is"


def test_in_domain_formats_are_names_a_record_can_carry(tmp_path: Path) -> None:
    """Any string passed: a misspelt name (JPG) made every upload of that format out of domain, silently."""
    path = _write(tmp_path, lambda raw: raw["monitoring"].update(in_domain_formats=["JPEG", "JPG"]))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: monitoring.in_domain_formats.1: expected one of JPEG, PNG, WEBP")
    assert message.endswith("TIFF, RAW (any case), got 'JPG'") and "\n" not in message
    params = load_params(REPO / "params.yaml", ["monitoring.in_domain_formats=[jpeg, WebP, raw]"])
    assert params.monitoring.in_domain_formats == ["JPEG", "WEBP", "RAW"]


def test_every_format_the_predictor_reads_or_records_may_be_in_domain() -> None:
    from core.formats import FORMATS, RAW_FORMAT

    names = [f.name for f in FORMATS] + [RAW_FORMAT]
    params = load_params(REPO / "params.yaml", [f"monitoring.in_domain_formats=[{', '.join(names)}]"])
    assert params.monitoring.in_domain_formats == names


def test_a_bad_profile_value_is_blamed_on_the_profile(tmp_path: Path) -> None:
    """A profile's bad value was reported as params.yaml's, whose own value is fine."""
    profile = tmp_path / "params-gpu.yaml"
    profile.write_text("training:\n  batch_size: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_params(REPO / "params.yaml", profile=profile)
    assert str(raised.value) == f"{profile}: training.batch_size: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.epochs=-1", "training.epochs: Input should be greater than or equal to 1"),
        ("evaluation.extra_sets=[{name: a}]", "evaluation.extra_sets.0.path: Field required"),
    ],
)
def test_a_bad_override_is_blamed_on_the_override(tmp_path: Path, override: str, expected: str) -> None:
    profile = tmp_path / "params-gpu.yaml"
    profile.write_text("training:\n  epochs: 30\n")
    with pytest.raises(ConfigError) as raised:
        load_params(REPO / "params.yaml", [override], profile=profile)
    assert str(raised.value) == f"override {override!r}: {expected}"


def test_the_committed_gpu_profile_loads() -> None:
    params = load_params(REPO / "params.yaml", profile=REPO / "params-gpu.yaml")
    assert (params.training.batch_size, params.training.mixed_precision) == (512, "on")


@pytest.mark.parametrize("name", ["team/deepguard", "deepguard:v2", " ", "it's"])
def test_a_model_name_mlflow_or_register_cannot_use_is_refused_up_front(name: str) -> None:
    """MLflow's registry refuses blank names and '/' or ':', and register's version search filter breaks on a
    quote: all passed the loader and failed at register, after train and evaluate."""
    with pytest.raises(ConfigError, match=r"mlflow\.model_name: expected a name that is not blank") as raised:
        load_params(REPO / "params.yaml", [f"mlflow.model_name={json.dumps(name)}"])
    assert str(raised.value).endswith(f"got {name!r}")
    assert load_params(REPO / "params.yaml", ["mlflow.model_name=deep guard-2.1"]).mlflow.model_name


def test_extra_sets_of_one_name_are_refused_before_any_stage_runs(tmp_path: Path) -> None:
    """Their metric names would collide; evaluate refused them only after train had run."""
    sets = [{"name": "photos", "path": "a.zip"}, {"name": "photos", "path": "b.zip"}]
    path = _write(tmp_path, lambda raw: raw["evaluation"].update(extra_sets=sets))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: evaluation.extra_sets: names must differ, got photos, photos"


def test_a_monitoring_window_past_the_calendar_is_refused() -> None:
    """The monitor subtracts the window from now: 1e9 hours passed the loader and stopped the stage on an
    OverflowError traceback (date value out of range)."""
    with pytest.raises(
        ConfigError, match=r"monitoring\.window_hours: Input should be less than or equal to 8784"
    ):
        load_params(REPO / "params.yaml", ["monitoring.window_hours=1e9"])
    assert load_params(REPO / "params.yaml", ["monitoring.window_hours=8784"]).monitoring.window_hours == 8784


def test_a_misspelt_nested_key_is_named_as_written(tmp_path: Path) -> None:
    """A misspelling is a missing key and an unknown one; the missing one came first and the key as written
    hid in "(and 1 more)": 'augmentation.degradations.jpeg: Field required (and 1 more)'."""

    def misspell(raw: dict) -> None:
        raw["augmentation"]["degradations"]["jpg"] = raw["augmentation"]["degradations"].pop("jpeg")

    path = _write(tmp_path, misspell)
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: augmentation.degradations.jpg: unknown key (missing here: jpeg)"
    path = _write(tmp_path, lambda raw: raw.update(trainng=raw.pop("training")))
    with pytest.raises(ConfigError, match=r": trainng: unknown key \(missing here: training\)$"):
        load_params(path)


def test_a_misspelt_key_of_an_extra_set_is_named_as_written(tmp_path: Path) -> None:
    sets = [{"name": "photos", "pth": "a.zip"}]
    path = _write(tmp_path, lambda raw: raw["evaluation"].update(extra_sets=sets))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: evaluation.extra_sets.0.pth: unknown key (missing here: path)"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "training.epochs.max=3",
            "training.epochs has no keys below it; set it whole: training.epochs=VALUE",
        ),
        (
            "evaluation.extra_sets.0.name=x",
            "evaluation.extra_sets has no keys below it; set it whole: evaluation.extra_sets=VALUE",
        ),
        ("trainig.epochs=3", "unknown key trainig"),
    ],
)
def test_an_override_below_a_value_says_so(override: str, expected: str) -> None:
    """'--set training.epochs.max=3' said 'unknown key training.epochs', a key params.yaml has."""
    with pytest.raises(ConfigError) as raised:
        load_params(REPO / "params.yaml", [override])
    assert str(raised.value) == f"override {override!r}: {expected}"


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML kept the last of two ``epochs:`` silently, so a stage run alone trained with it while ``dvc
    repro``, whose YAML parser refuses duplicate keys, stopped on the same file with a multi-line error."""
    path = _write(tmp_path, lambda raw: None)
    text = path.read_text()
    path.write_text(text.replace("  epochs: 60\n", "  epochs: 60\n  epochs: 1\n", 1))
    line = text[: text.index("  epochs: 60\n")].count("\n") + 1
    with pytest.raises(
        ConfigError,
        match=rf"{path}: not valid YAML: line {line + 1}, column 3: "
        rf"duplicate key 'epochs' \(first on line {line}\)",
    ) as raised:
        load_params(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"override 'training=.*': not valid YAML: duplicate key 'epochs'"):
        load_params(REPO / "params.yaml", ["training={epochs: 1, epochs: 2}"])
    merged = "a: &defaults {epochs: 1}\nb:\n  <<: *defaults\n  seed: 2\n"
    assert load_yaml(merged)["b"] == {"epochs": 1, "seed": 2}, "a YAML merge key is not a duplicate"


def test_a_dotted_key_in_the_file_says_yaml_reads_it_as_one_name(tmp_path: Path) -> None:
    """``training.epochs: 3`` (the --set spelling) was refused as ``training.epochs: unknown key``: the very
    path the user meant, named as unknown."""
    path = _write(tmp_path, lambda raw: raw.update({"training.epochs": 3}))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value) == (
        f"{path}: 'training.epochs': unknown key (YAML reads a dotted key as one name: write epochs: under "
        "training:, or use --set training.epochs=VALUE)"
    )
    nested = _write(tmp_path, lambda raw: raw["augmentation"].update({"degradations.jpeg": 0.2}))
    with pytest.raises(ConfigError, match=r"augmentation\.'degradations\.jpeg': unknown key \(.* jpeg: "):
        load_params(nested)
