"""The chart builds the InferenceService; the deploy stage changes only the champion, namespace and canary."""

from __future__ import annotations

import json

import pytest
import yaml
from k8s_helpers import CHART, NAMESPACE, VALUES_SETS, find, render

from deploy.manifest import Champion, DeployError, ServingConfig, rollout_manifest

CHAMPION = Champion(
    model_name="deepguard",
    version="7",
    artifact_uri="mlflow-artifacts:/1/models/m/artifacts",
    storage_uri="pvc://deepguard-mlflow/artifacts/1/models/m/artifacts",
)


def _config(objects: list[dict]) -> ServingConfig:
    return ServingConfig.from_config_map(find(objects, "ConfigMap", "deepguard-serving")["data"], "chart")


@pytest.mark.parametrize("values_set", list(VALUES_SETS))
@pytest.mark.parametrize("canary", [None, 35])
def test_a_rollout_equals_the_chart_rendered_with_that_champion(values_set: str, canary: int | None) -> None:
    """Patching the chart's base with a champion gives what helm renders for that champion: the three
    per-rollout fields are the only ones deploy touches, and it touches all of them."""
    extra = {"predictor__storageUri": CHAMPION.storage_uri, "predictor__modelVersion": CHAMPION.version}
    if canary is not None:
        extra["predictor__canaryTrafficPercent"] = canary
    from_chart = find(render(values_set, **extra), "InferenceService")
    if canary is None:  # the values file's own canary setting, if any
        for name in VALUES_SETS[values_set]:
            canary = (
                yaml.safe_load((CHART / name).read_text()).get("predictor", {}).get("canaryTrafficPercent")
            )
    base = _config(render(values_set))
    assert rollout_manifest(base, NAMESPACE, CHAMPION, canary) == from_chart


def test_a_rollout_leaves_the_chart_config_unchanged() -> None:
    config = _config(render("default"))
    before = json.dumps(config.base, sort_keys=True)
    rollout_manifest(config, NAMESPACE, CHAMPION, 20)
    assert json.dumps(config.base, sort_keys=True) == before


def test_a_config_map_without_the_manifest_is_refused() -> None:
    data = dict(find(render("default"), "ConfigMap", "deepguard-serving")["data"])
    del data["inferenceservice.json"]
    with pytest.raises(DeployError, match="no inferenceservice.json"):
        ServingConfig.from_config_map(data, "ConfigMap deepguard/deepguard-serving")
    with pytest.raises(DeployError, match="unreadable JSON"):
        ServingConfig.from_config_map({"inferenceservice.json": "{"}, "here")
