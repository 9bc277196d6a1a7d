"""``python -m flask_app``: run the web app under gunicorn with flask_app/gunicorn_conf.py."""

from __future__ import annotations

import os
import sys

from flask_app.metrics import make_multiprocess_dir


def main() -> None:
    """Replace this process with gunicorn, so signals (Ctrl-C, SIGTERM) reach it directly."""
    # Set before gunicorn imports prometheus_client, so the workers' metrics are summed at /metrics.
    make_multiprocess_dir()
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
