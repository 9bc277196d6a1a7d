"""DAG parse time: our DAG file vs a baseline DAG of seven inline KubernetesPodOperators, in the Airflow env.

Airflow re-parses DAG files constantly, each parse in a process forked from the DAG processor, which has
imported the `airflow.*` modules the file names (parsing_pre_import_modules); so each sample is one fresh
interpreter that imports those first, as the DAG processor does (not timed), then times filling a DagBag from
the one file: what a module the file leaves to its helpers costs is in the time.
Run: ``.venv-airflow/bin/python bench/dag_parse_bench.py [runs]``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("dag_parse_bench")

BASELINE_DAG = """
from datetime import timedelta
import pendulum
from airflow.sdk import DAG, chain
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

with DAG(dag_id="baseline", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    chain(*(KubernetesPodOperator(task_id=name, name=name, namespace="default", image="python:3.11-slim",
                                  cmds=["python", "-m", f"stages.{name}"],
                                  execution_timeout=timedelta(hours=1))
            for name in ("ingest", "preprocess", "features", "train", "evaluate", "register", "deploy")))
"""

SAMPLE = """
import importlib, json, sys, time
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.file import iter_airflow_imports
for module in iter_airflow_imports(sys.argv[1]):
    importlib.import_module(module)
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - start
assert not bag.import_errors and len(bag.dags) == 1, bag.import_errors
print(json.dumps(seconds))
"""


def sample(dag_file: Path, env: dict[str, str]) -> float:
    """One parse of ``dag_file`` in a fresh interpreter, in seconds."""
    done = subprocess.run(
        [sys.executable, "-c", SAMPLE, str(dag_file)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Alternate baseline and ours, then print the medians and their ratio."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPGUARD_")}
        env.update({"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
        baseline_dir = Path(home) / "baseline_dags"
        baseline_dir.mkdir()
        (baseline_dir / "baseline.py").write_text(BASELINE_DAG)
        ours_file = REPO / "dags" / "deepguard_pipeline.py"
        times: dict[str, list[float]] = {"baseline": [], "ours": []}
        for i in range(runs):
            times["baseline"].append(sample(baseline_dir / "baseline.py", env))
            times["ours"].append(sample(ours_file, env))
            log.info(
                "run %d/%d: baseline %.1f ms, ours %.1f ms",
                i + 1,
                runs,
                times["baseline"][-1] * 1000,
                times["ours"][-1] * 1000,
            )
    base, ours = statistics.median(times["baseline"]), statistics.median(times["ours"])
    log.info("DAG file parse time, median of %d (its airflow modules pre-imported):", runs)
    log.info("  baseline (7 inline KubernetesPodOperators): %.1f ms", base * 1000)
    log.info("  ours (dags/deepguard_pipeline.py):           %.1f ms", ours * 1000)
    log.info("  ratio ours/baseline: %.2f", ours / base)


if __name__ == "__main__":
    main()
