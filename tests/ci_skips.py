"""Under CI a skipped test fails: CI installs every tool the tests use and puts ../shared beside the clone.

A skip passed CI green before, so a tool CI stopped installing (chromium, curl, helm) or a moved ../shared
file dropped its tests without anyone noticing. Only what the machine itself lacks (AMX tiles, an IPv6
loopback) may still skip there; such a skip gives ``on_this_machine(reason)`` as its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

MACHINE = "this machine cannot run it: "


def on_this_machine(reason: str) -> str:
    """The reason of a skip that CI accepts: the machine lacks something no install step provides."""
    return MACHINE + reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None]:
    """With CI set, report a skip as a failure unless its reason is ``on_this_machine``."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if MACHINE not in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI, where every tool is installed and ../shared is present: {reason}"
        )
