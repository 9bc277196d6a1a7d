"""The layout's import rules, read from the code (ast, nothing imported): core at the bottom, roles apart."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from core.pipeline import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "stages", "serving", "deploy", "flask_app", "dags", "tools")
# What each package may import of ours. core is the bottom; stages, serving and deploy stand on it side by
# side (serving and deploy import no training code); the web app and the DAG stand alone.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "stages": {"core", "stages"},
    "serving": {"core", "serving"},
    "deploy": {"core", "deploy"},
    # The feedback store, the image formats and the names every layer agrees on (ports, variables, the served
    # model's name): standard library only, copied into the web image.
    "flask_app": {"flask_app", "core.feedback", "core.formats", "core.names"},
    # The stage list, its config types and exit codes; the operator and the pods module beside the DAG files.
    "dags": {"core.pipeline", "core.config", "core.errors", "deepguard_operator", "deepguard_pods"},
    "tools": {"core"},  # developer commands (make airflow)
}
MAX_LEVELS = 3


def project_imports(path: Path, ours: tuple[str, ...]) -> set[str]:
    """The dotted names of our modules that a file imports, at top level or inside functions.

    Args:
        path: A Python file.
        ours: Top-level names that count as ours.

    Returns:
        Module names such as ``core.config`` (``from core import config`` gives ``core.config``).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from core import config` imports core.config; `from core.names import X`: core.names.
            if "." in node.module:
                found.add(node.module)
            else:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ours}


def violations(root: Path, allowed: dict[str, set[str]], stage_names: tuple[str, ...]) -> list[str]:
    """Every import that breaks the rules, as ``file: imports module``.

    Args:
        root: The repository root.
        allowed: Package -> the modules or packages it may import.
        stage_names: The stage modules of ``stages/``, which must not import one another.

    Returns:
        One line per broken rule; empty when the layout holds.
    """
    ours = (*allowed, "deepguard_operator", "deepguard_pods")
    found = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in sorted(project_imports(path, ours)):
                if not any(name == m or name.startswith(f"{m}.") for m in may):
                    found.append(f"{path.relative_to(root)}: imports {name}")
                elif package == "stages" and name.split(".")[1:2] and path.stem in stage_names:
                    other = name.split(".")[1]
                    if other in stage_names and other != path.stem:
                        found.append(f"{path.relative_to(root)}: stage imports stage {name}")
    return found


def levels(allowed: dict[str, set[str]]) -> int:
    """The longest chain of packages importing packages, counted in levels (core alone is 1)."""
    graph = {package: {m.split(".")[0] for m in may} - {package} for package, may in allowed.items()}

    def depth(package: str) -> int:
        return 1 + max((depth(dep) for dep in graph.get(package, ()) if dep in graph), default=0)

    return max(depth(package) for package in graph)


def test_every_project_package_has_rules() -> None:
    present = {path.parent.name for path in REPO.glob("*/__init__.py")} | {"dags"}
    assert present - {"tests"} <= set(PACKAGES), f"packages without import rules: {present - set(PACKAGES)}"


def test_imports_follow_the_layout() -> None:
    assert violations(REPO, ALLOWED, STAGE_NAMES) == []


def test_the_web_image_holds_every_core_module_the_web_app_imports_and_they_need_only_the_stdlib() -> None:
    web_core = {name for name in ALLOWED["flask_app"] if name.startswith("core.")}
    dockerfile = (REPO / "images" / "web" / "Dockerfile").read_text()
    for name in sorted(web_core):
        file = f"{name.replace('.', '/')}.py"
        assert file in dockerfile, f"images/web/Dockerfile does not copy {file}"
        nodes = list(ast.walk(ast.parse((REPO / file).read_text())))
        imported = {a.name for node in nodes if isinstance(node, ast.Import) for a in node.names}
        imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
        outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} - web_core
        assert outside <= {"__future__"}, f"{file} imports {outside}: the web image has no such module"


def test_the_layout_has_at_most_three_levels() -> None:
    assert levels(ALLOWED) <= MAX_LEVELS


@pytest.mark.parametrize(
    ("file", "code", "expected"),
    [
        ("stages/train.py", "from stages.features import run\n", "stages/train.py: stage imports stage"),
        ("serving/model.py", "from stages import architectures\n", "serving/model.py: imports stages"),
        (
            "deploy/rollout.py",
            "def f():\n    import stages.train\n",
            "deploy/rollout.py: imports stages.train",
        ),
        ("flask_app/app.py", "from core.labels import FAKE\n", "flask_app/app.py: imports core.labels"),
        ("core/labels.py", "from serving.model import Limits\n", "core/labels.py: imports serving"),
        ("dags/dag.py", "from core.tracking import x\n", "dags/dag.py: imports core.tracking"),
    ],
)
def test_the_checker_reports_a_broken_rule(tmp_path: Path, file: str, code: str, expected: str) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "stages/shards.py").write_text("from core.atomic import atomic_path\n")  # allowed
    (tmp_path / file).write_text(code)
    found = violations(tmp_path, ALLOWED, STAGE_NAMES)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_levels_counts_the_longest_chain() -> None:
    assert levels({"a": {"a"}, "b": {"a"}, "c": {"b"}, "d": {"c"}}) == 4
