"""Retries: a stage that exits 2 (an error a retry meets again) fails at once; any other failure retries."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from dagtools import DAGS_DIR, REPO, render_task, run_airflow
from kubernetes.client import models as k8s

from core.errors import EXIT_ERROR, EXIT_TRANSIENT

# A DAG of two tasks built like the pipeline's (deepguard_pods.stage_task: the local runner, the exit codes
# that end the retries), each retried twice a second apart: the real ingest stage on data that does not exist
# (it exits 2), and a stage process that crashes (exit 1) and counts its tries in a file.
_RETRY_DAG = """
import dataclasses
import sys
from datetime import timedelta

sys.path[:0] = [{dags!r}, {repo!r}]

import pendulum
from airflow.sdk import DAG
from deepguard_pods import PARAMS_PATH, stage_task

from core.pipeline import STAGES

with DAG(
    dag_id="deepguard_retries",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    default_args={{"retries": 2, "retry_delay": timedelta(seconds=1)}},
):
    ingest = STAGES[0]
    stage_task(ingest, ["--params", PARAMS_PATH, "--workdir", "/workspace/runs/retries",
                        "--set", "data.source=local"])
    crash = stage_task(dataclasses.replace(ingest, name="crash"), [])
    crash.cmds = ["python", "-c", "import sys; open({tries!r}, 'a').write('try\\\\n'); "
                  "print('stage crashed'); sys.exit(1)"]
"""


def test_a_stage_that_exits_2_fails_at_once_and_one_that_exits_1_is_retried(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    tries = tmp_path / "crash-tries.txt"
    (dags / "deepguard_retries.py").write_text(
        textwrap.dedent(_RETRY_DAG).format(dags=str(DAGS_DIR), repo=str(REPO), tries=str(tries))
    )
    env = {
        **airflow_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "DEEPGUARD_DATA": str(tmp_path / "missing.zip"),
    }
    migrate = run_airflow(env, "db", "migrate", log=tmp_path / "migrate.log")
    assert migrate.returncode == 0, migrate.stdout[-3000:]

    run = run_airflow(env, "dags", "test", "deepguard_retries", log=tmp_path / "run.log")
    assert run.returncode != 0, "a failed task must fail the run"
    log = run.stdout
    # The permanent error: one try, and the task's log says why it stops there and what to do.
    assert log.count("-m stages.ingest --params") == 1, log[-5000:]
    assert "stage ingest exited with code 2: an error that a retry would meet again" in log
    assert "Fix the cause, then clear the task to rerun it." in log
    assert "missing.zip: no such archive or folder" in log
    # The crash: the first try and both retries.
    assert tries.read_text().splitlines() == ["try"] * 3, log[-5000:]
    assert "stage crash exited with code 1: stage crashed" in log


STAGE_LOG = ["ingest: reading /data/cifake.zip", "stages.ingest: error: /data/cifake.zip: no such archive"]


def _ended_pod(task: Any, exit_code: int, reason: str = "Error") -> k8s.V1Pod:
    """The task's pod as the Kubernetes API reports it once its stage container ended with ``exit_code``.

    As the kubelet does, the container's termination message is the tail of its log when it failed and its
    ``terminationMessagePolicy`` is ``FallbackToLogsOnError`` (the stage writes no termination-log file).
    """
    pod = task.build_pod_request_obj(dry_run=True)
    pod.metadata.name = "deepguard-ingest-abc"
    container = pod.spec.containers[0]
    fallback = exit_code != 0 and container.termination_message_policy == "FallbackToLogsOnError"
    pod.status = k8s.V1PodStatus(
        phase="Succeeded" if exit_code == 0 else "Failed",
        container_statuses=[
            k8s.V1ContainerStatus(
                name=task.base_container_name,
                image=pod.spec.containers[0].image,
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(
                    terminated=k8s.V1ContainerStateTerminated(
                        exit_code=exit_code,
                        reason=reason,
                        message="\n".join(STAGE_LOG) + "\n" if fallback else None,
                    )
                ),
            )
        ],
    )
    return pod


class FakeKubernetesApi:
    """FAKE CoreV1Api holding one ended pod: records the patch (marks a failed pod checked) and the delete."""

    def __init__(self, pod: k8s.V1Pod) -> None:
        self.pod = pod
        self.calls: list[str] = []

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> k8s.V1Pod:
        return self.pod

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kwargs: Any) -> None:
        self.calls.append(f"patch {name}")

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> None:
        self.calls.append(f"delete {name}")


@pytest.mark.parametrize(
    ("exit_code", "reason", "final"),
    [
        (EXIT_ERROR, "Error", True),
        (1, "Error", False),
        (EXIT_TRANSIENT, "Error", False),
        (137, "OOMKilled", False),
    ],
)
def test_a_pod_that_exits_2_fails_without_retries_fake_kubernetes_api(
    dag: Any, exit_code: int, reason: str, final: bool
) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    task = render_task(dag, "ingest")
    pod = _ended_pod(task, exit_code, reason)
    api = FakeKubernetesApi(pod)
    task.__dict__["client"] = api  # the operator's cached CoreV1Api; its PodManager uses it too
    with pytest.raises(AirflowException) as failure:
        task.cleanup(pod=pod, remote_pod=pod)
    assert isinstance(failure.value, AirflowFailException) is final, failure.value
    message = str(failure.value)
    assert "deepguard-ingest-abc returned a failure" in message
    # The task log's last lines name the cause: the stage's error line, then (a retried failure) its exit
    # code and the container's reason; not a dump of the pod (it ended the message, 180+ lines long).
    assert "remote_pod" not in message and "api_version" not in message, message[-2000:]
    lines = message.splitlines()
    if final:
        assert message.startswith("stage ingest exited with code 2: an error that a retry would")
        assert lines[-1] == STAGE_LOG[-1]
    else:
        assert lines[-2] == STAGE_LOG[-1]
        suffix = f" ({reason})" if reason != "Error" else ""
        assert lines[-1] == f"stage ingest exited with code {exit_code}{suffix}"
    assert "delete deepguard-ingest-abc" in api.calls, "the failed pod was not deleted"


def test_every_stage_task_fails_at_once_on_exit_2_only(dag: Any) -> None:
    assert {json.dumps(task.fail_on_exit_code) for task in dag.tasks} == {json.dumps([EXIT_ERROR])}


def test_a_local_runner_without_the_stages_python_fails_at_once(dag: Any, tmp_path: Path) -> None:
    # It failed on a FileNotFoundError traceback, retried twice minutes apart.
    from airflow.sdk.exceptions import AirflowFailException

    task = render_task(dag, "ingest")
    missing = tmp_path / ".venv" / "bin" / "python"
    with pytest.raises(AirflowFailException, match=r"cannot start .*python \(No such file or directory\)"):
        task._run([str(missing), "-m", "stages.ingest"], {"PATH": "/usr/bin"})


def test_a_local_stage_killed_by_a_signal_says_which(dag: Any, tmp_path: Path) -> None:
    # It said "exited with code -9": the kernel's OOM killer's SIGKILL, named nowhere.
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    task = render_task(dag, "train")
    kill = "import os, signal; print('epoch 3/30', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(AirflowException) as failure:
        task._run([sys.executable, "-c", kill], {"PATH": "/usr/bin"})
    assert not isinstance(failure.value, AirflowFailException), "a kill is retried"
    killed = "stage train was killed by SIGKILL (out of memory?); its last line: epoch 3/30"
    assert str(failure.value) == killed
