"""The pods of DeepGuard's DAGs: Kubernetes objects, images, the local runner and one task per stage.

Shared by the pipeline DAG (dags/deepguard_pipeline.py) and the drift monitor DAG (dags/deepguard_monitor.py);
a module, not a DAG file, so that neither DAG file defines the other's DAG.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import CronTriggerTimetable
from airflow.sdk.exceptions import AirflowTimetableInvalid
from deepguard_operator import DeepGuardStageOperator, LocalRunner
from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity  # the provider imports it already

from core.errors import PERMANENT_EXIT_CODES
from core.pipeline import Stage

# Imported by the DAG files after they put this folder and the repository on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[1]

# Names shared with the Helm chart and k8s/ (docs/kubernetes.md: Deploying to Kubernetes). The pods go to the
# namespace the chart was installed in: DEEPGUARD_NAMESPACE on the Airflow deployment, when not the default.
DEFAULT_NAMESPACE = "deepguard"
NAMESPACE = os.environ.get("DEEPGUARD_NAMESPACE", "").strip() or DEFAULT_NAMESPACE
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
# The GPU profile (params-gpu.yaml: larger batches, fixed epochs instead of the CPU's time budget, mixed
# precision), baked into both stage images beside params.yaml. Every pod of a run reads it when the run trains
# on a GPU, so that all stages validate, and register's params hash describes, the params train used.
GPU_PROFILE_PATH = f"{IMAGE_APP_DIR}/params-gpu.yaml"

# Images: Airflow Variables override the pinned defaults, read when a task runs (templated), not when parsed.
STAGE_IMAGE = "ghcr.io/deepguard/stage:0.1.0"
STAGE_GPU_IMAGE = "ghcr.io/deepguard/stage-gpu:0.1.0"
_IMAGE_TEMPLATE = "{{{{ var.value.get('{var}', '{default}') }}}}"

# Each run works in its own folder on the shared volume: stages pass data only through their declared outputs
# there, concurrent or retried runs never see each other's half-written files, and a failed run's folder is
# kept for inspection. Its name is the run id through run_folder (a Jinja filter of the pipeline DAG).
RUN_DIR = f"{WORKSPACE_MOUNT}/runs/{{{{ run_id | run_folder }}}}"


def run_folder(run_id: str) -> str:
    """The name of a run's folder under ``runs/``: one plain path segment, never another run's.

    Airflow's run ids may hold ``:``, ``+`` and ``~`` (its own manual and scheduled ids hold ``:`` and ``+``),
    and one typed in the trigger form may be ``.`` or ``..``. Those characters become ``-``, leading dots
    ``_`` (no hidden folder, no way out of ``runs/``), and a name that changed ends with 8 hex digits of the
    run id's sha256, so ``a:b`` and ``a-b`` get two folders.
    """
    plain = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)
    unhidden = plain.lstrip(".")
    plain = "_" * (len(plain) - len(unhidden)) + unhidden
    if plain == run_id:
        return plain
    return f"{plain}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


class SettingError(ValueError):
    """A setting of the Airflow deployment that the DAG files cannot use; the message names it."""


def _env_json(name: str, default: object, expected: type) -> Any:
    """A JSON setting of the Airflow deployment (its environment is cheap to read on every parse).

    Raises:
        SettingError: The value is not JSON or not of the ``expected`` type (the DAGs' import error names it).
    """
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingError(f"{name}={raw!r}: not JSON ({exc.msg})") from None
    if not isinstance(value, expected):
        raise SettingError(f"{name}={raw!r}: not a JSON {'object' if expected is dict else 'array'}")
    return value


_TOLERATION_OPERATORS = {"Exists", "Equal"}
_TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


def _tolerations(name: str, default: list[dict[str, str]]) -> list[k8s.V1Toleration]:
    """The JSON array of Kubernetes tolerations in ``name``.

    Raises:
        SettingError: Not such an array, or an operator or effect Kubernetes refuses (it would refuse the pod
            only when the task runs, hours into a run).
    """
    specs = _env_json(name, default, list)
    try:
        tolerations = [k8s.V1Toleration(**spec) for spec in specs]
    except TypeError as exc:  # an item that is not an object, or a key a toleration does not have
        raise SettingError(f"{name}: not an array of tolerations ({exc})") from None
    for toleration in tolerations:
        if toleration.operator not in {None, *_TOLERATION_OPERATORS}:
            raise SettingError(f"{name}: operator {toleration.operator!r}: not one of Exists, Equal")
        if toleration.effect not in {None, *_TAINT_EFFECTS}:
            raise SettingError(
                f"{name}: effect {toleration.effect!r}: not one of {', '.join(sorted(_TAINT_EFFECTS))}"
            )
    return tolerations


def _node_selector(name: str, default: dict[str, str]) -> dict[str, str]:
    """The JSON object of node labels in ``name``: their values are strings (``"true"``, not ``true``)."""
    selector = _env_json(name, default, dict)
    for key, value in selector.items():
        if not isinstance(value, str):
            raise SettingError(f"{name}: label {key!r}: {json.dumps(value)} is not a string (quote it)")
    return selector


def _resource_overrides(name: str) -> dict[str, dict[str, str]]:
    """Requests and limits in ``name`` that replace the GPU stage's own (Kubernetes' resources shape).

    Example: ``{"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"nvidia.com/gpu": "2"}}``.

    Raises:
        SettingError: Another key than ``requests`` and ``limits``, or a value that is not a Kubernetes
            quantity (a GPU count must be a whole number of at least 1).
    """
    resources = _env_json(name, {}, dict)
    unknown = sorted(set(resources) - {"requests", "limits"})
    if unknown:
        raise SettingError(f"{name}: {', '.join(unknown)}: not requests or limits")
    for kind, amounts in resources.items():
        if not isinstance(amounts, dict):
            raise SettingError(f"{name}: {kind}: not a JSON object of resource amounts")
        for resource, amount in amounts.items():
            if resource == GPU_RESOURCE:
                if kind == "requests":
                    raise SettingError(
                        f"{name}: requests.{resource}: set limits.{resource} (GPUs are requested as many as"
                        " the limit)"
                    )
                if not (isinstance(amount, str) and amount.isdigit() and int(amount) >= 1):
                    raise SettingError(
                        f"{name}: {kind}.{resource}: {json.dumps(amount)} is not a whole number"
                    )
                continue
            try:
                if not isinstance(amount, str):
                    raise ValueError
                parse_quantity(amount)
            except ValueError:
                raise SettingError(
                    f"{name}: {kind}.{resource}: {json.dumps(amount)} is not a Kubernetes quantity"
                    ' ("8", "500m", "32Gi")'
                ) from None
    return resources


# A PriorityClass name: a DNS subdomain (lower case).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _priority_class(name: str) -> str | None:
    raw = os.environ.get(name, "").strip()
    if raw and not (len(raw) <= 253 and _DNS_SUBDOMAIN.fullmatch(raw)):
        raise SettingError(f"{name}={raw!r}: not a PriorityClass name (lower case letters, digits, '-', '.')")
    return raw or None


# Schedules that DAG(...) turns into timetables of their own rather than cron ones.
_SPECIAL_SCHEDULES = {"@once", "@continuous"}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SettingError(f"{name}={raw!r}: not an integer") from None


# GPU placement of the train pod, configurable per cluster. The defaults match NVIDIA's GPU operator
# (node label from GPU feature discovery) and the usual taint that keeps CPU work off GPU nodes.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR: dict[str, str] = _node_selector(
    "DEEPGUARD_GPU_NODE_SELECTOR", {"nvidia.com/gpu.present": "true"}
)
_GPU_TAINT = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
GPU_TOLERATIONS: list[k8s.V1Toleration] = _tolerations("DEEPGUARD_GPU_TOLERATIONS", [_GPU_TAINT])
# The train pod's requests and limits over the stage list's (a GPU count: limits nvidia.com/gpu), and its
# PriorityClass, e.g. one that may preempt lower-priority work on a shared GPU pool.
GPU_RESOURCES: dict[str, dict[str, str]] = _resource_overrides("DEEPGUARD_GPU_RESOURCES")
GPU_PRIORITY_CLASS: str | None = _priority_class("DEEPGUARD_GPU_PRIORITY_CLASS")
RETRIES = _env_int("DEEPGUARD_TASK_RETRIES", 2)
# Every run type but backfill (a DAG's allowed_run_types). A backfill's runs count against the backfill's own
# max_active_runs (10 unless given), not the DAG's max_active_runs=1, so they would run side by side. The
# pipeline ignores the logical date (it trains on today's data: a backfill trains the same model once a week
# of its range), and monitor runs of past hours would overwrite the champion's drift tags and the summary
# the alert reads with old windows. Airflow then refuses a backfill (CLI, REST) and the UI offers none.
RUN_TYPES = ("scheduled", "manual", "operator_triggered")
STAGE_TIMEOUT = timedelta(hours=1)
GPU_STAGE_TIMEOUT = timedelta(hours=6)
# How long a pod may wait to be scheduled (a node with room, a GPU node the autoscaler adds) and then to start
# (the image pull: the GPU image's CUDA base is gigabytes). The provider's 2 minutes for each failed train's
# first tries on a GPU pool that scales from zero, and any try without retries left.
POD_WAIT = {"schedule": timedelta(minutes=15), "start": timedelta(minutes=10)}
GPU_POD_WAIT = {"schedule": timedelta(hours=1), "start": timedelta(minutes=20)}

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
    # Served records and user feedback on the shared volume: the monitor reads the records, ingest the
    # accepted feedback (data.feedback: include). The chart's predictor and web app write there.
    "DEEPGUARD_MONITORING_DIR": f"{WORKSPACE_MOUNT}/monitoring",
}


def _local_path(name: str, default: str) -> Path:
    """A local runner path setting, absolute: a relative one is relative to the repository.

    The stages start in the repository but change into their run folder, so the paths they get (the MLflow
    store, the monitoring folder) must not be relative.
    """
    return REPO_ROOT / Path(os.environ.get(name) or default).expanduser()


# The local runner (DEEPGUARD_LOCAL_RUNNER=1): the same pods, mapped onto this checkout.
LOCAL_WORKSPACE = _local_path("DEEPGUARD_LOCAL_WORKSPACE", ".airflow/workspace")
LOCAL_RUNNER = LocalRunner(
    python=_local_path("DEEPGUARD_LOCAL_PYTHON", ".venv/bin/python"),
    paths={WORKSPACE_MOUNT: LOCAL_WORKSPACE, IMAGE_APP_DIR: REPO_ROOT},
    cwd=REPO_ROOT,
    env_passthrough=("DEEPGUARD_DATA", "PREDICTOR_URL"),
    # One MLflow store for all local runs, as the tracking server is for all pods (a run has its own folder).
    default_env={"MLFLOW_TRACKING_URI": f"sqlite:///{LOCAL_WORKSPACE / 'mlruns' / 'mlflow.db'}"},
)


def schedule_from_env(name: str, default: str | None, default_source: str = "the default") -> str | None:
    """A DAG schedule from the environment: a cron expression or preset; "none" (or empty) for manual only.

    Args:
        name: The environment variable.
        default: Used when the variable is not set.
        default_source: Where the default comes from, for the error (``params.yaml monitoring.schedule``).

    Returns:
        The schedule, or None for manual runs only.

    Raises:
        SettingError: Not a schedule Airflow accepts; the message names the variable (or the default's source)
            and the value, which Airflow's own error, raised inside ``DAG(...)``, does not.
    """
    raw = os.environ.get(name)
    value = default if raw is None else raw.strip()
    if value is None or value.lower() in {"", "none", "null"}:
        return None
    if value not in _SPECIAL_SCHEDULES:
        try:
            # The check DAG(...) makes of a cron schedule (CronDataIntervalTimetable shares it).
            CronTriggerTimetable(value, timezone="UTC").validate()
        except AirflowTimetableInvalid as exc:
            where = f"{name}={raw!r}" if raw is not None else f"{default_source} {value!r} ({name} unset)"
            raise SettingError(f"{where}: not a cron expression or preset: {exc}") from None
    return value


def _resources(stage: Stage) -> k8s.V1ResourceRequirements:
    """Requests and limits from the stage list; a GPU stage gets ``nvidia.com/gpu`` as a limit.

    A GPU stage's are then replaced, amount by amount, by ``DEEPGUARD_GPU_RESOURCES``.
    """
    requests = {"cpu": stage.resources.cpu, "memory": stage.resources.memory}
    limits = {"cpu": stage.resources.cpu_limit, "memory": stage.resources.memory_limit}
    if stage.resources.gpu:
        limits[GPU_RESOURCE] = str(stage.resources.gpu)
        requests.update(GPU_RESOURCES.get("requests", {}))
        limits.update(GPU_RESOURCES.get("limits", {}))
        if GPU_RESOURCES:
            _check_requests_within_limits(requests, limits)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _check_requests_within_limits(requests: Mapping[str, str], limits: Mapping[str, str]) -> None:
    """Kubernetes refuses a pod whose request exceeds its limit: say so at parse time, not hours later."""
    for resource in requests.keys() & limits.keys():
        if parse_quantity(requests[resource]) > parse_quantity(limits[resource]):
            raise SettingError(
                f"DEEPGUARD_GPU_RESOURCES: requests.{resource} {requests[resource]} is more than its limit"
                f" {limits[resource]}: raise limits.{resource} too"
            )


def stage_task(
    stage: Stage,
    arguments: Sequence[str],
    *,
    local_arguments: Sequence[str] | None = None,
    run_if_param: str | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> DeepGuardStageOperator:
    """Build the task of one stage (inside a ``with DAG`` block).

    Args:
        stage: From the stage list (or ``DEPLOY``, ``MONITOR``).
        arguments: The container arguments (templated).
        local_arguments: Arguments used instead with the local runner on.
        run_if_param: A boolean DAG param that must be true for the task to run.
        env: More container environment variables (templated; pod paths are mapped by the local runner).
        **kwargs: More operator settings (``do_xcom_push``).

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
        arguments=list(arguments),
        local_arguments=list(local_arguments) if local_arguments is not None else None,
        env_vars={**POD_ENV, **(env or {})},
        env_from=env_from,
        container_resources=_resources(stage),
        volumes=[WORKSPACE_VOLUME],
        volume_mounts=[WORKSPACE_VOLUME_MOUNT],
        security_context=POD_SECURITY,
        container_security_context=CONTAINER_SECURITY,
        # The XCom sidecar (do_xcom_push: the monitor) drops privileges like the stage container.
        xcom_sidecar_container_security_context=CONTAINER_SECURITY,
        node_selector=dict(GPU_NODE_SELECTOR) if gpu else None,
        tolerations=list(GPU_TOLERATIONS) if gpu else None,
        priority_class_name=GPU_PRIORITY_CLASS if gpu else None,
        labels={
            "app.kubernetes.io/name": "deepguard",
            "app.kubernetes.io/component": "pipeline",
            "deepguard.io/stage": stage.name,
        },
        execution_timeout=GPU_STAGE_TIMEOUT if gpu else STAGE_TIMEOUT,
        schedule_timeout_seconds=int((GPU_POD_WAIT if gpu else POD_WAIT)["schedule"].total_seconds()),
        startup_timeout_seconds=int((GPU_POD_WAIT if gpu else POD_WAIT)["start"].total_seconds()),
        on_finish_action="delete_pod",
        get_logs=True,
        # A failed task's log ends with the cause: the provider's error carries the container's termination
        # message, which Kubernetes fills with the stage's last log lines (its error line last), instead of a
        # dump of the whole pod (hundreds of lines after the stage's error).
        termination_message_policy="FallbackToLogsOnError",
        log_pod_spec_on_failure=False,
        local_runner=LOCAL_RUNNER,
        run_if_param=run_if_param,
        # A stage exits 2 on an error that a retry would meet again (core/errors.py): fail without retries.
        fail_on_exit_code=PERMANENT_EXIT_CODES,
        **kwargs,
    )
