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


def _nothing_listening(exc: Exception) -> bool:
    # No connection was made (refused, unresolvable or timed out: NewConnectionError is a ConnectTimeoutError)
    # so no request was sent; a predictor that closes the connection midway (killed while loading the
    # champion) is running, and its reload failed.
    from urllib3.exceptions import ConnectTimeoutError

    return isinstance(getattr(exc.args[0] if exc.args else None, "reason", None), ConnectTimeoutError)


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
    except requests.ConnectionError as exc:
        if not _nothing_listening(exc):
            raise DeployError(
                f"predictor at {url} dropped the reload of version {champion.version} "
                "(did it crash loading the champion? see its log)"
            ) from None
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
        answer = " ".join(response.text[:200].split())  # one line, even from a proxy's error page
        raise DeployError(f"predictor at {url} refused the reload: HTTP {response.status_code} {answer}")
    try:
        metadata = requests.get(f"{url}/v2/models/{model}", timeout=timeout_s)
        metadata.raise_for_status()
        served = [str(v) for v in metadata.json().get("versions") or []]
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise DeployError(
            f"predictor at {url}: cannot read the version it serves after the reload ({type(exc).__name__})"
        ) from None
    if champion.version not in served:
        raise DeployError(
            f"predictor at {url} serves version(s) {served} after the reload, "
            f"expected the champion {champion.version}"
        )
    result.detail = f"predictor reloaded; serves version {champion.version}"
    return result
