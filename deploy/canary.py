"""Canary analysis: judge a Ready canary revision against the stable one from Prometheus before promoting.

Deploy asks Prometheus (its HTTP API, ``/api/v1/query``) for each revision's request count, 5xx share, p99
latency and mean P(FAKE) over the watch so far; the predictor exports them
(``deepguard_requests_total``, ``deepguard_request_duration_seconds``, ``deepguard_fake_probability``) and the
chart's PodMonitor labels every series with its Knative ``revision``. The canary is refused as soon as a bound
is broken, and promoted when the watch ends within bounds. Without enough canary traffic there is no evidence
either way (params ``canary.without_evidence`` decides), unless its 5xx already break the bound at
``min_requests``; but a canary that exported no ``deepguard_*`` series at all during the watch (it crashed
before serving, or is not scraped) is refused: the predictor publishes ``deepguard_model_info`` once it has
loaded, so that is not a quiet canary.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.config import CanaryParams
from core.errors import redact_credentials
from deploy.manifest import DeployError

log = logging.getLogger(__name__)

PROMETHEUS_TIMEOUT_S = 10


@dataclass(frozen=True)
class RevisionStats:
    """One revision's traffic over the window (None: no data, e.g. no request yet)."""

    requests: float
    error_ratio: float | None
    p99_seconds: float | None
    mean_score: float | None


class Prometheus:
    """The few instant queries canary analysis needs, over Prometheus's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def value(self, query: str) -> float | None:
        """The single value of an instant query; None when it returns no sample or NaN.

        Raises:
            DeployError: when Prometheus is unreachable or refuses the query.
        """
        import requests

        try:
            response = requests.get(
                f"{self.url}/api/v1/query", params={"query": query}, timeout=PROMETHEUS_TIMEOUT_S
            )
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            where = redact_credentials(self.url)
            raise DeployError(f"Prometheus at {where} unreachable ({type(exc).__name__})") from None
        if body.get("status") != "success":
            raise DeployError(f"Prometheus refused {query!r}: {body.get('error', response.status_code)}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def exports(self, revision: str) -> bool:
        """Whether any ``deepguard_*`` series of ``revision`` is current (its pods answer scrapes)."""
        return self.value(f'count({{__name__=~"deepguard_.+",revision="{revision}"}})') is not None

    def revision_stats(self, revision: str, window_s: int) -> RevisionStats:
        """Requests, 5xx share, p99 latency and mean P(FAKE) of ``revision`` over the last ``window_s``."""
        where, window = f'revision="{revision}"', f"{max(window_s, 1)}s"
        requests_ = self.value(f"sum(increase(deepguard_requests_total{{{where}}}[{window}]))") or 0.0
        errors = self.value(f'sum(increase(deepguard_requests_total{{{where},code=~"5.."}}[{window}]))')
        p99 = self.value(
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(deepguard_request_duration_seconds_bucket{{{where}}}[{window}])))"
        )
        score_sum = self.value(f"sum(increase(deepguard_fake_probability_sum{{{where}}}[{window}]))")
        score_count = self.value(f"sum(increase(deepguard_fake_probability_count{{{where}}}[{window}]))")
        return RevisionStats(
            requests=requests_,
            # increase() extrapolates each series to the window's edges: a ratio can overshoot 1 slightly.
            error_ratio=min((errors or 0.0) / requests_, 1.0) if requests_ else None,
            p99_seconds=p99,
            mean_score=score_sum / score_count if score_sum is not None and score_count else None,
        )


def judge(canary: RevisionStats, stable: RevisionStats, bounds: CanaryParams) -> tuple[bool | None, str]:
    """Compare the canary with the stable revision.

    Returns:
        ``(True, why)`` within bounds, ``(False, why)`` when a bound is broken, ``(None, why)`` when the
        canary has had too little traffic to tell.
    """
    stable_errors = stable.error_ratio or 0.0
    if canary.requests < bounds.min_requests:
        # Too few requests to judge a share by, unless the 5xx already seen break the bound at min_requests
        # (all requests failing on a quiet service is evidence, not its absence).
        errors = (canary.error_ratio or 0.0) * canary.requests
        if errors / bounds.min_requests > stable_errors + bounds.max_error_ratio_increase:
            return False, (
                f"{errors:.0f} of {canary.requests:.0f} canary requests failed (5xx), over the bound "
                f"even at {bounds.min_requests} requests (stable {stable_errors:.1%})"
            )
        return (
            None,
            f"{canary.requests:.0f} canary requests, fewer than the {bounds.min_requests} needed to judge",
        )
    if (
        canary.error_ratio is not None
        and canary.error_ratio > stable_errors + bounds.max_error_ratio_increase
    ):
        return False, f"canary 5xx share {canary.error_ratio:.1%} vs stable {stable_errors:.1%}"
    if canary.p99_seconds is not None and stable.p99_seconds is not None:
        limit = stable.p99_seconds * bounds.max_p99_ratio + bounds.p99_slack_seconds
        if canary.p99_seconds > limit:
            return (
                False,
                f"canary p99 {canary.p99_seconds * 1000:.0f} ms vs stable {stable.p99_seconds * 1000:.0f} ms",
            )
    if canary.mean_score is not None and stable.mean_score is not None:
        shift = abs(canary.mean_score - stable.mean_score)
        if shift > bounds.max_score_shift:
            return False, (
                f"canary mean P(FAKE) {canary.mean_score:.3f} vs stable {stable.mean_score:.3f} "
                f"(shift {shift:.3f} > {bounds.max_score_shift})"
            )
    return True, (
        f"{canary.requests:.0f} canary requests: 5xx {canary.error_ratio or 0:.1%}, "
        f"p99 {_ms(canary.p99_seconds)} (stable {_ms(stable.p99_seconds)}), "
        f"mean P(FAKE) {_score(canary.mean_score)} (stable {_score(stable.mean_score)})"
    )


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def watch(
    prometheus: Prometheus,
    canary: str,
    stable: str,
    bounds: CanaryParams,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """Watch the canary for ``bounds.watch_seconds``; refuse it at the first broken bound.

    Args:
        prometheus: The Prometheus that scrapes the predictor pods.
        canary: The canary's Knative revision name.
        stable: The stable revision's name.
        bounds: params ``canary``.
        poll_s: Seconds between checks.

    Returns:
        ``(promote, why)``.
    """
    start = clock()
    exported = False  # whether the canary ever had a deepguard_* series during the watch
    while True:
        elapsed = clock() - start
        verdict, why = judge(
            prometheus.revision_stats(canary, math.ceil(elapsed) or 1),
            prometheus.revision_stats(stable, math.ceil(elapsed) or 1),
            bounds,
        )
        exported = exported or prometheus.exports(canary)
        if verdict is False:
            return False, f"refused after {elapsed:.0f}s: {why}"
        if elapsed >= bounds.watch_seconds:
            if verdict is None and not exported:
                # No series is not "no traffic": a canary that has loaded its model exports them.
                where = (
                    "the stable revision does: did the canary crash before serving?"
                    if prometheus.exports(stable)
                    else "nor does the stable revision: does Prometheus scrape the predictor (PodMonitor)?"
                )
                return False, f"refused after {elapsed:.0f}s: canary exported no deepguard_* series; {where}"
            if verdict is None:
                promote = bounds.without_evidence == "promote"
                return promote, f"no evidence after {elapsed:.0f}s ({why}): {bounds.without_evidence}"
            return True, f"within bounds for {elapsed:.0f}s: {why}"
        log.info("canary %s vs %s after %.0fs: %s", canary, stable, elapsed, why)
        sleep(min(poll_s, max(bounds.watch_seconds - elapsed, 0.0)))
