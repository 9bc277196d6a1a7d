"""``python -m flask_app``: run the web app under gunicorn with flask_app/gunicorn_conf.py."""

from __future__ import annotations

import os
import sys
import tempfile

from flask_app.metrics import MULTIPROC_DIR_ENV


def main() -> None:
    """Replace this process with gunicorn, so signals (Ctrl-C, SIGTERM) reach it directly."""
    # Set before gunicorn imports prometheus_client, so the workers' metrics are summed at /metrics.
    if not os.environ.get(MULTIPROC_DIR_ENV):
        os.environ[MULTIPROC_DIR_ENV] = tempfile.mkdtemp(prefix="deepguard-web-metrics-")
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:flask_app.gunicorn_conf",
        *sys.argv[1:],
        "flask_app:create_app()",
    ]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
