"""The series both servers declare, and a check of PromQL (alerts, dashboard, canary) against them.

The declarations are the prometheus_client objects of ``serving/metrics.py`` and ``flask_app/metrics.py``
(and the drift collector's gauges): the one place a name, a type and the label names live.
tests/serve/test_prometheus.py checks that a live scrape of both servers after real requests exports
exactly these; tests/k8s/test_chart_monitoring.py checks every query of the chart and of deploy/canary.py
against them.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Target labels prometheus-operator puts on every series a PodMonitor or ServiceMonitor scrapes (its scrape
# config generator: job, instance, namespace, service, pod, container, and "endpoint", the port's name). An
# exported label of the same name is renamed "exported_<name>": every query selecting by it comes back empty.
OPERATOR_TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}
)
# Functions a counter (or a histogram's _bucket/_sum/_count) must be wrapped in: its raw value means nothing.
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(
    r"(?P<name>\b[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{(?P<matchers>[^}]*)\}|\bdeepguard_[a-z0-9_]+\b"
)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Family:
    """One declared metric family: its exposed name, type and label names."""

    name: str  # as exposed: a counter with its _total, an info without its _info
    type: str  # counter, gauge, histogram or info
    labels: frozenset[str]

    def samples(self) -> dict[str, frozenset[str]]:
        """The sample names this family exposes, each with its label names."""
        if self.type == "histogram":
            return {
                f"{self.name}_bucket": self.labels | {"le"},
                f"{self.name}_sum": self.labels,
                f"{self.name}_count": self.labels,
            }
        if self.type == "info":
            return {f"{self.name}_info": self.labels}
        return {self.name: self.labels}


def declared_families() -> dict[str, Family]:
    """Every ``deepguard_*`` family the predictor and the web app declare, by exposed name."""
    from prometheus_client.metrics import MetricWrapperBase

    import flask_app.metrics
    import serving.metrics

    families = {}
    for module in (serving.metrics, flask_app.metrics):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                labels = frozenset(metric._labelnames)
                if metric._type == "info":
                    labels = frozenset(serving.metrics.MODEL_INFO_LABELS)
                name = f"{metric._name}_total" if metric._type == "counter" else metric._name
                families[name] = Family(name, metric._type, labels)
    # The drift gauges exist once the monitor has written its summary: collect them from one.
    with tempfile.TemporaryDirectory() as folder:
        summary = {"status": "drift", "drift": True, "psi": 0.3, "model_version": "1"}
        summary["ts"] = "2026-12-01T12:00:00+00:00"
        (Path(folder) / serving.metrics.DRIFT_LATEST).write_text(json.dumps(summary))
        for gauge in serving.metrics.DriftCollector(Path(folder)).collect():
            labels = frozenset(label for sample in gauge.samples for label in sample.labels)
            families[gauge.name] = Family(gauge.name, gauge.type, labels)
    return families


def declared_samples(families: dict[str, Family]) -> dict[str, tuple[Family, frozenset[str]]]:
    """Sample name -> (its family, its label names)."""
    return {sample: (f, labels) for f in families.values() for sample, labels in f.samples().items()}


def query_problems(expr: str, families: dict[str, Family], target_labels: frozenset[str]) -> list[str]:
    """What is wrong with one PromQL expression against the declared series (empty: nothing).

    Checks every ``deepguard_*`` selector: the series exists under that exact name (a histogram is queried
    by ``_bucket``/``_sum``/``_count``, a counter with its ``_total``), every label it matches on exists,
    a counter is read through rate/irate/increase and a gauge never is; every ``by``/``without`` label exists
    on the series the expression reads; ``histogram_quantile`` is given buckets summed ``by (le)``.

    Args:
        expr: The expression.
        families: :func:`declared_families`.
        target_labels: Labels the scrape adds (prometheus-operator's, the PodMonitor's relabelings).
    """
    samples = declared_samples(families)
    problems, seen_labels = [], set(target_labels)
    # Names inside strings ({__name__=~"deepguard_.+"}, label values) are not selectors: blank them out.
    code = _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    for match in _SELECTOR.finditer(code):
        braces = match.group("matchers") is not None
        name = match.group("name") if braces else match.group()
        matchers = _MATCHER.findall(expr[match.start("matchers") : match.end("matchers")]) if braces else []
        if name is None or name in {"by", "without"}:  # {__name__=~...} alone, or a grouping's braces
            names = [value for label, _, value in matchers if label == "__name__"]
            if not any(value.startswith("deepguard_") for value in names):
                continue
            labels = {label for label, _, _ in matchers if label != "__name__"}
            known = set().union(*(labels_ for _, labels_ in samples.values()), target_labels)
            problems += [
                f"{expr!r}: no deepguard_* series has the label {label!r}" for label in labels - known
            ]
            continue
        if not name.startswith("deepguard_"):
            continue
        if name not in samples:
            problems.append(f"{expr!r}: {name} is not an exported series")
            continue
        family, labels = samples[name]
        seen_labels |= labels
        for label, _, _ in matchers:
            if label not in labels | target_labels:
                problems.append(f"{expr!r}: {name} has no label {label!r} (it has {sorted(labels)})")
        wrapper = re.search(r"\b([a-z_]+)\s*\(\s*$", code[: match.start()])
        function = wrapper.group(1) if wrapper else None
        cumulative = family.type == "counter" or (family.type == "histogram" and name != family.name)
        if cumulative and function not in COUNTER_FUNCTIONS:
            problems.append(f"{expr!r}: {name} is a counter, read without rate()/increase() ({function})")
        if not cumulative and function in COUNTER_FUNCTIONS:
            problems.append(f"{expr!r}: {name} is a {family.type}, not a counter: {function}() means nothing")
    for group in _GROUPING.findall(code):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in seen_labels:
                problems.append(f"{expr!r}: grouping by {label!r}, which the series it reads do not have")
    if "histogram_quantile" in code and not re.search(r"\bby\s*\([^)]*\ble\b", code):
        problems.append(f"{expr!r}: histogram_quantile needs the buckets summed by (le)")
    return problems


def legend_problems(expr: str, legend: str) -> list[str]:
    """A dashboard legend's ``{{label}}`` that the aggregated expression no longer carries."""
    groups = re.findall(r"\bby\s*\(([^)]*)\)", _STRING.sub('""', expr))
    if not groups:
        return []  # no aggregation: the series keep all their labels (query_problems checks the selectors)
    kept = {part.strip() for group in groups for part in group.split(",")}
    return [
        f"legend {legend!r} of {expr!r}: {label!r} is aggregated away"
        for label in _LEGEND.findall(legend)
        if label not in kept
    ]
