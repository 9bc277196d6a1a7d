"""The DeepGuard Airflow DAG: one KubernetesPodOperator per stage of core.pipeline.STAGES, then deploy."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import get_args

import pendulum
from airflow.sdk import DAG, Param, chain
from kubernetes.client import models as k8s

DAGS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DAGS_DIR.parent
# Airflow puts its configured dags folder on sys.path, but not the repository around it (git-sync, a clone)
# that holds the stage list, nor this folder when a DagBag is filled from elsewhere (tests).
for _folder in (str(DAGS_DIR), str(REPO_ROOT)):
    if _folder not in sys.path:
        sys.path.append(_folder)

from deepguard_operator import DeepGuardStageOperator, LocalRunner  # noqa: E402

from core.config import Architecture, DataParams  # noqa: E402
from core.pipeline import DEPLOY, STAGES, Stage  # noqa: E402

DAG_ID = "deepguard_pipeline"

# Names shared with the Helm chart and k8s/ (docs/kubernetes.md: Deploying to Kubernetes).
NAMESPACE = "deepguard"
# Stage pods run as SERVICE_ACCOUNT without an API token; a stage marked kubernetes_api in the stage list
# (deploy) runs as DEPLOY_SERVICE_ACCOUNT, the only one bound to a Role, with its token mounted.
SERVICE_ACCOUNT = "deepguard-pipeline"
DEPLOY_SERVICE_ACCOUNT = "deepguard-deploy"
WORKSPACE_CLAIM = "deepguard-workspace"
WORKSPACE_MOUNT = "/workspace"
MLFLOW_SECRET = "deepguard-mlflow"
KAGGLE_SECRET = "deepguard-kaggle"
DAGSHUB_SECRET = "deepguard-dagshub"
# The images' WORKDIR, where params.yaml is baked in next to the stages package.
IMAGE_APP_DIR = "/app"
PARAMS_PATH = f"{IMAGE_APP_DIR}/params.yaml"

# Images: Airflow Variables override the pinned defaults, read when a task runs (templated), not when parsed.
STAGE_IMAGE = "ghcr.io/deepguard/stage:0.1.0"
STAGE_GPU_IMAGE = "ghcr.io/deepguard/stage-gpu:0.1.0"
_IMAGE_TEMPLATE = "{{{{ var.value.get('{var}', '{default}') }}}}"

# Each run works in its own folder on the shared volume: stages pass data only through their declared outputs
# there, concurrent or retried runs never see each other's half-written files, and a failed run's folder is
# kept for inspection. Colons and plus signs of run ids are replaced so the path is plain.
RUN_DIR = f"{WORKSPACE_MOUNT}/runs/{{{{ run_id | replace(':', '-') | replace('+', '-') }}}}"


def _env_json(name: str, default: object) -> object:
    """A JSON setting of the Airflow deployment (its environment is cheap to read on every parse)."""
    raw = os.environ.get(name)
    return default if raw is None or not raw.strip() else json.loads(raw)


# GPU placement of the train pod, configurable per cluster. The defaults match NVIDIA's GPU operator
# (node label from GPU feature discovery) and the usual taint that keeps CPU work off GPU nodes.
GPU_NODE_SELECTOR: dict[str, str] = _env_json(  # type: ignore[assignment]
    "DEEPGUARD_GPU_NODE_SELECTOR", {"nvidia.com/gpu.present": "true"}
)
_GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_TOLERATIONS: list[k8s.V1Toleration] = [
    k8s.V1Toleration(**spec)
    for spec in _env_json("DEEPGUARD_GPU_TOLERATIONS", [_GPU_TAINT])  # type: ignore[attr-defined]
]
# Retraining schedule: a cron expression or preset; "none" for manual runs only.
SCHEDULE: str | None = os.environ.get("DEEPGUARD_SCHEDULE", "@weekly")
if SCHEDULE is not None and SCHEDULE.strip().lower() in {"", "none", "null"}:
    SCHEDULE = None
RETRIES = int(os.environ.get("DEEPGUARD_TASK_RETRIES", "2"))
STAGE_TIMEOUT = timedelta(hours=1)
GPU_STAGE_TIMEOUT = timedelta(hours=6)

# Kubernetes objects shared by every pod.
WORKSPACE_VOLUME = k8s.V1Volume(
    name="workspace",
    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=WORKSPACE_CLAIM),
)
WORKSPACE_VOLUME_MOUNT = k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE_MOUNT)
MLFLOW_ENV = k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=MLFLOW_SECRET))
DAGSHUB_ENV = k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=DAGSHUB_SECRET, optional=True))
KAGGLE_ENV = k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=KAGGLE_SECRET, optional=True))
POD_SECURITY = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    fs_group=10001,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
CONTAINER_SECURITY = k8s.V1SecurityContext(
    allow_privilege_escalation=False,
    capabilities=k8s.V1Capabilities(drop=["ALL"]),
)
POD_ENV = {
    "PYTHONUNBUFFERED": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Lineage: the Airflow run a stage belongs to.
    "DEEPGUARD_RUN_ID": "{{ run_id }}",
}

# The local runner (DEEPGUARD_LOCAL_RUNNER=1): the same pods, mapped onto this checkout.
LOCAL_WORKSPACE = Path(os.environ.get("DEEPGUARD_LOCAL_WORKSPACE", REPO_ROOT / ".airflow" / "workspace"))
LOCAL_RUNNER = LocalRunner(
    python=Path(os.environ.get("DEEPGUARD_LOCAL_PYTHON", REPO_ROOT / ".venv" / "bin" / "python")),
    paths={WORKSPACE_MOUNT: LOCAL_WORKSPACE, IMAGE_APP_DIR: REPO_ROOT},
    cwd=REPO_ROOT,
    env_passthrough=("DEEPGUARD_DATA", "PREDICTOR_URL"),
    # One MLflow store for all local runs, as the tracking server is for all pods (a run has its own folder).
    default_env={"MLFLOW_TRACKING_URI": f"sqlite:///{LOCAL_WORKSPACE / 'mlruns' / 'mlflow.db'}"},
)

# DAG params -> params.yaml keys. Empty (null) keeps the value of the image's params.yaml.
OVERRIDES = {
    "architecture": "model.architecture",
    "epochs": "training.epochs",
    "data_source": "data.source",
    "sample_per_class": "data.sample_per_class",
}
_FROM_PARAMS_FILE = "(as in params.yaml)"
PARAMS = {
    "architecture": Param(
        None,
        type=["null", "string"],
        enum=[None, *get_args(Architecture)],
        values_display={None: _FROM_PARAMS_FILE},
        title="Architecture",
        description="Model architecture (empty: params.yaml).",
    ),
    "epochs": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=500,
        title="Epochs",
        description="Training epochs (empty: params.yaml).",
    ),
    "data_source": Param(
        None,
        type=["null", "string"],
        enum=[None, *get_args(DataParams.model_fields["source"].annotation)],
        values_display={None: _FROM_PARAMS_FILE},
        title="Data source",
        description="auto, kaggle, local or synthetic (empty: params.yaml).",
    ),
    "sample_per_class": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Sample size",
        description="At most this many images per split and class (empty: params.yaml).",
    ),
    "deploy": Param(
        True,
        type="boolean",
        title="Deploy",
        description="Roll the champion out to the InferenceService after registering.",
    ),
}
_SET_TEMPLATE = "{{{{ '{key}=' ~ (params.{param} | tojson) if params.{param} is not none else '' }}}}"

DOC_MD = """
# DeepGuard pipeline

Trains and ships the detector of AI-generated images: **ingest → preprocess → features → train → evaluate →
register → deploy**, one Kubernetes pod per stage (`python -m stages.<name>`), from the stage list in
`core/pipeline.py`.

* Every run works in its own folder `/workspace/runs/<run id>` on the PVC `deepguard-workspace`.
* `train` runs the GPU image and requests `nvidia.com/gpu: 1`.
* MLflow credentials come from the Secret `deepguard-mlflow`; `register` aliases the new version `challenger`
  and promotes it to `champion` only past the gate; `deploy` (param *Deploy*) rolls the champion out.
* Trigger with parameters: an empty field keeps the value of `params.yaml`.
"""


def _arguments(stage: Stage, extra: tuple[str, ...] = ()) -> list[str]:
    """Pod arguments: params file, run folder, and one ``--set`` per DAG param that has a value."""
    # Every stage gets every override: each validates the whole params file, and register's params hash must
    # describe the run. A null param renders to an empty value and the operator drops that option.
    args = ["--params", PARAMS_PATH, "--workdir", RUN_DIR]
    for param, key in OVERRIDES.items():
        args += ["--set", _SET_TEMPLATE.format(key=key, param=param)]
    return [*args, *extra]


def _resources(stage: Stage) -> k8s.V1ResourceRequirements:
    """Requests and limits from the stage list; a GPU stage gets ``nvidia.com/gpu`` as a limit."""
    limits = {"cpu": stage.resources.cpu_limit, "memory": stage.resources.memory_limit}
    if stage.resources.gpu:
        limits["nvidia.com/gpu"] = str(stage.resources.gpu)
    return k8s.V1ResourceRequirements(
        requests={"cpu": stage.resources.cpu, "memory": stage.resources.memory}, limits=limits
    )


def stage_task(
    stage: Stage,
    *,
    extra: tuple[str, ...] = (),
    local_extra: tuple[str, ...] | None = None,
    run_if_param: str | None = None,
) -> DeepGuardStageOperator:
    """Build the task of one stage (inside a ``with DAG`` block).

    Args:
        stage: From the stage list.
        extra: Arguments appended in the cluster.
        local_extra: Arguments appended instead of ``extra`` with the local runner on.
        run_if_param: A boolean DAG param that must be true for the task to run.

    Returns:
        The operator, with task id and pod name suffix equal to the stage name.
    """
    gpu = stage.resources.gpu > 0
    image = STAGE_GPU_IMAGE if gpu else STAGE_IMAGE
    image_var = "deepguard_stage_gpu_image" if gpu else "deepguard_stage_image"
    env_from = [MLFLOW_ENV, DAGSHUB_ENV] + ([KAGGLE_ENV] if stage.name == "ingest" else [])
    return DeepGuardStageOperator(
        task_id=stage.name,
        name=f"deepguard-{stage.name}",
        doc_md=stage.description,
        namespace=NAMESPACE,
        service_account_name=DEPLOY_SERVICE_ACCOUNT if stage.kubernetes_api else SERVICE_ACCOUNT,
        automount_service_account_token=stage.kubernetes_api,
        image=_IMAGE_TEMPLATE.format(var=image_var, default=image),
        image_pull_policy="IfNotPresent",
        cmds=stage.command,
        arguments=_arguments(stage, extra),
        local_arguments=_arguments(stage, local_extra) if local_extra is not None else None,
        env_vars=dict(POD_ENV),
        env_from=env_from,
        container_resources=_resources(stage),
        volumes=[WORKSPACE_VOLUME],
        volume_mounts=[WORKSPACE_VOLUME_MOUNT],
        security_context=POD_SECURITY,
        container_security_context=CONTAINER_SECURITY,
        node_selector=dict(GPU_NODE_SELECTOR) if gpu else None,
        tolerations=list(GPU_TOLERATIONS) if gpu else None,
        labels={
            "app.kubernetes.io/name": "deepguard",
            "app.kubernetes.io/component": "pipeline",
            "deepguard.io/stage": stage.name,
        },
        execution_timeout=GPU_STAGE_TIMEOUT if gpu else STAGE_TIMEOUT,
        on_finish_action="delete_pod",
        get_logs=True,
        local_runner=LOCAL_RUNNER,
        run_if_param=run_if_param,
    )


with DAG(
    dag_id=DAG_ID,
    description="Train, evaluate, register and deploy the DeepGuard detector of AI-generated images.",
    doc_md=DOC_MD,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    params=PARAMS,
    tags=["deepguard", "mlops"],
    default_args={
        "owner": "deepguard",
        "retries": RETRIES,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    },
) as dag:
    chain(
        *(stage_task(stage) for stage in STAGES),
        stage_task(
            DEPLOY, extra=("--target", "kserve"), local_extra=("--target", "local"), run_if_param="deploy"
        ),
    )
