"""k8s/ prerequisites, the Airflow values and the DAG agree with the chart: names, labels, the GPU pool."""

from __future__ import annotations

import ast
import json
import subprocess

import yaml
from k8s_helpers import CHART, K8S_DIR, NAMESPACE, REPO, find, kubernetes_errors, render, tool

from deploy.manifest import DEFAULT_NAMESPACE as DEPLOY_NAMESPACE

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _k8s_objects() -> list[dict]:
    kustomized = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    secrets = (K8S_DIR / "secrets.template.yaml").read_text()
    return [d for text in (kustomized, secrets) for d in yaml.safe_load_all(text) if d]


def test_k8s_manifests_are_valid_kubernetes_1_33_strict() -> None:
    objects = _k8s_objects()
    assert {o["kind"] for o in objects} == {"Namespace", "Secret"}
    assert [e for o in objects for e in kubernetes_errors(o)] == []


def test_namespace_and_secret_names_match_the_chart() -> None:
    objects = _k8s_objects()
    assert find(objects, "Namespace")["metadata"]["name"] == NAMESPACE
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    assert set(secrets) == set(VALUES["secrets"].values())
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "deepguard"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE
    chart_labels = find(render("default"), "ConfigMap", "deepguard-serving")["metadata"]["labels"]
    assert chart_labels["app.kubernetes.io/part-of"] == "deepguard"


def test_secret_templates_hold_keys_but_no_values() -> None:
    for obj in _k8s_objects():
        if obj["kind"] == "Secret":
            assert "data" not in obj
            assert obj["stringData"], obj["metadata"]["name"]
            assert all(value == "" for value in obj["stringData"].values()), obj["metadata"]["name"]


def test_secret_keys_cover_what_the_chart_reads() -> None:
    objects = {o["metadata"]["name"]: o for o in _k8s_objects() if o["kind"] == "Secret"}
    keys = {name: set(obj["stringData"]) for name, obj in objects.items()}
    assert {
        "MLFLOW_TRACKING_URI",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
        VALUES["mlflow"]["backendStore"]["postgres"]["secretKey"],
    } <= keys["deepguard-mlflow"]
    assert keys["deepguard-kaggle"] == {"KAGGLE_USERNAME", "KAGGLE_KEY"}
    assert keys["deepguard-dagshub"] == {"DAGSHUB_USERNAME", "DAGSHUB_TOKEN", "DAGSHUB_REPO"}
    for obj in render("canary", mlflow__backendStore__type="postgres"):
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in keys[ref["name"]], ref


def test_gpu_pool_notes_match_the_chart_values() -> None:
    notes = (K8S_DIR / "README.md").read_text()
    gpu = VALUES["predictor"]["gpu"]
    for label, value in gpu["nodeSelector"].items():
        assert f"{label}={value}" in notes
    for toleration in gpu["tolerations"]:
        assert f"{toleration['key']}=" in notes and toleration["effect"] in notes
    assert gpu["resourceName"] in notes


def _dag_constants() -> dict[str, object]:
    """Module-level constants of dags/deepguard_pods.py (read, not imported: Airflow is another venv)."""
    tree = ast.parse((REPO / "dags" / "deepguard_pods.py").read_text())
    constants: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return constants


def test_dag_uses_the_chart_names() -> None:
    dag = _dag_constants()
    assert dag["DEFAULT_NAMESPACE"] == NAMESPACE
    # deploy outside a cluster without DEEPGUARD_NAMESPACE: the namespace the chart is installed in.
    assert DEPLOY_NAMESPACE == NAMESPACE
    assert dag["SERVICE_ACCOUNT"] == VALUES["pipeline"]["serviceAccount"]["name"]
    assert dag["DEPLOY_SERVICE_ACCOUNT"] == VALUES["pipeline"]["serviceAccount"]["deployName"]
    assert dag["WORKSPACE_CLAIM"] == VALUES["pipeline"]["workspace"]["claimName"]
    dag_secrets = {dag["MLFLOW_SECRET"], dag["KAGGLE_SECRET"], dag["DAGSHUB_SECRET"]}
    assert dag_secrets == set(VALUES["secrets"].values())
    registry, tag = VALUES["images"]["registry"], VALUES["images"]["tag"]
    assert dag["STAGE_IMAGE"] == f"{registry}/{VALUES['mlflow']['image']}:{tag}"
    assert dag["STAGE_GPU_IMAGE"] == f"{registry}/{VALUES['predictor']['gpu']['image']}:{tag}"


def test_airflow_values_deliver_the_dags_and_match_the_launcher_binding() -> None:
    airflow = yaml.safe_load((REPO / "helm" / "airflow-values.yaml").read_text())
    assert airflow["executor"] == "KubernetesExecutor"
    assert airflow["airflowVersion"].startswith("3.")
    sync = airflow["dags"]["gitSync"]
    assert sync["enabled"] is True and (REPO / sync["subPath"] / "deepguard_pipeline.py").is_file()
    worker = airflow["workers"]["serviceAccount"]["name"]
    launchers = VALUES["pipeline"]["rbac"]["launcherServiceAccounts"]
    assert {"name": worker, "namespace": "airflow"} in launchers


def test_airflow_values_turn_off_the_charts_admin_admin_user() -> None:
    """The official chart's create-user Job (gated by ``webserver.defaultUser.enabled``, on by default) made
    an Admin ``admin`` with the password ``admin``: anyone reaching the UI could trigger or edit runs. The
    values turn it off, and no password is written in them (docs/orchestration.md creates the first user)."""
    airflow = yaml.safe_load((REPO / "helm" / "airflow-values.yaml").read_text())
    assert airflow["webserver"]["defaultUser"] == {"enabled": False}
    assert "password" not in json.dumps(airflow).lower()


def _knative_flags(pod: dict) -> set[str]:
    """The Knative ``config-features`` flags a Serverless pod spec needs (its webhook refuses the rest)."""
    flags = set()
    if pod.get("nodeSelector"):
        flags.add("kubernetes.podspec-nodeselector")
    if pod.get("tolerations"):
        flags.add("kubernetes.podspec-tolerations")
    if pod.get("securityContext"):
        flags.add("kubernetes.podspec-securitycontext")
    volumes = pod.get("volumes", [])
    if any("emptyDir" in volume for volume in volumes):
        flags.add("kubernetes.podspec-volumes-emptydir")
    claims = {v["name"] for v in volumes if "persistentVolumeClaim" in v}
    if claims:
        flags.add("kubernetes.podspec-persistent-volume-claim")
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] in claims]
    if any(not m.get("readOnly") for m in mounts):
        flags.add("kubernetes.podspec-persistent-volume-write")
    return flags


def test_k8s_readme_names_every_knative_flag_the_predictor_needs() -> None:
    # GPU values bring nodeSelector and tolerations, a monitoring claim a writable PVC: with a flag missing,
    # Knative's webhook refuses the InferenceService's Knative Service and the predictor never starts.
    readme = (K8S_DIR / "README.md").read_text()
    needed = set()
    for values_set in ("gpu", "canary"):
        needed |= _knative_flags(find(render(values_set), "InferenceService")["spec"]["predictor"])
    assert {"kubernetes.podspec-nodeselector", "kubernetes.podspec-persistent-volume-write"} <= needed
    assert {flag for flag in needed if f"`{flag}`" not in readme} == set()
