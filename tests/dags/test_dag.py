"""The DAG as Airflow loads it: light imports, the stage list's tasks in order, the pods they would create."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagtools import DAGS_DIR, REPO, render_task

from core.cli import stage_parser
from core.config import load_params
from core.pipeline import DEPLOY, STAGES, Stage

RUN_ID = "manual__2026-01-02T03:04:05.678901+00:00"
# The id with ":" and "+" made plain, then 8 hex digits of its sha256 (the id was changed to make the name).
RUN_DIR = "/workspace/runs/manual__2026-01-02T03-04-05.678901-00-00-f8997394"
ALL_STAGES: tuple[Stage, ...] = (*STAGES, DEPLOY)
GPU_STAGES = [stage.name for stage in ALL_STAGES if stage.resources.gpu]

# Loads the DAG file in a fresh interpreter, after Airflow and the Kubernetes provider, and reports what the
# file itself added: import errors, parse time and the modules it pulled in.
_PROBE = """
import json, sys, time
import airflow.sdk
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - start
added = sorted({name.split(".")[0] for name in set(sys.modules) - before})
pipeline = bag.dags.get("deepguard_pipeline")
train = pipeline.get_task("train") if pipeline else None
deploy = pipeline.get_task("deploy") if pipeline else None
pods = [task for dag in bag.dags.values() for task in dag.tasks if isinstance(task, KubernetesPodOperator)]
print(json.dumps({
    "errors": bag.import_errors, "dags": sorted(bag.dags), "seconds": seconds, "added": added,
    "heavy": sorted(m for m in ("tensorflow", "keras", "mlflow", "PIL", "sklearn", "kserve", "numpy")
                    if m in sys.modules),
    "node_selector": train.node_selector if train else None,
    "tolerations": [t.to_dict() for t in train.tolerations] if train else None,
    "resources": train.container_resources.to_dict() if train else None,
    "priority_class": train.priority_class_name if train else None,
    "cpu_pods": sorted({(t.priority_class_name, json.dumps(t.container_resources.to_dict(), sort_keys=True),
                         json.dumps(t.node_selector), json.dumps(t.tolerations))
                        for t in pipeline.tasks if t.task_id != "train"}) if pipeline else None,
    "schedule": str(pipeline.schedule) if pipeline else None,
    "deploy_env": dict(deploy.env_vars) if deploy else None,
    "namespaces": sorted({task.namespace for task in pods}),
    "files": sorted(stat.file.rsplit("/", 1)[-1] for stat in bag.dagbag_stats),
}))
if bag.dags:
    from deepguard_pods import LOCAL_RUNNER
    print(json.dumps({
        "workspace": str(LOCAL_RUNNER.paths["/workspace"]),
        "python": str(LOCAL_RUNNER.python),
        "tracking": LOCAL_RUNNER.default_env["MLFLOW_TRACKING_URI"],
    }))
"""


def _run_script(script: str, path: Path, extra_env: dict[str, str] | None = None) -> list[str]:
    """The output lines of ``script`` run on ``path`` in a fresh interpreter, without DEEPGUARD_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPGUARD_")}
    env.update(extra_env or {})
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def _probe(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    lines = _run_script(_PROBE, DAGS_DIR, extra_env)
    report, *local = (json.loads(line) for line in lines if line.startswith("{"))
    return {**report, "local_runner": local[0] if local else None}


def test_dag_file_loads_without_errors_or_heavy_imports() -> None:
    report = _probe()
    assert report["errors"] == {}
    assert report["dags"] == ["deepguard_monitor", "deepguard_pipeline"]
    # The helper modules beside the DAG files are in .airflowignore: the DAG processor would otherwise import
    # each one as a DAG file on every parse loop and list its errors a second time.
    assert report["files"] == ["deepguard_monitor.py", "deepguard_pipeline.py"]
    assert report["heavy"] == [], f"the DAG file imported {report['heavy']}"
    assert report["namespaces"] == ["deepguard"]  # where the chart's docs install it
    # No Prometheus set on the Airflow deployment: deploy promotes a Ready canary (docs/monitoring.md).
    assert "DEEPGUARD_PROMETHEUS_URL" not in report["deploy_env"]
    # Besides Airflow and the Kubernetes models, the file may bring in only the stage list (and its config
    # types), the operator beside it, and Airflow's own lazily imported parsing modules.
    ours = {
        name for name in report["added"] if name in {"core", "stages", "deepguard_operator", "deepguard_pods"}
    }
    assert ours == {"core", "deepguard_operator", "deepguard_pods"}
    unexpected = [
        name
        for name in report["added"]
        if not name.startswith(("airflow", "unusual_prefix", "_"))
        # packaging: the standard provider's version checks (ShortCircuit/TriggerDagRun of the monitor DAG).
        and name not in {"core", "deepguard_operator", "deepguard_pods", "packaging"}
    ]
    assert unexpected == [], f"the DAG file pulled in {unexpected}"
    print(f"DAG file parse time (after Airflow is imported): {report['seconds'] * 1000:.0f} ms")


# What the DAG processor does for each parse of a file: import the `airflow.*` modules the file itself names
# (parsing_pre_import_modules), then fork a process that parses it. Reports what the parse still imported.
_PARSE_PROBE = """
import importlib, json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.file import iter_airflow_imports
for module in iter_airflow_imports(sys.argv[1]):
    importlib.import_module(module)
before = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"errors": bag.import_errors, "added": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("dag_file", ["deepguard_pipeline.py", "deepguard_monitor.py"])
def test_the_dag_processor_imports_the_provider_once_not_on_every_parse(dag_file: str) -> None:
    # The provider and the Kubernetes client take seconds to import (45 s a parse on 2 busy cores, measured in
    # `make airflow`); a DAG file that leaves them to its helper modules pays that on every parse, every 30 s.
    report = json.loads(_run_script(_PARSE_PROBE, DAGS_DIR / dag_file)[-1])
    assert report["errors"] == {}
    reimported = [name for name in report["added"] if name.startswith(("airflow.providers", "kubernetes"))]
    assert reimported == [], f"each parse of {dag_file} imports {reimported[:5]} ({len(reimported)} modules)"


def test_tasks_are_the_stage_list_in_order_then_deploy(dag: Any) -> None:
    names = [stage.name for stage in ALL_STAGES]
    assert sorted(dag.task_ids) == sorted(names)
    for previous, current in zip(names, names[1:], strict=False):
        assert dag.get_task(current).upstream_task_ids == {previous}
    assert dag.get_task(names[0]).upstream_task_ids == set()
    assert dag.get_task(names[-1]).downstream_task_ids == set()
    # The DAG's page in the Airflow UI names the same stages in the same order (it named six by hand).
    assert f"**{' → '.join(names)}**" in dag.doc_md


def test_dag_settings(dag: Any) -> None:
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.schedule == "@weekly"
    assert "deepguard-workspace" in dag.doc_md
    assert set(dag.params) == {
        "architecture",
        "epochs",
        "data_source",
        "sample_per_class",
        "deploy",
        "reason",
    }
    for stage in ALL_STAGES:
        task = dag.get_task(stage.name)
        assert task.on_finish_action.value == "delete_pod"
        assert task.get_logs is True
        assert task.retries == 2
        assert task.retry_exponential_backoff
        assert task.execution_timeout is not None
        assert task.doc_md == stage.description
    timeouts = {stage.name: dag.get_task(stage.name).execution_timeout for stage in ALL_STAGES}
    cpu_stages = [name for name in timeouts if name not in GPU_STAGES]
    assert GPU_STAGES and all(timeouts[gpu] > timeouts[name] for gpu in GPU_STAGES for name in cpu_stages)


@pytest.mark.parametrize("stage", ALL_STAGES, ids=lambda stage: stage.name)
def test_rendered_pod(dag: Any, stage: Stage) -> None:
    pod = render_task(dag, stage.name, run_id=RUN_ID).build_pod_request_obj(dry_run=True)
    (container,) = pod.spec.containers
    gpu = stage.resources.gpu > 0
    image = "stage-gpu" if gpu else "stage"
    assert container.image == f"ghcr.io/deepguard/{image}:0.1.0"
    assert container.command == stage.command
    target = ["--target", "kserve"] if stage is DEPLOY else []
    # Default params: no override at all, the image's params.yaml and the GPU profile beside it decide, in
    # every pod of the run (register's params hash describes the params train used).
    profile = ["--profile", "/app/params-gpu.yaml"]
    assert container.args == ["--params", "/app/params.yaml", *profile, "--workdir", RUN_DIR, *target]
    # The stage's own parser reads the profile (the images copy it beside params.yaml: tests/test_images.py).
    args = stage_parser(stage.name, "").parse_args(
        container.args[: -len(target)] if target else container.args
    )
    pod_params = load_params(
        REPO / args.params.relative_to("/app"), profile=REPO / args.profile.relative_to("/app")
    )
    gpu_profile = load_params(REPO / "params.yaml", profile=REPO / "params-gpu.yaml")
    assert pod_params.training == gpu_profile.training
    assert pod_params.training.time_budget_minutes is None and pod_params.training.mixed_precision == "on"
    assert pod.metadata.namespace == "deepguard"
    assert pod.metadata.name.startswith(f"deepguard-{stage.name}-")
    assert pod.metadata.labels["deepguard.io/stage"] == stage.name
    # The chart's MLflow NetworkPolicy admits pods with these labels only (tests/k8s/test_chart.py).
    assert pod.metadata.labels["app.kubernetes.io/name"] == "deepguard"
    assert pod.metadata.labels["app.kubernetes.io/component"] == "pipeline"
    # Least privilege: only deploy gets an API token, as the ServiceAccount the chart binds to its Role.
    if stage is DEPLOY:
        assert pod.spec.service_account_name == "deepguard-deploy"
        assert pod.spec.automount_service_account_token is True
    else:
        assert pod.spec.service_account_name == "deepguard-pipeline"
        assert pod.spec.automount_service_account_token is False

    resources = container.resources
    assert resources.requests == {"cpu": stage.resources.cpu, "memory": stage.resources.memory}
    limits = {"cpu": stage.resources.cpu_limit, "memory": stage.resources.memory_limit}
    if gpu:
        limits["nvidia.com/gpu"] = str(stage.resources.gpu)
    assert resources.limits == limits
    if gpu:
        assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
        assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
            ("nvidia.com/gpu", "Exists", "NoSchedule")
        ]
    else:
        assert not pod.spec.node_selector
        assert not pod.spec.tolerations

    (volume,) = pod.spec.volumes
    assert volume.persistent_volume_claim.claim_name == "deepguard-workspace"
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [(volume.name, "/workspace")]
    secrets = {source.secret_ref.name: bool(source.secret_ref.optional) for source in container.env_from}
    expected = {"deepguard-mlflow": False, "deepguard-dagshub": True}
    if stage.name == "ingest":
        expected["deepguard-kaggle"] = True
    assert secrets == expected
    env = {var.name: var.value for var in container.env}
    assert env["DEEPGUARD_RUN_ID"] == RUN_ID
    assert not any(name.startswith(("MLFLOW_", "KAGGLE_", "DAGSHUB_")) for name in env), "credentials in DAG"
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False


def test_trigger_params_become_overrides_the_stages_accept(dag: Any) -> None:
    chosen = {"architecture": "SimpleCNN", "epochs": 3, "data_source": "local", "sample_per_class": 100}
    pod = render_task(dag, "train", chosen, run_id=RUN_ID).build_pod_request_obj(dry_run=True)
    args = pod.spec.containers[0].args
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    assert len(overrides) == 4
    # The stages' own loader reads them: the DAG and the stage config cannot drift apart unnoticed.
    params = load_params(REPO / "params.yaml", overrides)
    assert params.model.architecture == "SimpleCNN"
    assert params.training.epochs == 3
    assert params.data.source == "local"
    assert params.data.sample_per_class == 100


@pytest.mark.parametrize(
    "bad",
    [
        {"architecture": "ResNet50"},
        {"epochs": 0},
        {"data_source": "s3"},
        {"sample_per_class": -5},
        {"sample_per_class": 1},  # params.yaml needs 2: an image of each class for train and validation
        {"deploy": "yes"},
    ],
)
def test_invalid_trigger_params_are_rejected(dag: Any, bad: dict[str, Any]) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        render_task(dag, "ingest", bad)


@pytest.mark.parametrize("task_id", ["ingest", "deploy"])
def test_an_unknown_trigger_param_fails_the_task_without_retries(dag: Any, task_id: str) -> None:
    # Airflow keeps a conf key that is no DAG param, so `-c '{"epoch": 5}'` would train with params.yaml's
    # epochs and say nothing.
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    task = render_task(dag, task_id)
    context = {"params": {"deploy": True}, "dag_run": SimpleNamespace(conf={"epoch": 5, "epochs": 1})}
    with pytest.raises(AirflowFailException, match=r"unknown trigger param\(s\) epoch: the params of"):
        task.execute(context)


def test_pods_may_wait_for_a_node_and_an_image_pull(dag: Any) -> None:
    # The provider gives a pod 2 minutes to be scheduled and 2 to start: train failed its tries while the
    # autoscaler added a GPU node or the node pulled the CUDA image. A missing image still fails at once
    # (the provider's early ErrImagePull/InvalidImageName check does not wait for these).
    for task in dag.tasks:
        gpu = task.task_id in GPU_STAGES
        assert task.schedule_timeout_seconds == (3600 if gpu else 900), task.task_id
        assert task.startup_timeout_seconds == (1200 if gpu else 600), task.task_id
        waits = task.schedule_timeout_seconds + task.startup_timeout_seconds
        assert waits < task.execution_timeout.total_seconds() / 2, "waiting would eat the stage's time"


def test_the_ui_says_which_file_an_empty_trigger_field_keeps(dag: Any) -> None:
    # The form said "(empty: params.yaml)" for every field, but in a cluster every pod reads the GPU profile
    # over params.yaml: an empty Epochs trained the profile's epochs, not the ones the form pointed at.
    import yaml
    from deepguard_pipeline import OVERRIDES

    profile = yaml.safe_load((REPO / "params-gpu.yaml").read_text())
    profile_keys = {f"{section}.{key}" for section, values in profile.items() for key in values}
    assert profile_keys & set(OVERRIDES.values()), "no trigger param is set by the profile: test nothing"
    for param, key in OVERRIDES.items():
        description = dag.params.get_param(param).description
        assert ("params-gpu.yaml" in description) is (key in profile_keys), (param, description)
    assert "an empty field keeps the value of the image's `params.yaml` and GPU profile" in " ".join(
        dag.doc_md.split()
    )


def test_architecture_choices_are_the_configs(dag: Any) -> None:
    from typing import get_args

    from core.config import Architecture

    assert dag.params.get_param("architecture").schema["enum"] == [None, *get_args(Architecture)]


def test_deploy_is_skipped_when_the_param_says_so(dag: Any) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    task = render_task(dag, "deploy", {"deploy": False})
    with pytest.raises(AirflowSkipException):
        task.execute({"params": {"deploy": False}})


def test_namespace_gpu_placement_schedule_and_canary_prometheus_are_configurable() -> None:
    report = _probe(
        {
            "DEEPGUARD_GPU_NODE_SELECTOR": json.dumps({"cloud.google.com/gke-accelerator": "nvidia-l4"}),
            "DEEPGUARD_GPU_TOLERATIONS": json.dumps(
                [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoExecute"}]
            ),
            "DEEPGUARD_SCHEDULE": "0 3 * * 1",
            "DEEPGUARD_PROMETHEUS_URL": "http://prometheus-operated.monitoring:9090",
            "DEEPGUARD_NAMESPACE": "ml-deepguard",
        }
    )
    # Every pod of both DAGs goes to the namespace the chart was installed in (helm install -n ml-deepguard).
    assert report["namespaces"] == ["ml-deepguard"]
    # The deploy pod judges canaries by the Prometheus of the Airflow deployment's environment.
    assert report["deploy_env"]["DEEPGUARD_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring:9090"
    assert report["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    tolerations = [(t["key"], t["value"], t["effect"]) for t in report["tolerations"]]
    assert tolerations == [("gpu", "yes", "NoExecute")]
    assert report["schedule"] == "0 3 * * 1"


def test_train_pods_resources_gpu_count_and_priority_class_are_settings() -> None:
    default = _probe()
    report = _probe(
        {
            "DEEPGUARD_GPU_RESOURCES": json.dumps(
                {
                    "requests": {"cpu": "6", "memory": "48Gi"},
                    "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"},
                }
            ),
            "DEEPGUARD_GPU_PRIORITY_CLASS": "gpu-training",
        }
    )
    assert report["errors"] == {}
    # Amount by amount over the stage list's: the CPU limit not named keeps its value.
    assert report["resources"]["requests"] == {"cpu": "6", "memory": "48Gi"}
    assert report["resources"]["limits"] == {
        "cpu": default["resources"]["limits"]["cpu"],
        "memory": "64Gi",
        "nvidia.com/gpu": "2",
    }
    assert report["priority_class"] == "gpu-training" and default["priority_class"] is None
    # The CPU stages' pods are the same with or without the GPU settings: no GPU, no priority class.
    assert report["cpu_pods"] == default["cpu_pods"]
    assert all(priority is None for priority, *_ in report["cpu_pods"])


def test_relative_local_runner_paths_are_relative_to_the_repository() -> None:
    # Each stage changes into its run folder: a relative workspace would give every run its own MLflow store
    # (no shared champion) and monitoring folder inside that run folder.
    relative = {"DEEPGUARD_LOCAL_WORKSPACE": ".airflow/ws", "DEEPGUARD_LOCAL_PYTHON": ".venv/bin/python"}
    report = _probe(relative)
    assert report["local_runner"] == {
        "workspace": str(REPO / ".airflow" / "ws"),
        "python": str(REPO / ".venv" / "bin" / "python"),
        "tracking": f"sqlite:///{REPO / '.airflow' / 'ws' / 'mlruns' / 'mlflow.db'}",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEEPGUARD_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true"),
        ("DEEPGUARD_GPU_TOLERATIONS", '{"key": "nvidia.com/gpu", "operator": "Exists"}'),
        ("DEEPGUARD_TASK_RETRIES", "two"),
    ],
)
def test_a_bad_setting_is_named_in_the_import_error(name: str, value: str) -> None:
    errors = _probe({name: value})["errors"]
    assert sorted(Path(file).name for file in errors) == ["deepguard_monitor.py", "deepguard_pipeline.py"]
    for error in errors.values():
        assert error.strip().splitlines()[-1].startswith(f"deepguard_pods.SettingError: {name}="), error


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (
            "DEEPGUARD_GPU_NODE_SELECTOR",
            '{"nvidia.com/gpu.present": true}',
            "true is not a string (quote it)",
        ),
        ("DEEPGUARD_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exist"}]', "'Exist'"),
        ("DEEPGUARD_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "effect": "NoSchedul"}]', "'NoSchedul'"),
        ("DEEPGUARD_GPU_RESOURCES", '{"limits": {"memory": "64GB"}}', '"64GB" is not a Kubernetes quantity'),
        ("DEEPGUARD_GPU_RESOURCES", '{"limits": {"nvidia.com/gpu": 2}}', "2 is not a whole number"),
        ("DEEPGUARD_GPU_RESOURCES", '{"requests": {"nvidia.com/gpu": "2"}}', "set limits.nvidia.com/gpu"),
        ("DEEPGUARD_GPU_RESOURCES", '{"request": {"cpu": "8"}}', "request: not requests or limits"),
        ("DEEPGUARD_GPU_RESOURCES", '{"requests": {"memory": "64Gi"}}', "is more than its limit 16Gi"),
        ("DEEPGUARD_GPU_PRIORITY_CLASS", "GPU_Training", "not a PriorityClass name"),
    ],
)
def test_a_train_pod_setting_kubernetes_would_refuse_is_named_in_the_import_error(
    name: str, value: str, says: str
) -> None:
    # Kubernetes would refuse the pod only when train starts, after ingest, preprocess and features ran.
    errors = _probe({name: value})["errors"]
    assert "deepguard_pipeline.py" in {Path(file).name for file in errors}
    for error in errors.values():
        last = error.strip().splitlines()[-1]
        assert last.startswith(f"deepguard_pods.SettingError: {name}") and says in last, error


@pytest.mark.parametrize(
    ("settings", "bad", "dag_file"),
    [
        # The monitor's schedule with spaces around it, as a YAML block or a shell may leave it, is fine.
        (
            {"DEEPGUARD_SCHEDULE": "every week", "DEEPGUARD_MONITOR_SCHEDULE": " @daily "},
            0,
            "deepguard_pipeline.py",
        ),
        ({"DEEPGUARD_MONITOR_SCHEDULE": "0 25 * * *"}, 0, "deepguard_monitor.py"),
    ],
)
def test_a_bad_schedule_is_named_in_the_import_error(
    settings: dict[str, str], bad: int, dag_file: str
) -> None:
    # Airflow's own error comes from inside DAG(...) and names neither the variable nor (for a wrong number of
    # fields) the value: "Exactly 5, 6 or 7 columns has to be specified for iterator expression."
    name, value = list(settings.items())[bad]
    report = _probe(settings)
    assert [Path(file).name for file in report["errors"]] == [dag_file]
    (error,) = report["errors"].values()
    last = error.strip().splitlines()[-1]
    assert last.startswith(
        f"deepguard_pods.SettingError: {name}={value!r}: not a cron expression or preset"
    ), last


def test_local_runner_runs_exactly_the_pods_command(dag: Any, tmp_path: Path) -> None:
    from deepguard_operator import LocalRunner

    runner = LocalRunner(
        python=tmp_path / "venv" / "bin" / "python",
        paths={"/workspace": tmp_path / "ws", "/app": REPO},
        cwd=REPO,
        env_passthrough=("DEEPGUARD_DATA",),
        default_env={"MLFLOW_TRACKING_URI": "sqlite:///default.db"},
    )
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ACCESS_KEY_ID": "key",
        "KAGGLE_KEY": "kaggle",
        "DAGSHUB_TOKEN": "token",
        "DEEPGUARD_DATA": "/data/cifake.zip",
        "UNRELATED_SECRET": "nope",
    }
    chosen = {"epochs": 1}
    for name, kaggle in (("train", False), ("ingest", True)):
        task = render_task(dag, name, chosen, run_id=RUN_ID)
        task.arguments = task.local_arguments  # as execute() does with the local runner on
        pod = task.build_pod_request_obj(dry_run=True)
        argv, env = runner.process(pod, environ)
        container = pod.spec.containers[0]
        assert argv[0] == str(runner.python)
        assert argv[1:3] == container.command[1:]
        # No GPU profile: the local runner trains on this machine's CPU, within params.yaml's time budget.
        assert argv[3:] == [
            "--params",
            str(REPO / "params.yaml"),
            "--workdir",
            str(tmp_path / "ws") + RUN_DIR.removeprefix("/workspace"),
            "--set",
            "training.epochs=1",
        ]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AWS_ACCESS_KEY_ID"] == "key"
        assert env["DAGSHUB_TOKEN"] == "token"
        assert ("KAGGLE_KEY" in env) is kaggle
        assert env["DEEPGUARD_DATA"] == "/data/cifake.zip"
        assert "UNRELATED_SECRET" not in env
        assert env["DEEPGUARD_RUN_ID"] == RUN_ID
        assert env["PATH"].split(os.pathsep)[0] == str(runner.python.parent)
    _, env = runner.process(pod, {"PATH": "/usr/bin"})
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///default.db"


def test_every_run_id_gets_its_own_folder_inside_runs(dag: Any) -> None:
    # Run ids as Airflow's trigger form accepts them (its allowed_run_id_pattern: [A-Za-z0-9_.~:+-]+).
    run_ids = ["nightly-1", "nightly:1", "nightly+1", "nightly~1", ".", "..", "..."]
    folders = []
    for run_id in run_ids:
        arguments = render_task(dag, "ingest", run_id=run_id).arguments
        workdir = arguments[arguments.index("--workdir") + 1]
        assert workdir.startswith("/workspace/runs/")
        folders.append(workdir.removeprefix("/workspace/runs/"))
    assert folders[0] == "nightly-1"
    assert len(set(folders)) == len(run_ids)
    for folder in folders:
        assert "/" not in folder and not folder.startswith(".")
        assert set(folder) <= set("abcdefghijklmnopqrstuvwxyz0123456789-._")


def test_deploy_runs_locally_with_target_local(dag: Any) -> None:
    task = render_task(dag, "deploy", run_id=RUN_ID)
    assert task.arguments[-2:] == ["--target", "kserve"]
    assert task.local_arguments[-2:] == ["--target", "local"]
    pod_arguments = task.arguments[:-2]
    profile_at = pod_arguments.index("--profile")
    del pod_arguments[profile_at : profile_at + 2]
    assert task.local_arguments[:-2] == pod_arguments


def test_drop_empty_options() -> None:
    from deepguard_operator import drop_empty_options

    assert drop_empty_options(["--params", "p", "--set", "", "--set", "a=1", "--set", ""]) == [
        "--params",
        "p",
        "--set",
        "a=1",
    ]


def test_killed_local_stage_stops_with_everything_it_started(dag: Any, tmp_path: Path) -> None:
    import threading

    from airflow.sdk.exceptions import AirflowException

    task = render_task(dag, "ingest")
    pid_file = tmp_path / "child.pid"
    # A stage that starts a helper process, then hangs: a timeout or a kill must stop both.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )

    def kill_once_the_helper_runs() -> None:
        # On the stage's own signal (its helper's pid written), not after a guessed delay: on a busy machine
        # the kill could come before the helper started, and the test failed on a missing pid file.
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        task.on_kill()

    killer = threading.Thread(target=kill_once_the_helper_runs, daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        # Airflow's kill stops the stage with SIGTERM; the stage printed nothing, so no "last line" is quoted.
        with pytest.raises(AirflowException, match=r"^stage ingest was killed by SIGTERM$"):
            task._run([sys.executable, "-c", script, str(pid_file)], {"PATH": os.defpath})
    finally:
        killer.join(timeout=60)
    assert time.monotonic() - started < 30, "the task hung after the kill"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), f"the stage's child process {child} survived the kill"


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_this_session_fails_its_skips_under_ci(pytestconfig: pytest.Config) -> None:
    # tests/ci_skips.py: under CI a skip fails; this environment's run must have the hook too.
    import ci_skips

    hooks = pytestconfig.pluginmanager.hook.pytest_runtest_makereport.get_hookimpls()
    assert ci_skips.pytest_runtest_makereport in [hook.function for hook in hooks]
