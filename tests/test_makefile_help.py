"""`make help` lists every .PHONY target, with its description, under a group heading."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _phony_targets() -> set[str]:
    """The targets the Makefile declares .PHONY (continuation lines joined)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    return {name for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for name in line.split()}


def _help_groups() -> dict[str, dict[str, str]]:
    """Run `make help` as a user does.

    Returns:
        Group heading to {target: description}, in the order printed; targets before any heading go under "".
    """
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    groups: dict[str, dict[str, str]] = {}
    group = ""
    for line in result.stdout.splitlines():
        if target := re.match(r"^  make (\S+)\s+(.*)$", line):
            groups.setdefault(group, {})[target[1]] = target[2].strip()
        elif line.strip():
            group = line.strip()
    return groups


def test_make_help_lists_every_phony_target_once_described_and_grouped() -> None:
    groups = _help_groups()
    listed = [target for targets in groups.values() for target in targets]
    assert "" not in groups, f"targets listed before any group heading: {groups.get('')}"
    assert sorted(listed) == sorted(_phony_targets())  # each .PHONY target exactly once, nothing else
    assert [t for targets in groups.values() for t, text in targets.items() if not text] == []


def test_make_help_groups_follow_the_user_journey() -> None:
    groups = _help_groups()
    assert list(groups) == [
        "Start here",
        "Pipeline",
        "Serving",
        "Orchestration",
        "Kubernetes",
        "Benchmarks",
        "Development",
    ]
    assert list(groups["Start here"]) == ["help", "run", "test"]
    assert set(groups["Kubernetes"]) == {"k8s-tools", "k8s-check", "hadolint"}
