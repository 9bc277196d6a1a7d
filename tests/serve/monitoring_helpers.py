"""Helpers of the metrics and monitoring tests: scrape /metrics, read records, a model store of their own."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from .serving_helpers import RegisteredModel, register_model

TIMEOUT = 60
Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    """``GET <url>/metrics``, parsed: (sample name, labels) -> value."""
    response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one series (0 when it does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def read_records(directory: Path) -> list[dict]:
    """Every monitoring record under ``directory/records``, oldest file first."""
    records = []
    for path in sorted((directory / "records").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def own_store(tiny_model, root: Path) -> RegisteredModel:
    """The tiny model registered as deepguard@champion in a store of its own under ``root``."""
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    version = register_model(tiny_model, tracking_uri, threshold=0.5, synthetic_data=False)
    return RegisteredModel(root=root, tracking_uri=tracking_uri, model_name="deepguard", version=version)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one series grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)
