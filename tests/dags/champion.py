"""Print the champion of an MLflow store as JSON; exit 1 when there is none. Runs in the ML environment.

Usage: ``.venv/bin/python tests/dags/champion.py TRACKING_URI [MODEL_NAME]`` (used by ``make dag-test``).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    """Look up ``models:/<name>@champion`` and print its version, tags and source."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking_uri = argv[0]
    name = argv[1] if len(argv) > 1 else "deepguard"
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        sys.stderr.write(f"no champion of {name!r} in {tracking_uri}: {exc.message.splitlines()[0]}\n")
        return 1
    sys.stdout.write(
        json.dumps(
            {"name": name, "version": str(version.version), "tags": version.tags, "source": version.source}
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
