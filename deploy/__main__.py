"""Deploy stage: roll the MLflow champion out to KServe (canary, promote or roll back) or a local predictor.

``python -m deploy [--target kserve|local] [--dry-run] [--timeout S] [--canary-percent P] [--pin N|--unpin]``

kserve: read the champion (alias ``champion`` of ``mlflow.model_name``), map its artifact location to a URI
KServe's storage initializer reads (``pvc://`` or ``s3://``), take the chart's InferenceService from its
ConfigMap ``deepguard-serving`` and patch in the champion (deploy/manifest.py), apply it with
``canaryTrafficPercent``, wait for Ready, then promote to 100 % or restore the previous predictor. The outcome
is tagged on the model version (``deployment_status``, ``deployed_at``, ...) and written to
``reports/deployment.json``. local: ask the local predictor to reload the champion over KServe's model
repository API and check the version it reports.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from core.atomic import write_json
from core.cli import run_stage, stage_parser
from core.config import CanaryParams, Params
from core.errors import DeepGuardError, redact_credentials
from core.names import (
    SERVED_MODEL_NAME,
)
from core.pipeline import DEPLOYMENT_FILE
from core.settings import settings
from deploy.canary import Prometheus, watch
from deploy.local import deploy_local, predictor_url
from deploy.manifest import Champion, DeployError, ServingConfig, rollout_manifest
from deploy.registry import SERVING_STATUSES, DeploymentResult, pin_champion, read_champion, tag_version
from deploy.rollout import (
    CanaryAnalysis,
    InferenceServices,
    current_namespace,
    deploy_kserve,
    kube_api_client,
    read_serving_config,
)

log = logging.getLogger(__name__)


def run(
    params: Params,
    target: str,
    dry_run: bool = False,
    timeout_s: float = 600.0,
    canary_percent: int | None = 20,
    namespace: str | None = None,
    serving_config: Path | None = None,
    poll_s: float = 5.0,
    prometheus_url: str | None = None,
    pin: str | None = None,
    unpin: bool = False,
) -> DeploymentResult:
    """Roll the champion out and record the outcome.

    Args:
        params: Validated params (``mlflow.model_name``).
        target: ``kserve`` (the InferenceService) or ``local`` (the predictor on PREDICTOR_URL).
        dry_run: Print the InferenceService manifest (YAML) instead of applying it; no cluster access.
        timeout_s: Seconds the new revision has to become Ready.
        canary_percent: Traffic share of the new revision before promotion (None: no canary).
        namespace: Target namespace (default: DEEPGUARD_NAMESPACE, else the pod's, else ``deepguard``).
        serving_config: The chart's serving ConfigMap as a YAML file, instead of the cluster's (needed by a
            dry run without a cluster).
        poll_s: Seconds between status reads.
        prometheus_url: Judge the canary by its metrics there (params ``canary``) before promoting it;
            default DEEPGUARD_PROMETHEUS_URL; None: promote once Ready.
        pin: Make this version the champion first and keep register's gate from replacing it (a rollback).
        unpin: Remove the pin first: the next register's gate may replace the champion again.

    Returns:
        The deployment result, also written to reports/deployment.json (not for a dry run); a deploy that
        stops before it has one (no champion, no cluster, interrupted) records ``failed`` there and why.

    Raises:
        DeployError: on a missing champion, an unreachable cluster, or a rollout rolled back or failed.
    """
    namespace = namespace or current_namespace()
    champion: Champion | None = None
    try:
        config = ServingConfig.from_file(serving_config) if serving_config else None
        api_client = None
        if dry_run and config is None:
            raise DeployError(
                "a dry run needs the chart's serving ConfigMap: --serving-config FILE, from `helm template "
                "deepguard helm/deepguard -s templates/predictor/configmap.yaml > FILE`"
            )
        if target == "kserve" and config is None:
            api_client = kube_api_client()
            config = read_serving_config(api_client, namespace)
        uri_map = config.artifact_uri_map if config and (target == "kserve" or dry_run) else None
        if pin is not None or unpin:
            if dry_run:
                raise DeployError("--pin and --unpin change the registry: a dry run changes nothing")
            pin_champion(params.mlflow.model_name, pin)
        champion = read_champion(params.mlflow.model_name, uri_map)
        log.info(
            "champion: %s version %s at %s", champion.model_name, champion.version, champion.artifact_uri
        )
        if dry_run:
            manifest = rollout_manifest(
                config, namespace, champion, canary_percent if config.canary_supported else None
            )
            sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
            return DeploymentResult(
                status="dry_run",
                target=f"kserve:{namespace}/{config.name}",
                model_name=champion.model_name,
                version=champion.version,
                storage_uri=champion.storage_uri,
                canary_percent=canary_percent,
            )
        if target == "local":
            result = deploy_local(champion, predictor_url(), SERVED_MODEL_NAME, timeout_s)
        else:
            services = InferenceServices(api_client or kube_api_client(), namespace)
            analysis = _canary_analysis(prometheus_url or settings().prometheus_url, params.canary, poll_s)
            result = deploy_kserve(champion, config, services, canary_percent, timeout_s, poll_s, analysis)
    except BaseException as exc:
        if not dry_run:
            # The previous deployment's record must not be read as this attempt's outcome.
            write_json(DEPLOYMENT_FILE, asdict(_failure(params, target, namespace, champion, exc)))
        raise
    write_json(DEPLOYMENT_FILE, asdict(result))
    if _tags_to_record(result.status, champion.recorded_status):
        tag_version(champion, result)
    log.info("deploy: %s: version %s -> %s (%s)", result.status, result.version, result.target, result.detail)
    if result.status in ("rolled_back", "failed"):
        raise DeployError(f"version {result.version} {result.status.replace('_', ' ')}: {result.detail}")
    return result


def _tags_to_record(status: str, recorded_status: str) -> bool:
    """Whether the outcome goes on the version's tags: not ``unchanged`` over the tags of the rollout serving.

    An ``unchanged`` version still tagged otherwise (the registry failed while tagging the rollout that made
    it serve, and the task was retried) is tagged now.
    """
    if status == "no_predictor":
        return False
    return status != "unchanged" or recorded_status not in SERVING_STATUSES


def _failure(
    params: Params, target: str, namespace: str, champion: Champion | None, exc: BaseException
) -> DeploymentResult:
    """The record of a deploy that stopped before it had an outcome (no champion, no cluster, interrupted)."""
    why = str(exc) if isinstance(exc, DeepGuardError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
    return DeploymentResult(
        status="failed",
        target=f"local:{redact_credentials(predictor_url())}" if target == "local" else f"kserve:{namespace}",
        model_name=params.mlflow.model_name,
        version=champion.version if champion else "",
        storage_uri=champion.storage_uri if champion else "",
        detail=redact_credentials(" ".join(why.split())),
    )


def _canary_analysis(url: str | None, bounds: CanaryParams, poll_s: float) -> CanaryAnalysis | None:
    """Watch canaries in Prometheus at ``url``; without one, say that Ready is all a canary must be."""
    if not url:
        log.info("no Prometheus configured (DEEPGUARD_PROMETHEUS_URL): a canary is promoted once Ready")
        return None
    prometheus = Prometheus(url)
    log.info("canaries are judged by Prometheus at %s for %gs", redact_credentials(url), bounds.watch_seconds)
    return functools.partial(watch, prometheus, bounds=bounds, poll_s=max(poll_s, 1.0) * 3)


def _default_target() -> str:
    # Inside a cluster the champion goes to the InferenceService; on a workstation to the local predictor.
    return "kserve" if settings().in_cluster else "local"


def _percent(text: str) -> int | None:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("expected 0..100")
    return None if value in (0, 100) else value


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy``: parse arguments, set up logging, call :func:`run`."""
    parser = stage_parser(
        "deploy",
        "Roll the MLflow champion out to KServe (canary, promote or roll back), "
        "or reload the local predictor.",
        module="deploy",
    )
    parser.add_argument(
        "--target",
        choices=("kserve", "local"),
        default=None,  # decided in the stage: a bad environment is then its one-line error, not a traceback
        help="kserve: the InferenceService; local: the predictor at PREDICTOR_URL "
        "(default: kserve inside a cluster, else local)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the InferenceService YAML; apply nothing"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for Ready (default 600)"
    )
    parser.add_argument(
        "--canary-percent",
        type=_percent,
        default=20,
        help="traffic share of the new revision before promotion; 0 or 100: no canary (default 20)",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="namespace (default: DEEPGUARD_NAMESPACE, else the pod's, else deepguard)",
    )
    parser.add_argument(
        "--serving-config",
        type=Path,
        default=None,
        help="the chart's deepguard-serving ConfigMap as YAML (helm template -s "
        "templates/predictor/configmap.yaml) instead of reading it from the cluster",
    )
    parser.add_argument(
        "--prometheus-url",
        default=None,
        help="judge the canary by its metrics there before promoting (default: DEEPGUARD_PROMETHEUS_URL; "
        "none: promote once Ready); bounds in params.yaml canary:",
    )
    pinning = parser.add_mutually_exclusive_group()
    pinning.add_argument(
        "--pin",
        metavar="VERSION",
        default=None,
        help="roll back or forward: make VERSION the champion, then deploy it; register's gate promotes "
        "nothing until --unpin (the registered model's tag champion_pinned)",
    )
    pinning.add_argument(
        "--unpin", action="store_true", help="remove the pin, then deploy the champion as usual"
    )
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)

    def stage(args: argparse.Namespace, params: Params) -> DeploymentResult:
        if args.dry_run:
            # stdout carries only the manifest, so it can be piped to `kubectl apply -f -`.
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                    handler.setStream(sys.stderr)
        serving_config = args.serving_config.resolve() if args.serving_config else None
        return run(
            params,
            args.target or _default_target(),
            args.dry_run,
            args.timeout,
            args.canary_percent,
            args.namespace,
            serving_config,
            args.poll,
            args.prometheus_url,
            args.pin,
            args.unpin,
        )

    return run_stage("deploy", stage, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
