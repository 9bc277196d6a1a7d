"""bench/recipe_bench.py's candidates: each one a valid change of params.yaml, none a copy of the baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from core.config import load_params

REPO = Path(__file__).resolve().parents[1]


def _candidates() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("recipe_bench", REPO / "bench" / "recipe_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.CANDIDATES


CANDIDATES = _candidates()


@pytest.mark.parametrize("name", [name for name in CANDIDATES if name != "baseline"])
def test_every_candidate_loads_and_changes_the_configured_recipe(name: str) -> None:
    # A default that moves onto a candidate's values (as the degradation mix did) turns that candidate into a
    # second baseline; this goes red then, and on a candidate naming a key params.yaml no longer has.
    baseline = load_params(REPO / "params.yaml", CANDIDATES["baseline"])
    changed = load_params(REPO / "params.yaml", CANDIDATES[name])
    assert changed != baseline, f"{name} trains the configured recipe unchanged"
