"""``python -m flask_app``: run the web app under gunicorn with flask_app/gunicorn_conf.py."""

from __future__ import annotations

import os
import sys

from flask_app import environment
from flask_app.metrics import make_multiprocess_dir


def main() -> None:
    """Replace this process with gunicorn, so signals (Ctrl-C, SIGTERM) reach it directly."""
    # A bad number stops here in one line naming it, not in every worker's boot with a traceback.
    if problems := environment.check():
        for problem in problems:
            print(f"python -m flask_app: error: {problem}", file=sys.stderr)
        sys.exit(2)
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
