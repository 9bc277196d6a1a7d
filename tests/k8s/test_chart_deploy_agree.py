"""The chart's InferenceService and the one the deploy stage builds are one object, for every values set."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from k8s_helpers import CHART, NAMESPACE, VALUES_SETS, find, render

from deploy.manifest import Champion, DeployError, ServingSettings, build_inference_service, to_manifest

CHAMPION = Champion(
    model_name="deepguard",
    version="7",
    artifact_uri="mlflow-artifacts:/1/models/m/artifacts",
    storage_uri="pvc://deepguard-mlflow/artifacts/1/models/m/artifacts",
)


def _settings(objects: list[dict]) -> ServingSettings:
    config_map = find(objects, "ConfigMap", "deepguard-serving")
    return ServingSettings.from_json(config_map["data"]["serving.json"])


@pytest.mark.parametrize("values_set", list(VALUES_SETS))
@pytest.mark.parametrize("canary", [None, 35])
def test_deploy_stage_builds_exactly_what_the_chart_renders(values_set: str, canary: int | None) -> None:
    extra = {"predictor__storageUri": CHAMPION.storage_uri, "predictor__modelVersion": CHAMPION.version}
    if canary is not None:
        extra["predictor__canaryTrafficPercent"] = canary
    objects = render(values_set, **extra)
    from_chart = find(objects, "InferenceService")
    if canary is None:  # the values file's own canary setting, if any
        for name in VALUES_SETS[values_set]:
            canary = yaml.safe_load((CHART / name).read_text())["predictor"].get("canaryTrafficPercent")
    isvc = build_inference_service(_settings(objects), NAMESPACE, CHAMPION, canary)
    built = to_manifest(isvc)
    assert built == from_chart


def test_builtin_defaults_equal_the_chart_defaults() -> None:
    """What `--dry-run` uses without a cluster is what a default install would configure."""
    chart = json.loads(find(render("default"), "ConfigMap", "deepguard-serving")["data"]["serving.json"])
    builtin = dataclasses.asdict(ServingSettings())
    chart_labels, builtin_labels = chart.pop("labels"), builtin.pop("labels")
    assert builtin == chart
    # Helm adds its own bookkeeping labels (chart version, managed-by); ours must be among them.
    assert builtin_labels.items() <= chart_labels.items()


def test_unknown_serving_settings_are_refused() -> None:
    text = find(render("default"), "ConfigMap", "deepguard-serving")["data"]["serving.json"]
    raw = json.loads(text)
    raw["replicas"] = 3
    with pytest.raises(DeployError, match="unreadable"):
        ServingSettings.from_json(json.dumps(raw))


def test_a_changed_template_is_caught() -> None:
    """The comparison above can fail: a chart-side difference shows up as an inequality."""
    objects = render("gpu", predictor__storageUri=CHAMPION.storage_uri, predictor__modelVersion="7")
    built = to_manifest(build_inference_service(_settings(objects), NAMESPACE, CHAMPION, None))
    chart = find(objects, "InferenceService")
    chart["spec"]["predictor"]["containers"][0]["readinessProbe"]["periodSeconds"] = 6
    assert built != chart
