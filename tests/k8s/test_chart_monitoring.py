"""The chart's monitoring objects: rendered only when asked, valid, PromQL checked by a real promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_helpers import CHART, find, render
from metric_catalog import OPERATOR_TARGET_LABELS, declared_families, legend_problems, query_problems
from monitoring_schemas import SCHEMAS

from deploy.canary import Prometheus

MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not found (apt-get install prometheus)")
    return path


def _errors(obj: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMAS[obj["kind"]])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_default_install_renders_no_monitoring_object() -> None:
    objects = render("default")
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [o for o in objects if o["metadata"]["name"].endswith("-dashboard")]


@pytest.mark.parametrize("kind", MONITORING_KINDS)
def test_monitoring_objects_match_their_schema(kind: str) -> None:
    obj = find(render("monitoring"), kind)
    assert _errors(obj) == []
    assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # monitoring.labels reach them


def test_the_schema_check_can_fail() -> None:
    monitor = find(render("monitoring"), "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    assert any("intervall" in error for error in _errors(monitor))


def test_monitors_select_the_predictor_pods_and_the_web_service() -> None:
    objects = render("monitoring")
    pod_monitor = find(objects, "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "deepguard"
    }
    # The port it scrapes is the one Knative gives the pods, not the InferenceService's name: see below.
    # The web app's: its metrics port, through the Service made for it, which selects the web pods.
    service = find(objects, "Service", "deepguard-web-metrics")
    service_monitor = find(objects, "ServiceMonitor")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    web_pods = find(objects, "Deployment", "deepguard-web")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= web_pods.items()
    public = find(objects, "Service", "deepguard-web")["metadata"]["labels"]
    assert not service_monitor["spec"]["selector"]["matchLabels"].items() <= public.items()


def test_the_web_metrics_port_is_never_public() -> None:
    """The Ingress routed every path to the app's port, which served /metrics: anyone on the internet read
    request counts and error rates. gunicorn's master now serves them on WEB_METRICS_PORT (the app's port
    answers 404, tests/serve/test_metrics.py); the chart gives that port to the pods, to a ClusterIP Service
    of its own and to Prometheus's namespace only, never to the web Service (even a LoadBalancer one) or the
    Ingress."""
    objects = render(
        "monitoring",
        web__service__type="LoadBalancer",
        web__ingress__enabled=True,
        web__ingress__host="deepguard.example.com",
        web__metricsPort=9300,
    )
    container = find(objects, "Deployment", "deepguard-web")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ports == {"http": int(env["WEB_PORT"]), "metrics": 9300}
    assert env["WEB_METRICS_PORT"] == "9300"
    public = find(objects, "Service", "deepguard-web")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    backends = [
        path["backend"]["service"]
        for rule in find(objects, "Ingress")["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends == [{"name": "deepguard-web", "port": {"name": "http"}}]
    metrics_service = find(objects, "Service", "deepguard-web-metrics")
    assert metrics_service["spec"]["type"] == "ClusterIP"
    assert metrics_service["spec"]["ports"] == [
        {"name": "metrics", "port": 9300, "targetPort": "metrics", "protocol": "TCP"}
    ]
    # Only Prometheus's namespace reaches the metrics port; the other rules (ingress controller, helm test)
    # name the web port alone.
    rules = find(objects, "NetworkPolicy", "deepguard-web")["spec"]["ingress"]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    by_port = [(rule.get("from"), [p["port"] for p in rule["ports"]]) for rule in rules]
    assert [peers for peers, ports in by_port if 9300 in ports] == [prometheus]
    assert all(ports == [9300] for peers, ports in by_port if peers == prometheus)


def test_network_policies_let_prometheus_scrape() -> None:
    objects = render("monitoring")
    for name in ("deepguard-predictor", "deepguard-web"):
        policy = find(objects, "NetworkPolicy", name)
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in peers
    # Without restricted web peers too (the default): the metrics port is still Prometheus's alone.
    web = find(render(monitoring__serviceMonitor__enabled=True), "NetworkPolicy", "deepguard-web")
    metrics_rules = [r for r in web["spec"]["ingress"] if any(p["port"] == 9100 for p in r["ports"])]
    assert [r.get("from") for r in metrics_rules] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    ]


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rule = find(render("monitoring"), "PrometheusRule")
    alerts = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {
        "DeepGuardPredictorErrors",
        "DeepGuardPredictorSlow",
        "DeepGuardNoTraffic",
        "DeepGuardInputDrift",
    } <= set(alerts)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "rate(x[5m]"}]}]})
    )
    result = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode != 0


def test_grafana_dashboard_configmap_carries_the_dashboard_and_its_queries_parse(tmp_path: Path) -> None:
    config_map = find(render("monitoring"), "ConfigMap", "deepguard-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["deepguard.json"])["uid"] == "deepguard"
    queries = [target["expr"] for target in dashboard_targets()]
    assert len(queries) >= 8
    # promtool parses PromQL in rule files: each query becomes a recording rule.
    records = [{"record": f"deepguard:panel_{i}", "expr": q} for i, q in enumerate(queries)]
    rules_file = tmp_path / "dashboard-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def alert_queries() -> list[str]:
    """Every PromQL expression of the chart's alerts."""
    rule = find(render("monitoring"), "PrometheusRule")
    return [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_targets() -> list[dict]:
    """Every query target of the Grafana dashboard."""
    dashboard = json.loads((CHART / "dashboards" / "deepguard.json").read_text())
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def canary_queries() -> list[str]:
    """The queries deploy/canary.py sends Prometheus to judge a revision."""
    sent: list[str] = []

    class Recording(Prometheus):
        def value(self, query: str) -> float | None:
            sent.append(query)
            return 1.0

    prometheus = Recording("http://prometheus.invalid")
    prometheus.revision_stats("deepguard-predictor-00002", 300)
    prometheus.exports("deepguard-predictor-00002")
    return sent


def target_labels() -> frozenset[str]:
    """Labels a scrape adds: prometheus-operator's own and the PodMonitor's relabelings (``revision``)."""
    pod_monitor = find(render("monitoring"), "PodMonitor")
    relabeled = {
        relabel["targetLabel"]
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]
        for relabel in endpoint.get("relabelings", [])
    }
    return OPERATOR_TARGET_LABELS | relabeled


def test_alerts_dashboard_and_canary_query_only_series_and_labels_we_export() -> None:
    """A renamed metric or label, or a counter read raw, turns this red instead of silently emptying a panel,
    disarming an alert or leaving every canary without evidence."""
    families = declared_families()
    assert {"deepguard_requests_total", "deepguard_drift_detected", "deepguard_web_requests_total"} <= set(
        families
    )
    queries = alert_queries() + [t["expr"] for t in dashboard_targets()] + canary_queries()
    assert len(queries) >= 20
    labels = target_labels()
    assert "revision" in labels  # the canary tells the revisions apart by it
    problems = [problem for query in queries for problem in query_problems(query, families, labels)]
    problems += [
        problem
        for target in dashboard_targets()
        for problem in legend_problems(target["expr"], target.get("legendFormat", ""))
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(deepguard_request_total[5m]))", "not an exported series"),
        ("sum(rate(deepguard_fake_probability[5m]))", "not an exported series"),  # a histogram's family name
        ('sum(rate(deepguard_requests_total{status=~"5.."}[5m]))', "no label 'status'"),
        ("sum(deepguard_predictions_total)", "read without rate()"),
        ("rate(deepguard_drift_score_psi[5m])", "not a counter"),
        ("sum by (verdict) (rate(deepguard_requests_total[5m]))", "grouping by 'verdict'"),
        ("histogram_quantile(0.99, sum(rate(deepguard_request_duration_seconds_bucket[5m])))", "by (le)"),
        ('count({__name__=~"deepguard_.+",revison="r1"})', "the label 'revison'"),
    ],
)
def test_the_query_check_can_fail(expr: str, problem: str) -> None:
    problems = query_problems(expr, declared_families(), OPERATOR_TARGET_LABELS | {"revision"})
    assert len(problems) == 1 and problem in problems[0], problems
    assert legend_problems("sum by (code) (rate(deepguard_requests_total[5m]))", "{{protocol}}") != []


def test_no_exported_label_is_one_the_scrape_overwrites() -> None:
    """prometheus-operator labels every target (``endpoint``: the port's name, ``pod``, ...); an exported
    label of the same name becomes ``exported_<name>`` in Prometheus: a query selecting by it finds nothing.
    """
    labels = target_labels()
    clashes = {
        name: sorted(family.labels & labels)
        for name, family in declared_families().items()
        if family.labels & labels
    }
    assert clashes == {}


@pytest.mark.parametrize(("mode", "port_name"), [("Serverless", "user-port"), ("RawDeployment", "http1")])
def test_pod_monitor_scrapes_a_port_the_predictor_pods_have(mode: str, port_name: str) -> None:
    # Knative builds a Serverless revision's pods with the user container's port renamed "user-port" (the
    # InferenceService's "http1" only names the protocol); RawDeployment copies the container spec as written.
    pod_monitor = find(render("monitoring", predictor__deploymentMode=mode), "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == port_name


def _alert_fires(tmp_path: Path, alert: str, series: dict[str, str]) -> bool:
    """Whether ``alert``'s expression holds after 30 minutes of ``series`` (promtool's notation, 1m steps)."""
    rule = find(render("monitoring"), "PrometheusRule")
    (expr,) = [
        r["expr"] for group in rule["spec"]["groups"] for r in group["rules"] if r.get("alert") == alert
    ]
    # An unrelated series keeps the input non-empty when a case has none of its own.
    inputs = [{"series": "up", "values": "1x30"}]
    inputs += [{"series": name, "values": values} for name, values in series.items()]
    results = []
    for fires in (True, False):
        test = {
            "interval": "1m",
            "input_series": inputs,
            "promql_expr_test": [
                {
                    "expr": f"count({expr.strip()})",
                    "eval_time": "30m",
                    "exp_samples": [{"labels": "{}", "value": 1}] if fires else [],
                }
            ],
        }
        tests_file = tmp_path / f"{alert}-{fires}.yaml"
        tests_file.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
        result = subprocess.run(
            [_promtool(), "test", "rules", str(tests_file)], capture_output=True, text=True
        )
        results.append(result.returncode == 0)
    assert results[0] != results[1], "promtool agreed with neither outcome"
    return results[0]


def test_web_predictor_error_alert_fires_when_uploads_fail_despite_probe_traffic(tmp_path: Path) -> None:
    # Two web pods answer readiness (5 s) and liveness (10 s) probes and scrapes: far more than a quiet site's
    # uploads. Every upload failing with 502 must still fire the alert.
    series = {
        'deepguard_web_requests_total{route="/healthz",code="200"}': "0+24x30",
        'deepguard_web_requests_total{route="/livez",code="200"}': "0+12x30",
        'deepguard_web_requests_total{route="/api/predictions",code="502"}': "0+1x30",
        'deepguard_web_predictor_errors_total{code="502"}': "0+1x30",
    }
    assert _alert_fires(tmp_path, "DeepGuardWebPredictorErrors", series)


def test_web_predictor_error_alert_ignores_images_the_predictor_refuses(tmp_path: Path) -> None:
    # A 422 is the predictor doing its job (not an image, too many pixels): the user's input, not an outage.
    series = {
        'deepguard_web_requests_total{route="/api/predictions",code="422"}': "0+10x30",
        'deepguard_web_predictor_errors_total{code="422"}': "0+10x30",
    }
    assert not _alert_fires(tmp_path, "DeepGuardWebPredictorErrors", series)


def test_no_traffic_alert_fires_for_a_predictor_that_never_got_a_request(tmp_path: Path) -> None:
    # deepguard_requests_total has labels, so it has no series before the first request (nor once Knative
    # scaled the predictor to zero): "no series" is the no-traffic case, not "nothing to say".
    assert _alert_fires(tmp_path, "DeepGuardNoTraffic", {})
    busy = {'deepguard_requests_total{protocol="v2",code="200"}': "0+5x30"}
    assert not _alert_fires(tmp_path, "DeepGuardNoTraffic", busy)


def test_dashboard_bucket_panels_show_each_bucket_not_the_running_total() -> None:
    """A Prometheus histogram's buckets are cumulative (le="0.5" counts every image at or below 0.5): a panel
    that draws them must ask Grafana to turn them into per-bucket counts (target format "heatmap"), or its
    bars only ever climb, whatever the scores were."""
    drawn = [
        target
        for target in dashboard_targets()
        if "_bucket" in target["expr"] and "histogram_quantile" not in target["expr"]
    ]
    assert drawn, "the dashboard draws the P(FAKE) histogram"
    assert [target["expr"] for target in drawn if target.get("format") != "heatmap"] == []


def test_lost_monitoring_records_alert_fires_for_a_broken_store_not_for_one_burst(tmp_path: Path) -> None:
    # An unwritable or full monitoring volume: every record of a steady trickle of requests is lost.
    broken = {'deepguard_records_dropped_total{reason="write_error"}': "0+6x30"}
    assert _alert_fires(tmp_path, "DeepGuardMonitoringRecordsDropped", broken)
    # One burst of 500 records the full queue could not take, ten minutes ago, then none.
    burst = {'deepguard_records_dropped_total{reason="queue_full"}': "0x10 500x20"}
    assert not _alert_fires(tmp_path, "DeepGuardMonitoringRecordsDropped", burst)


def test_every_alert_says_what_to_do_and_has_its_row_in_the_docs() -> None:
    """The on-call engineer gets a summary, a description and a runbook link with each alert, and the runbook
    (docs/monitoring.md, Alerts) has a row for exactly the alerts the chart defines."""
    rule = find(render("monitoring"), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    for name, alert in alerts.items():
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"].endswith("docs/monitoring.md#alerts"), name
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
    doc = (CHART.parents[1] / "docs" / "monitoring.md").read_text()
    section = doc.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `(DeepGuard\w+)`", section, re.MULTILINE)) == set(alerts)


def test_stale_drift_report_alert_fires_when_the_monitor_stops_reporting(tmp_path: Path) -> None:
    # promtool's clock starts at 0: a report whose window ended at 0 is 30 minutes old at the evaluation...
    fresh = {'deepguard_drift_report_timestamp_seconds{model_version="3"}': "0x30"}
    assert not _alert_fires(tmp_path, "DeepGuardDriftReportStale", fresh)
    # ...and one that ended 4 hours before that is four and a half hours old: the monitor stopped reporting.
    stale = {'deepguard_drift_report_timestamp_seconds{model_version="3"}': "-14400x30"}
    assert _alert_fires(tmp_path, "DeepGuardDriftReportStale", stale)


def _alert_firing(tmp_path: Path, alert: str, series: dict[str, str], at: str) -> bool:
    """Whether the chart's ``alert`` is firing at ``at`` under a real ``promtool test rules`` run of its
    PrometheusRule: its ``for`` included, which :func:`_alert_fires` (the bare expression) leaves out."""
    rule = find(render("monitoring"), "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    inputs = [{"series": "up", "values": "1x200"}]
    inputs += [{"series": name, "values": values} for name, values in series.items()]
    test = {
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [{"alertname": alert, "eval_time": at, "exp_alerts": []}],
    }
    tests_file = tmp_path / f"{alert}-{at}.yaml"
    tests_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "tests": [test]}))
    result = subprocess.run([_promtool(), "test", "rules", str(tests_file)], capture_output=True, text=True)
    if result.returncode == 0:
        return False
    output = result.stdout + result.stderr
    # The only failure expected: the alert fires although exp_alerts says it does not.
    assert f"alertname: {alert}" in output and "got:[]" not in output, output
    return True


def test_no_traffic_alert_waits_its_minutes_after_an_install_nobody_has_called_yet(tmp_path: Path) -> None:
    # A fresh install has no deepguard_requests_total series until the first request: 30 minutes of that is
    # not "no inference request in 60 minutes" (noTrafficMinutes), and must not fire...
    assert not _alert_firing(tmp_path, "DeepGuardNoTraffic", {}, "30m")
    # ...an hour and a few minutes of it is.
    assert _alert_firing(tmp_path, "DeepGuardNoTraffic", {}, "65m")


def test_no_traffic_alert_fires_an_hour_after_the_last_request_not_before(tmp_path: Path) -> None:
    # Five requests a minute for 30 minutes, then none (the counter stays where it was).
    quiet_after_30m = {'deepguard_requests_total{protocol="v2",code="200"}': "0+5x30 150x150"}
    assert not _alert_firing(tmp_path, "DeepGuardNoTraffic", quiet_after_30m, "30m")
    assert not _alert_firing(tmp_path, "DeepGuardNoTraffic", quiet_after_30m, "80m")
    assert _alert_firing(tmp_path, "DeepGuardNoTraffic", quiet_after_30m, "100m")


def test_input_drift_alert_is_about_the_version_being_served(tmp_path: Path) -> None:
    # The drift monitor found drift for v3 and its retraining deployed v4: the predictor still exports v3's
    # summary until the monitor's next run, which is no reason to tell the on-call that served images drift.
    report = {'deepguard_drift_detected{model_version="3"}': "1x60"}
    v3 = {'deepguard_model_info{version="3",architecture="EfficientNetB0"}': "1x60"}
    v4 = {'deepguard_model_info{version="4",architecture="EfficientNetB0"}': "1x60"}
    assert _alert_firing(tmp_path, "DeepGuardInputDrift", {**report, **v3}, "10m")
    assert not _alert_firing(tmp_path, "DeepGuardInputDrift", {**report, **v4}, "10m")
    # During a canary both versions are served: the stable one's drift still fires.
    assert _alert_firing(tmp_path, "DeepGuardInputDrift", {**report, **v3, **v4}, "10m")
    assert not _alert_firing(
        tmp_path, "DeepGuardInputDrift", {**v3, 'deepguard_drift_detected{model_version="3"}': "0x60"}, "10m"
    )


# What a predictor exports from its start; the version label once its model is loaded (serving/metrics.py).
MODEL_INFO_UNLOADED = "deepguard_model_info"
MODEL_INFO = 'deepguard_model_info{version="1",architecture="SimpleCNN"}'


@pytest.mark.parametrize(
    "down",
    [
        pytest.param({MODEL_INFO: "1x10 _x50"}, id="not-scraped"),  # crashed, evicted, not scheduled
        pytest.param({MODEL_INFO: "1x10 _x50", MODEL_INFO_UNLOADED: "_x10 1x50"}, id="model-not-loaded"),
    ],
)
def test_a_predictor_down_pages_although_no_upload_comes(tmp_path: Path, down: dict[str, str]) -> None:
    # Nobody uploads (or the web app is reached by no one): DeepGuardWebPredictorErrors has nothing to divide.
    assert not _alert_firing(tmp_path, "DeepGuardWebPredictorErrors", down, "40m")
    assert _alert_firing(tmp_path, "DeepGuardPredictorUnavailable", down, "40m")


def test_a_predictor_that_starts_or_restarts_does_not_page(tmp_path: Path) -> None:
    # A first deploy: the pod is scraped minutes before it has pulled its image and loaded the model.
    starting = {MODEL_INFO_UNLOADED: "_x3 1x4 _x30", MODEL_INFO: "_x7 1x30"}
    for at in ("5m", "10m", "15m", "30m"):
        assert not _alert_firing(tmp_path, "DeepGuardPredictorUnavailable", starting, at), at
    # A restart (a node drained, a new revision): a few unscraped minutes, well inside the 10.
    restarted = {MODEL_INFO: "1x20 _x3 1x20"}
    assert not _alert_firing(tmp_path, "DeepGuardPredictorUnavailable", restarted, "35m")


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("500", id="web-app-bug"),  # an exception in the web app: no predictor error is counted
        pytest.param("503", id="web-app-busy"),  # every slot taken: refused before the predictor is called
    ],
)
def test_web_upload_alert_fires_when_uploads_fail_in_the_web_app_itself(tmp_path: Path, code: str) -> None:
    failing = {
        f'deepguard_web_requests_total{{route="/api/predict",code="{code}"}}': "0+3x30",
        'deepguard_web_requests_total{route="/api/predict",code="200"}': "0+1x30",
        'deepguard_web_predictor_errors_total{code="503"}': "0x30",
    }
    assert _alert_firing(tmp_path, "DeepGuardWebPredictorErrors", failing, "25m")


def test_a_fresh_install_waiting_for_its_first_deploy_does_not_page(tmp_path: Path) -> None:
    # The chart installs the web app at once; the InferenceService comes with the pipeline's first deploy,
    # hours later. Until then no predictor exports anything: nothing is broken.
    assert not _alert_firing(tmp_path, "DeepGuardPredictorUnavailable", {}, "90m")


HEALTHY = {
    # Predictor: 10 requests a minute, all answered, fast; its model and a fresh drift report finding none.
    'deepguard_requests_total{protocol="v2",code="200"}': "0+10x120",
    'deepguard_request_duration_seconds_bucket{protocol="v2",le="0.05"}': "0+10x120",
    'deepguard_request_duration_seconds_bucket{protocol="v2",le="+Inf"}': "0+10x120",
    'deepguard_records_dropped_total{reason="queue_full"}': "0x120",
    'deepguard_records_dropped_total{reason="write_error"}': "0x120",
    'deepguard_model_info{version="1",architecture="EfficientNetB0"}': "1x120",
    'deepguard_drift_detected{model_version="1"}': "0x120",
    'deepguard_drift_report_timestamp_seconds{model_version="1"}': "0+60x120",  # a report every minute
    # Web app: uploads succeed, some images are refused (the user's input, not an outage).
    'deepguard_web_requests_total{route="/api/predictions",code="200"}': "0+8x120",
    'deepguard_web_requests_total{route="/api/predict",code="415"}': "0+2x120",
    'deepguard_web_predictor_errors_total{code="503"}': "0x120",
}
RESTARTED = {
    # The same, with the predictor pod and a web pod restarted at minute 60: their counters start again.
    **HEALTHY,
    'deepguard_requests_total{protocol="v2",code="200"}': "0+10x60 0+10x60",
    'deepguard_request_duration_seconds_bucket{protocol="v2",le="0.05"}': "0+10x60 0+10x60",
    'deepguard_request_duration_seconds_bucket{protocol="v2",le="+Inf"}': "0+10x60 0+10x60",
    'deepguard_web_requests_total{route="/api/predictions",code="200"}': "0+8x60 0+8x60",
}


def _alert_names() -> list[str]:
    rule = find(render("monitoring"), "PrometheusRule")
    return [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.mark.parametrize(("series", "at"), [(HEALTHY, "90m"), (RESTARTED, "75m")], ids=["busy", "restarted"])
def test_a_healthy_system_pages_nobody(tmp_path: Path, series: dict[str, str], at: str) -> None:
    firing = [name for name in _alert_names() if _alert_firing(tmp_path, name, series, at)]
    assert firing == []
