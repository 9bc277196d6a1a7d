"""The stage operator: a KubernetesPodOperator that can also run its pod's command as a local process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from kubernetes.client import models as k8s

# The setting that switches every stage task to a local process: an environment variable of the Airflow
# process or an Airflow Variable ("1"/"true"). Read when a task runs, never while the DAG file is parsed.
LOCAL_RUNNER_ENV = "DEEPGUARD_LOCAL_RUNNER"
LOCAL_RUNNER_VARIABLE = "deepguard_local_runner"
_TRUE = {"1", "true", "yes", "on"}

# Variables of the Airflow process that stand in locally for what a pod gets from its Secrets (env_from).
# In the cluster the Secret decides; locally the user's shell does.
SECRET_STAND_INS: dict[str, tuple[str, ...]] = {
    "deepguard-mlflow": ("MLFLOW_", "AWS_"),
    "deepguard-kaggle": ("KAGGLE_",),
    "deepguard-dagshub": ("DAGSHUB_",),
}
# Variables that a local process needs to behave like a process at all (a pod gets them from its image).
_PROCESS_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER")


@dataclass(frozen=True)
class LocalRunner:
    """Where the pieces of a pod live on this machine.

    Attributes:
        python: The stage environment's interpreter; replaces the pod command's ``python``.
        paths: Absolute paths inside the pod (the image's code folder, the workspace mount) mapped to local
            folders; every argument and env value that starts with one of them is rewritten.
        cwd: The folder the process starts in (the image's WORKDIR: the repository root).
        env_passthrough: Extra variables copied from the Airflow process (the pod would get them from the
            cluster: the data archive, the predictor URL).
        default_env: Variables set when the Airflow process does not have them (e.g. the MLflow store that
            stands in for the Secret's tracking server).
    """

    python: Path
    paths: Mapping[str, Path]
    cwd: Path
    env_passthrough: tuple[str, ...] = ()
    default_env: Mapping[str, str] = field(default_factory=dict)

    def local_path(self, value: str) -> str:
        """Rewrite a pod path (``/workspace/runs/x``) to its local folder; other values pass unchanged."""
        for pod_path, local in self.paths.items():
            if value == pod_path or value.startswith(pod_path.rstrip("/") + "/"):
                return str(local) + value[len(pod_path.rstrip("/")) :]
        return value

    def process(self, pod: k8s.V1Pod, environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        """Derive the local command and environment from the pod the operator would create.

        Args:
            pod: From ``build_pod_request_obj``: the single source of command, arguments, env and env_from.
            environ: The Airflow process's environment (stand-ins for Secrets and cluster settings).

        Returns:
            The argv and the complete environment of the local process.
        """
        # The stage's container comes first; with do_xcom_push the operator appends its XCom sidecar.
        container = pod.spec.containers[0]
        argv = [self.local_path(part) for part in [*(container.command or []), *(container.args or [])]]
        if argv and argv[0] == "python":
            argv[0] = str(self.python)
        env = {name: environ[name] for name in _PROCESS_ENV if name in environ}
        env["PATH"] = os.pathsep.join([str(self.python.parent), environ.get("PATH", os.defpath)])
        for source in container.env_from or []:
            if source.secret_ref is not None:
                prefixes = SECRET_STAND_INS.get(source.secret_ref.name, ())
                env.update({k: v for k, v in environ.items() if k.startswith(prefixes)})
            elif source.config_map_ref is not None:
                raise AirflowException(f"local runner: configMap {source.config_map_ref.name} is unsupported")
        env.update({name: environ[name] for name in self.env_passthrough if name in environ})
        for name, value in self.default_env.items():
            env.setdefault(name, value)
        for var in container.env or []:
            if var.value_from is not None:
                raise AirflowException(f"local runner: env {var.name} uses valueFrom (no local form)")
            env[var.name] = self.local_path(var.value or "")
        return argv, env


def drop_empty_options(arguments: Sequence[str]) -> list[str]:
    """Remove ``--option ""`` pairs: how a templated option whose DAG param is null disappears.

    Args:
        arguments: Rendered container arguments.

    Returns:
        The arguments without options whose value rendered empty.
    """
    result: list[str] = []
    i = 0
    while i < len(arguments):
        if arguments[i].startswith("--") and i + 1 < len(arguments) and arguments[i + 1] == "":
            i += 2
            continue
        result.append(arguments[i])
        i += 1
    return result


def terminated_state(pod: k8s.V1Pod | None, container: str) -> k8s.V1ContainerStateTerminated | None:
    """How a pod's ``container`` ended (exit code, reason), read as ``skip_on_exit_code`` reads it."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    return status.state.terminated if status is not None and status.state else None


def local_runner_enabled() -> bool:
    """Whether stage tasks run as local processes (env ``DEEPGUARD_LOCAL_RUNNER`` or the Airflow Variable)."""
    if os.environ.get(LOCAL_RUNNER_ENV, "").strip().lower() in _TRUE:
        return True
    value = Variable.get(LOCAL_RUNNER_VARIABLE, default="")
    return str(value).strip().lower() in _TRUE


class DeepGuardStageOperator(KubernetesPodOperator):
    """Run one pipeline stage in a pod, or, with the local runner on, as a local process built from that pod.

    Args:
        local_runner: How to map the pod onto this machine when the local runner is on.
        local_arguments: Arguments used instead of ``arguments`` in local mode (deploy's ``--target local``);
            the pod is built with them, so the local process still runs exactly what that pod would run.
        run_if_param: Name of a boolean DAG param; when it is false the task is skipped (deploy).
        fail_on_exit_code: Exit codes of the stage after which retrying cannot help (bad input, missing
            credentials): the task fails at once, without its retries, in a pod as in a local process.
            The counterpart of ``skip_on_exit_code``; any other non-zero code fails the try and is retried.
        **kwargs: Passed to :class:`KubernetesPodOperator`.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "local_arguments")

    def __init__(
        self,
        *,
        local_runner: LocalRunner,
        local_arguments: Sequence[str] | None = None,
        run_if_param: str | None = None,
        fail_on_exit_code: Collection[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fail_on_exit_code = tuple(fail_on_exit_code)
        self.local_runner = local_runner
        self.local_arguments = list(local_arguments) if local_arguments is not None else None
        self.run_if_param = run_if_param
        self._process: subprocess.Popen[str] | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Render templates, then drop the options whose value rendered empty."""
        super().render_template_fields(context, jinja_env)
        self.arguments = drop_empty_options(self.arguments)
        if self.local_arguments is not None:
            self.local_arguments = drop_empty_options(self.local_arguments)

    def execute(self, context: Any) -> Any:
        """Refuse an unknown trigger param; skip when the DAG param says so; run locally or in a pod."""
        self._check_trigger_conf(context)
        if self.run_if_param is not None and not context["params"][self.run_if_param]:
            raise AirflowSkipException(f"param {self.run_if_param} is false")
        if not local_runner_enabled():
            return super().execute(context)
        if self.local_arguments is not None:
            self.arguments = self.local_arguments
        pod = self.build_pod_request_obj(context, dry_run=True)
        if not self.do_xcom_push:
            argv, env = self.local_runner.process(pod, os.environ)
            self.log.info("Local runner: %s", " ".join(argv))
            self._run(argv, env)
            return None
        # As in a pod, the stage writes its result to /airflow/xcom/return.json (here a temporary folder),
        # and that JSON becomes the task's return value.
        with tempfile.TemporaryDirectory(prefix="deepguard-xcom-") as folder:
            paths = {**self.local_runner.paths, PodDefaults.XCOM_MOUNT_PATH: Path(folder)}
            argv, env = dataclasses.replace(self.local_runner, paths=paths).process(pod, os.environ)
            self.log.info("Local runner: %s", " ".join(argv))
            self._run(argv, env)
            result = Path(folder) / "return.json"
            if not result.is_file():
                raise AirflowException(
                    f"stage {self.task_id} wrote no {PodDefaults.XCOM_MOUNT_PATH}/return.json"
                )
            return json.loads(result.read_text())

    def _check_trigger_conf(self, context: Any) -> None:
        """Fail (no retries) on a trigger conf key that is not a param of the DAG.

        Airflow keeps such a key among the params, where nothing reads it: a misspelt ``epochs`` would run
        the whole pipeline with the value of params.yaml and no word about it.
        """
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        unknown = sorted(set(conf) - set(self.dag.params))
        if unknown:
            known = (
                f"the params of {self.dag.dag_id} are {', '.join(sorted(self.dag.params))}"
                if self.dag.params
                else f"{self.dag.dag_id} takes no params (trigger it without conf)"
            )
            raise AirflowFailException(f"unknown trigger param(s) {', '.join(unknown)}: {known}")

    def cleanup(
        self,
        pod: k8s.V1Pod,
        remote_pod: k8s.V1Pod,
        xcom_result: dict | None = None,
        context: Any = None,
    ) -> None:
        """Delete the pod as the provider does; a failure with an exit code of ``fail_on_exit_code`` is final.

        The provider reports every failed container with ``AirflowException``, which Airflow retries. Both
        the sync and the deferrable path end here, after the pod's log has been streamed into the task log.
        """
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except (AirflowSkipException, AirflowFailException):
            raise
        except AirflowException as exc:
            terminated = terminated_state(remote_pod, self.base_container_name)
            if terminated is None:
                raise
            code, failure = terminated.exit_code, str(exc).rstrip()
            if code in self.fail_on_exit_code:
                raise AirflowFailException(f"{self._final(code)}\n{failure}") from exc
            # The provider's message ends with the stage's last log lines; a kill (OOMKilled) leaves no line
            # that says so, only the container's reason.
            reason = f" ({terminated.reason})" if terminated.reason not in {None, "Error"} else ""
            ended = f"stage {self.task_id} exited with code {code}{reason}"
            raise AirflowException(f"{failure}\n{ended}") from exc

    def _final(self, code: int) -> str:
        """Why a failure with exit code ``code`` is not retried, and what to do about it."""
        return (
            f"stage {self.task_id} exited with code {code}: an error that a retry would meet again (bad "
            "input or settings, missing credentials; the stage's last log line says which), so the task is "
            "not retried. Fix the cause, then clear the task to rerun it."
        )

    def _run(self, argv: list[str], env: dict[str, str]) -> None:
        # Its own process group, so a timeout or a kill stops the stage and anything it started.
        try:
            self._process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.local_runner.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:  # no such interpreter, not executable: no retry brings it
            raise AirflowFailException(
                f"local runner: cannot start {argv[0]} ({exc.strerror or exc}): run `make setup`, or point "
                "DEEPGUARD_LOCAL_PYTHON at the stages' Python environment"
            ) from None
        last = ""
        try:
            assert self._process.stdout is not None
            for line in self._process.stdout:
                line = line.rstrip()
                if line:
                    last = line
                    self.log.info("%s", line)
            code = self._process.wait()
        finally:
            self._stop()
        if code in self.fail_on_exit_code:
            raise AirflowFailException(f"{self._final(code)} Its last line: {last}")
        if code < 0:  # a signal, as a pod's 128 + n: SIGKILL is what the kernel's OOM killer sends
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            oom = " (out of memory?)" if -code == signal.SIGKILL else ""
            said = f"; its last line: {last}" if last else ""
            raise AirflowException(f"stage {self.task_id} was killed by {name}{oom}{said}")
        if code != 0:
            raise AirflowException(f"stage {self.task_id} exited with code {code}: {last}")

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()

    def on_kill(self) -> None:
        """Stop the local process, or delete the pod."""
        if self._process is not None:
            self._stop()
            return
        super().on_kill()
