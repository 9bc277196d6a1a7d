"""Static checks: checkov on the chart (every skip carries a written reason), hadolint on every Dockerfile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_helpers import CHART, NAMESPACE, REPO, TOOLS_BIN, render, tool

BIN = Path(sys.executable).parent
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def test_checkov_finds_no_failed_check_in_the_chart() -> None:
    tool("helm")  # checkov renders the chart with the pinned helm on PATH
    # HELM_NAMESPACE: render into the namespace the chart is installed in (`helm install -n deepguard`).
    env = {**os.environ, "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}", "HELM_NAMESPACE": NAMESPACE}
    command = [
        str(BIN / "checkov"),
        "-d",
        str(CHART),
        "--framework",
        "helm",
        "--skip-download",
        "--output",
        "json",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert failed == [], failed
    assert passed > 100  # the chart was really rendered and scanned


def test_every_checkov_skip_in_the_chart_carries_a_reason() -> None:
    skips = []
    for obj in render("default"):
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                skips.append(value)
    assert skips, "expected the documented skips (image digest, pull policy)"
    for skip in skips:
        match = re.fullmatch(r"(CKV2?_[A-Z0-9_]+)=(.+)", skip)
        assert match and len(match[2].split()) >= 8, f"skip without a written reason: {skip!r}"


@pytest.mark.skipif(not DOCKERFILES, reason="no images/*/Dockerfile yet")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_reports_no_error(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    errors = [f"{f['line']}: {f['code']} {f['message']}" for f in findings if f["level"] == "error"]
    assert result.returncode == 0 and errors == [], errors
