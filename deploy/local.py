"""Make a running local predictor reload the champion through KServe's model repository endpoint."""

from __future__ import annotations

import logging

from core.errors import redact_credentials
from core.settings import settings
from deploy.manifest import Champion, DeployError
from deploy.registry import DeploymentResult

log = logging.getLogger(__name__)


def predictor_url() -> str:
    """PREDICTOR_URL, else the local predictor on PREDICTOR_PORT."""
    return settings().local_predictor_url


def deploy_local(champion: Champion, url: str, model: str, timeout_s: float) -> DeploymentResult:
    """Make the running local predictor reload the champion and check the version it then serves."""
    import requests

    shown = redact_credentials(url)  # the report and the log never carry PREDICTOR_URL's user:password
    result = DeploymentResult(
        status="reloaded",
        target=f"local:{shown}",
        model_name=champion.model_name,
        version=champion.version,
        storage_uri=champion.artifact_uri,
        endpoint=shown,
    )
    try:
        response = requests.post(f"{url}/v2/repository/models/{model}/load", timeout=timeout_s)
    except requests.ConnectionError:
        log.info(
            "no predictor is running at %s: nothing to reload; `make serve` will serve the champion "
            "(version %s) when it starts",
            shown,
            champion.version,
        )
        result.status, result.detail = "no_predictor", f"no predictor at {shown}"
        return result
    except requests.RequestException as exc:
        raise DeployError(f"reload request to {url} failed: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise DeployError(
            f"predictor at {url} refused the reload: HTTP {response.status_code} {response.text[:200]}"
        )
    metadata = requests.get(f"{url}/v2/models/{model}", timeout=timeout_s).json()
    served = [str(v) for v in metadata.get("versions") or []]
    if champion.version not in served:
        raise DeployError(
            f"predictor at {url} serves version(s) {served} after the reload, "
            f"expected the champion {champion.version}"
        )
    result.detail = f"predictor reloaded; serves version {champion.version}"
    return result
