"""The DeepGuard Airflow DAG: one KubernetesPodOperator per stage of core.pipeline.STAGES, then deploy."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import get_args

# Named here although only deepguard_operator.py uses it: the DAG processor imports the `airflow.*` modules a
# DAG file names once, before it forks each parse of the file ([dag_processor] parsing_pre_import_modules).
# Left to deepguard_operator.py, every parse (every 30 s) would import the provider and the Kubernetes
# client again: seconds of CPU each time instead of milliseconds.
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.sdk import DAG, Param, chain

DAGS_DIR = Path(__file__).resolve().parent
# Airflow puts its configured dags folder on sys.path, but not the repository around it (git-sync, a clone)
# that holds the stage list, nor this folder when a DagBag is filled from elsewhere (tests).
for _folder in (str(DAGS_DIR), str(DAGS_DIR.parent)):
    if _folder not in sys.path:
        sys.path.append(_folder)

from deepguard_pods import (  # noqa: E402
    GPU_PROFILE_PATH,
    PARAMS_PATH,
    RETRIES,
    RUN_DIR,
    RUN_TYPES,
    run_folder,
    schedule_from_env,
    stage_task,
)

from core.config import Architecture, DataParams, TrainingParams  # noqa: E402
from core.pipeline import DEPLOY, STAGES, Stage  # noqa: E402

DAG_ID = "deepguard_pipeline"
# Retraining schedule: a cron expression or preset; "none" for manual runs only.
SCHEDULE = schedule_from_env("DEEPGUARD_SCHEDULE", "@weekly")
# The Prometheus that scrapes the predictor, set on the Airflow deployment: handed to the deploy pod, which
# then judges each canary by its metrics before promoting it (docs/monitoring.md); unset, Ready is enough.
_PROMETHEUS_URL = os.environ.get("DEEPGUARD_PROMETHEUS_URL", "").strip()
DEPLOY_ENV = {"DEEPGUARD_PROMETHEUS_URL": _PROMETHEUS_URL} if _PROMETHEUS_URL else {}

# DAG params -> params.yaml keys. Empty (null) keeps the value of the image's params.yaml.
OVERRIDES = {
    "architecture": "model.architecture",
    "epochs": "training.epochs",
    "data_source": "data.source",
    "sample_per_class": "data.sample_per_class",
}
_FROM_PARAMS_FILE = "(as in params.yaml)"


def _least(section: type, key: str) -> int:
    """The least value params.yaml's schema accepts for ``key`` of ``section`` (its ``ge`` bound)."""
    return next(rule.ge for rule in section.model_fields[key].metadata if hasattr(rule, "ge"))


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
        minimum=_least(TrainingParams, "epochs"),
        maximum=500,
        title="Epochs",
        description="Training epochs (empty: params-gpu.yaml in a cluster; params.yaml, local runner).",
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
        minimum=_least(DataParams, "sample_per_class"),
        title="Sample size",
        description="At most this many images per split and class (empty: params.yaml).",
    ),
    "reason": Param(
        None,
        type=["null", "string"],
        title="Reason",
        description="Why this run was started (the drift monitor DAG sets it); recorded, changes nothing.",
    ),
    "deploy": Param(
        True,
        type="boolean",
        title="Deploy",
        description="Roll the champion out to the InferenceService after registering.",
    ),
}
_SET_TEMPLATE = "{{{{ '{key}=' ~ (params.{param} | tojson) if params.{param} is not none else '' }}}}"

# The order shown in the Airflow UI is the stage list's, so a stage added there is named here too.
_ORDER = " → ".join(stage.name for stage in (*STAGES, DEPLOY))
DOC_MD = f"""
# DeepGuard pipeline

Trains and ships the detector of AI-generated images: **{_ORDER}**, one Kubernetes pod
per stage (`python -m stages.<name>`), from the stage list in `core/pipeline.py`.

* Every run works in its own folder `/workspace/runs/<run id>` on the PVC `deepguard-workspace`.
* `train` runs the GPU image and requests `nvidia.com/gpu` (one unless `DEEPGUARD_GPU_RESOURCES` says more);
  every pod reads the GPU profile `params-gpu.yaml` over `params.yaml` (with the local runner: no profile,
  training on the CPU).
* MLflow credentials come from the Secret `deepguard-mlflow`; `register` aliases the new version `challenger`
  and promotes it to `champion` only past the gate; `deploy` (param *Deploy*) rolls the champion out.
* Trigger with parameters: an empty field keeps the value of the image's `params.yaml` and GPU profile (the
  profile sets the epochs).
* One run at a time: a second trigger waits, queued, until the first ends. No backfills: the pipeline trains
  on today's data whatever the logical date.
"""


# A run whose train pod gets a GPU reads the GPU profile in every pod; the local runner (no GPU: one machine's
# CPU) keeps params.yaml's time budget.
_GPU_RUN = any(stage.resources.gpu for stage in STAGES)


def _arguments(stage: Stage, extra: tuple[str, ...] = (), *, local: bool = False) -> list[str]:
    """Pod arguments: params file (GPU profile), run folder, one ``--set`` per DAG param with a value."""
    # Every stage gets every override: each validates the whole params file, and register's params hash must
    # describe the run. A null param renders to an empty value and the operator drops that option.
    profile = ["--profile", GPU_PROFILE_PATH] if _GPU_RUN and not local else []
    args = ["--params", PARAMS_PATH, *profile, "--workdir", RUN_DIR]
    for param, key in OVERRIDES.items():
        args += ["--set", _SET_TEMPLATE.format(key=key, param=param)]
    return [*args, *extra]


with DAG(
    dag_id=DAG_ID,
    description="Train, evaluate, register and deploy the DeepGuard detector of AI-generated images.",
    doc_md=DOC_MD,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    allowed_run_types=RUN_TYPES,
    dagrun_timeout=timedelta(hours=12),
    params=PARAMS,
    user_defined_filters={"run_folder": run_folder},
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
        *(
            stage_task(stage, _arguments(stage), local_arguments=_arguments(stage, local=True))
            for stage in STAGES
        ),
        stage_task(
            DEPLOY,
            _arguments(DEPLOY, ("--target", "kserve")),
            local_arguments=_arguments(DEPLOY, ("--target", "local"), local=True),
            run_if_param="deploy",
            env=DEPLOY_ENV,
        ),
    )
