"""The one typed loader for params.yaml: frozen models that reject unknown keys and name the bad key path."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from core.errors import DeepGuardError
from core.formats import RECORDED_FORMATS

PARAMS_FILE = Path("params.yaml")

Architecture = Literal[
    "DeepGuardCNN",
    "SimpleCNN",
    "SimpleBatchNormCNN",
    "VGGStyleCNN",
    "DeeperCNN",
    "EfficientStyleCNN",
    "EfficientNetB0Transfer",
    "XceptionTransfer",
]


class ConfigError(DeepGuardError):
    """params.yaml (or an override) is missing, malformed, or has an unknown or mistyped key."""


class ParamsLoader(yaml.SafeLoader):
    """The YAML loader of params.yaml, profiles and ``--set`` values: safe, ``1e-3`` is a float, no dates.

    PyYAML implements YAML 1.1, whose floats need a dot, so ``learning_rate: 1e-3`` was the string "1e-3" and
    was refused; YAML 1.2 (and JSON, which a profile's values are turned into) read it as a number.
    """


# Only the form YAML 1.1 lacks (digits, an exponent, no dot) is added; every other scalar resolves as before.
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)
# Nor has YAML 1.2 timestamps: `experiment: 2026-12-06` is that text, not a date no parameter takes (a date
# also broke the copy of the mapping that overrides are applied to, with a TypeError traceback).
ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in ParamsLoader.yaml_implicit_resolvers.items()
}


def _construct_unique_mapping(loader: ParamsLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys differ: a key written twice is an error (as in YAML 1.2), not the last one kept.

    Adding ``epochs: 3`` under a section that already had ``epochs: 60`` ran a stage with 3 while ``dvc
    repro`` refused the same file (DVC's YAML parser rejects duplicate keys): the two disagreed on one file.
    """
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges keys; SafeLoader resolves it
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) or key is None:
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


ParamsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """Parse params-shaped YAML text with :class:`ParamsLoader`; raises ``yaml.YAMLError`` when malformed."""
    return yaml.load(text, Loader=ParamsLoader)  # a SafeLoader: builds plain data only, never objects


def _yaml_problem(exc: yaml.YAMLError, located: bool = True) -> str:
    """PyYAML's error on one line (its own text spans several): what is wrong, and where when ``located``."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if located and mark is not None else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


class _Section(BaseModel):
    # allow_inf_nan: YAML's .inf passes every gt/ge bound, and no parameter means anything by it (an infinite
    # time budget or monitoring window crashed the stage; null is how to switch the budget off).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataParams(_Section):
    source: Literal["auto", "kaggle", "local", "synthetic"]
    kaggle_dataset: str
    local_path: str | None
    image_size: int = Field(ge=8, le=512)
    # 2 at least: preprocess keeps an image of each class for train and one for validation.
    sample_per_class: int | None = Field(ge=2)
    synthetic_per_class: int = Field(ge=10)
    # Accepted user feedback (stages.feedback) merged into the train split: include | exclude.
    feedback: Literal["include", "exclude"]


# What NumPy seeds from: np.random.seed (Keras' set_random_seed calls it) takes 0 to 2**32 - 1, default_rng no
# negative number; any other seed passed here and stopped the stage on a ValueError traceback.
Seed = Field(ge=0, lt=2**32)


class SplitParams(_Section):
    validation_fraction: float = Field(gt=0.0, lt=0.5)
    seed: int = Seed


Probability = Field(ge=0.0, le=1.0)


class DegradationParams(_Section):
    """Per-image probabilities of the web degradations training applies in its input pipeline."""

    jpeg: float = Probability
    resample: float = Probability
    blur: float = Probability
    noise: float = Probability

    def scaled(self, factor: float) -> DegradationParams:
        """Every probability multiplied by ``factor`` (in [0, 1])."""
        return DegradationParams(**{name: p * factor for name, p in self.model_dump().items()})


class DegradationTailParams(_Section):
    """The end of a fit with fewer degradations: the last ``fraction`` of the planned epochs, each probability
    times ``scale``."""

    fraction: float = Field(ge=0.0, lt=1.0)
    scale: float = Field(ge=0.0, le=1.0)


# No degradation at all, and no tail: for callers that build a dataset without params.yaml (tests, benches).
NO_DEGRADATIONS = DegradationParams(jpeg=0.0, resample=0.0, blur=0.0, noise=0.0)
NO_TAIL = DegradationTailParams(fraction=0.0, scale=1.0)


class AugmentationParams(_Section):
    horizontal_flip: bool
    translate: float = Field(ge=0.0, le=0.5)
    contrast: float = Field(ge=0.0, le=1.0)
    degradations: DegradationParams
    degradation_tail: DegradationTailParams
    mixup_alpha: float = Field(ge=0.0, le=1.0)
    cutmix: float = Probability


# No augmentation at all: for callers that build a model without params.yaml (tests, benches).
NO_AUGMENTATION = AugmentationParams(
    horizontal_flip=False,
    translate=0.0,
    contrast=0.0,
    degradations=NO_DEGRADATIONS,
    degradation_tail=NO_TAIL,
    mixup_alpha=0.0,
    cutmix=0.0,
)


class ModelParams(_Section):
    architecture: Architecture
    pretrained_weights: str
    dropout: float = Field(ge=0.0, lt=1.0)
    spectrum_branch: bool
    test_time_flip: bool


class TrainingParams(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    early_stopping_patience: int = Field(ge=1)
    seed: int = Seed
    mixed_precision: Literal["auto", "on", "off"]
    time_budget_minutes: float | None = Field(gt=0.0)
    label_smoothing: float = Field(ge=0.0, lt=0.5)
    ema_momentum: float | None = Field(gt=0.0, lt=1.0)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        # YAML 1.1 reads the documented `on` and `off`, unquoted, as booleans: take them back (this key only).
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class ExtraSetParams(_Section):
    """One extra evaluation set: a folder or zip with ``REAL/`` and ``FAKE/`` image folders."""

    # Used in metric names (``extra_<name>_accuracy``), so only characters MLflow and DVC keep as they are.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    path: str = Field(min_length=1)


class CalibrationParams(_Section):
    enabled: bool
    # Both fitted on validation, both keep the ranking (ROC-AUC) unchanged: temperature (one parameter) or
    # platt (temperature and an offset on the logit).
    method: Literal["temperature", "platt"]


class EvaluationParams(_Section):
    threshold_metric: Literal["accuracy", "f1"]
    calibration_bins: int = Field(ge=2, le=100)
    robustness_sample: int | None = Field(ge=1)
    extra_sets: list[ExtraSetParams]
    band_precision: float = Field(gt=0.5, le=1.0)

    @field_validator("extra_sets")
    @classmethod
    def _distinct_names(cls, sets: list[ExtraSetParams]) -> list[ExtraSetParams]:
        # Each name makes metric names; two sets of one name were refused by evaluate only, after train.
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise PydanticCustomError(
                "duplicate_names", "names must differ, got {names}", {"names": ", ".join(names)}
            )
        return sets


class PromotionParams(_Section):
    metric: Literal["accuracy", "roc_auc", "f1", "precision", "recall"]
    min_improvement: float = Field(ge=0.0)
    max_robustness_drop: float = Field(ge=0.0)


def _registered_model_name(name: str) -> str:
    """A name MLflow's registry takes (not blank, no ``/`` or ``:``) and register's search filter quotes."""
    if not name.strip() or any(c in name for c in "/:'"):
        raise PydanticCustomError(
            "model_name",
            "expected a name that is not blank and has no '/', ':' or \"'\", got {name}",
            {"name": repr(name)},
        )
    return name


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    # Else refused only by register, after train and evaluate (MLflow's rule, and its search filter's quote).
    model_name: Annotated[str, AfterValidator(_registered_model_name)]


class CanaryParams(_Section):
    """How deploy judges a canary from Prometheus (used only when a Prometheus URL is configured)."""

    watch_seconds: float = Field(gt=0)
    max_error_ratio_increase: float = Field(ge=0.0, le=1.0)
    max_p99_ratio: float = Field(ge=1.0)
    p99_slack_seconds: float = Field(ge=0.0)
    max_score_shift: float = Field(gt=0.0, le=1.0)
    min_requests: int = Field(ge=1)
    without_evidence: Literal["promote", "rollback"]


def _recorded_format(name: str) -> str:
    """A format a served record can name (any case, as the monitor compares them), as it is recorded."""
    if name.upper() not in RECORDED_FORMATS:
        raise PydanticCustomError(
            "unknown_format",
            "expected one of {allowed} (any case), got {name}",
            {"allowed": ", ".join(RECORDED_FORMATS), "name": repr(name)},
        )
    return name.upper()


class MonitoringParams(_Section):
    """The drift monitor's window and alarm thresholds (stages.monitor, DAG deepguard_monitor)."""

    # At most a year: the window's start is computed as a date, which a few thousand years would overflow.
    window_hours: float = Field(gt=0.0, le=24 * 366)
    min_records: int = Field(ge=1)
    psi_threshold: float = Field(gt=0.0)
    ks_pvalue: float = Field(gt=0.0, lt=1.0)
    ks_statistic: float = Field(gt=0.0, le=1.0)
    ood_share: float = Field(ge=0.0, le=1.0)
    # Checked against core.formats: a name no record carries (JPG) made every such upload out of domain.
    in_domain_formats: list[Annotated[str, AfterValidator(_recorded_format)]] = Field(min_length=1)
    schedule: str = Field(min_length=1)


class Params(_Section):
    """Every tunable of the pipeline, as read from params.yaml."""

    data: DataParams
    split: SplitParams
    augmentation: AugmentationParams
    model: ModelParams
    training: TrainingParams
    calibration: CalibrationParams
    evaluation: EvaluationParams
    promotion: PromotionParams
    mlflow: MlflowParams
    canary: CanaryParams
    monitoring: MonitoringParams

    def digest(self) -> str:
        """Return a stable sha256 of the parameters, for lineage tags."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw params mapping.

    Args:
        raw: The mapping read from params.yaml; it is not modified.
        overrides: Items such as ``training.epochs=1``.

    Returns:
        A new mapping with the overrides applied.
    """
    result = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        *parents, leaf = key.split(".")
        node = result
        for i, part in enumerate(parents):
            here = ".".join(parents[: i + 1])
            if part not in node:
                raise ConfigError(f"override {item!r}: unknown key {here}")
            if not isinstance(node[part], dict):  # a number, a list (extra_sets): not a section of keys
                raise ConfigError(
                    f"override {item!r}: {here} has no keys below it; set it whole: {here}=VALUE"
                )
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {item!r}: unknown key {key}")
        try:
            node[leaf] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: not valid YAML: {_yaml_problem(exc, located=False)}"
            ) from None
    return result


def _key_path(override: str) -> tuple[str, ...]:
    """The key path an override sets: ``("training", "epochs")`` for ``training.epochs=1``."""
    return tuple(override.partition("=")[0].split("."))


def _read_mapping(path: Path) -> dict:
    """A params-shaped YAML file as a mapping; a missing file, bad YAML or another shape is one line."""
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:  # a folder, a file we may not read
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def profile_overrides(path: Path) -> list[str]:
    """Read a profile (a partial params file, e.g. params-gpu.yaml) as ``key.path=value`` overrides.

    A profile holds only the keys it changes, so params.yaml stays the one place of every other value.

    Args:
        path: The profile: a YAML mapping shaped like params.yaml.

    Returns:
        One override per leaf value, for :func:`load_params`.

    Raises:
        ConfigError: naming the file when it is missing or not a mapping.
    """
    raw = _read_mapping(path)

    def leaves(prefix: str, node: object) -> list[str]:
        if isinstance(node, dict) and node:
            return [item for key, value in node.items() for item in leaves(f"{prefix}{key}.", value)]
        return [f"{prefix.rstrip('.')}={json.dumps(node)}"]  # JSON is YAML: the value parses back as written

    return leaves("", raw)


def load_params(
    path: Path = PARAMS_FILE, overrides: list[str] | None = None, profile: Path | None = None
) -> Params:
    """Load and validate params.yaml.

    Args:
        path: The params file.
        overrides: Optional ``key.path=value`` items applied before validation (after the profile).
        profile: Optional partial params file whose values replace those of ``path`` (e.g. params-gpu.yaml).

    Returns:
        The validated, frozen parameters.

    Raises:
        ConfigError: naming the file and the key path of the first problem found.
    """
    raw = _read_mapping(path)
    from_profile = profile_overrides(profile) if profile else []  # its errors name the profile already
    try:
        raw = apply_overrides(raw, from_profile)
    except ConfigError as exc:
        raise ConfigError(f"{profile}: {exc}") from None
    raw = apply_overrides(raw, overrides or [])
    # Where each overridden key's value came from (the last one wins, as in apply_overrides), so that a bad
    # value is blamed on the profile or the override that set it, not on a params file that holds a good one.
    sources = {_key_path(item): str(profile) for item in from_profile}
    sources.update({_key_path(item): f"override {item!r}" for item in overrides or []})
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key is an unknown key and a missing one: name the key as written, then the missing one.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(str(part) for part in first["loc"])
        where = ".".join(loc) or "(top level)"
        source = next((sources[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in sources), path)
        message, told = first["msg"], 1
        if first["type"] == "extra_forbidden":
            beside = [e["loc"] for e in errors if e["type"] == "missing" and len(e["loc"]) == len(loc)]
            missing = [str(at[-1]) for at in beside if tuple(map(str, at[:-1])) == loc[:-1]]
            message = f"unknown key (missing here: {', '.join(missing)})" if missing else "unknown key"
            told += len(missing)
            if "." in loc[-1]:  # `training.epochs: 3` is one key named "training.epochs" in YAML, not a path
                section, _, leaf = loc[-1].rpartition(".")
                where = ".".join([*loc[:-1], repr(loc[-1])])
                message += (
                    f" (YAML reads a dotted key as one name: write {leaf}: under {section}:, "
                    f"or use --set {'.'.join(loc)}=VALUE)"
                )
        more = f" (and {len(errors) - told} more)" if len(errors) > told else ""
        raise ConfigError(f"{source}: {where}: {message}{more}") from None
