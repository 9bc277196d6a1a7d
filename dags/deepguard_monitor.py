"""The drift monitor DAG: hourly ``python -m stages.monitor`` in a pod; retrain only when it detects drift."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

# Named here although only deepguard_operator.py uses it: the DAG processor imports the `airflow.*` modules a
# DAG file names once, before it forks each parse of the file ([dag_processor] parsing_pre_import_modules).
# Left to deepguard_operator.py, every parse (every 30 s) would import the provider and the Kubernetes
# client again: seconds of CPU each time instead of milliseconds.
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, chain

DAGS_DIR = Path(__file__).resolve().parent
# As in deepguard_pipeline.py: this folder and the repository (the stage list, params.yaml) on sys.path.
for _folder in (str(DAGS_DIR), str(DAGS_DIR.parent)):
    if _folder not in sys.path:
        sys.path.append(_folder)

from deepguard_pods import (  # noqa: E402
    PARAMS_PATH,
    RETRIES,
    RUN_TYPES,
    WORKSPACE_MOUNT,
    schedule_from_env,
    stage_task,
)

from core.config import load_params  # noqa: E402
from core.pipeline import MONITOR  # noqa: E402

DAG_ID = "deepguard_monitor"
PIPELINE_DAG_ID = "deepguard_pipeline"
# params.yaml `monitoring.schedule` (read when parsed: a small file) unless DEEPGUARD_MONITOR_SCHEDULE is set.
SCHEDULE = schedule_from_env(
    "DEEPGUARD_MONITOR_SCHEDULE",
    load_params(DAGS_DIR.parent / "params.yaml").monitoring.schedule,
    default_source="params.yaml monitoring.schedule",
)
# Served records live on the shared volume, where the predictor writes them (DEEPGUARD_MONITORING_DIR in
# deepguard_pods.POD_ENV; docs/orchestration.md); the
# monitor's own folder keeps the latest reports/drift.json (each run's report is in MLflow).
MONITOR_WORKDIR = f"{WORKSPACE_MOUNT}/monitor"
XCOM_FILE = "/airflow/xcom/return.json"  # the KubernetesPodOperator's XCom file (do_xcom_push)
# At most one drift-triggered retraining a day however many hourly checks see drift: the run id is the day.
TRIGGER_RUN_ID = "drift__{{ dag_run.run_after.strftime('%Y-%m-%d') }}"
# The end of the window of served records: when the run was due (a scheduled run: the end of its hour), not
# when its pod happens to start, so that a late, retried or cleared run checks the same records.
WINDOW_END = "{{ dag_run.run_after.isoformat() }}"

DOC_MD = """
# DeepGuard drift monitor

Every hour (params.yaml `monitoring.schedule`, or `DEEPGUARD_MONITOR_SCHEDULE`) the **monitor** pod compares
the champion's served images of the last `monitoring.window_hours` with its reference: PSI of the P(FAKE)
distribution, a KS test per image statistic, the verdict mix and the share of out-of-domain uploads. Its
report is logged to MLflow and the champion's version is tagged `drift_status`.

Only when drift was detected does **trigger_pipeline** start `deepguard_pipeline` with `{"reason": ...}`
(at most one such run a day); otherwise the run ends with it skipped.
"""


def drift_detected(ti) -> bool:  # ti: the task instance (Airflow passes context by argument name)
    """The monitor task's decision (its XCom): True lets trigger_pipeline run."""
    decision = ti.xcom_pull(task_ids=MONITOR.name) or {}
    return bool(decision.get("drift"))


with DAG(
    dag_id=DAG_ID,
    description="Detect drift of the served DeepGuard champion; retrain when it drifted.",
    doc_md=DOC_MD,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    allowed_run_types=RUN_TYPES,
    dagrun_timeout=timedelta(minutes=50),
    tags=["deepguard", "mlops", "monitoring"],
    default_args={"owner": "deepguard", "retries": RETRIES, "retry_delay": timedelta(minutes=2)},
) as dag:
    arguments = [
        "--params",
        PARAMS_PATH,
        "--workdir",
        MONITOR_WORKDIR,
        "--xcom",
        XCOM_FILE,
        "--now",
        WINDOW_END,
    ]
    chain(
        stage_task(
            MONITOR,
            arguments,
            do_xcom_push=True,
        ),
        ShortCircuitOperator(
            task_id="drift_detected",
            python_callable=drift_detected,
            doc_md="Continue to trigger_pipeline only when the monitor reported drift.",
        ),
        TriggerDagRunOperator(
            task_id="trigger_pipeline",
            trigger_dag_id=PIPELINE_DAG_ID,
            trigger_run_id=TRIGGER_RUN_ID,
            skip_when_already_exists=True,
            conf={
                "reason": "drift: {{ ti.xcom_pull(task_ids='monitor')['reason'] }}",
            },
            doc_md="Retrain: start deepguard_pipeline with the drift report's reasons as conf.reason.",
        ),
    )
