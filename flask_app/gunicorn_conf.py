"""gunicorn settings of the web app, from WEB_HOST, WEB_PORT, WEB_METRICS_PORT, WEB_WORKERS, WEB_THREADS."""

from __future__ import annotations

import logging
import os
import sys

from core.names import WEB_METRICS_PORT_ENV, WEB_PORT, WEB_PORT_ENV
from flask_app import environment, metrics, web_threads

# Loopback unless told otherwise: the chart and the image set WEB_HOST=0.0.0.0.
host = os.environ.get("WEB_HOST", "127.0.0.1")
bind = f"{host}:{os.environ.get(WEB_PORT_ENV, WEB_PORT)}"
# Prometheus metrics on a port of their own, served by the master (when_ready); unset: not served. The app's
# port is the public one (the Ingress routes every path to it), where /metrics is a 404.
metrics_port = os.environ.get(WEB_METRICS_PORT_ENV)
# The app waits on the predictor over HTTP, so threads (not more processes) carry the concurrency.
worker_class = "gthread"
workers = int(environment.number("WEB_WORKERS", 2))
threads = web_threads()
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")
# A request line or header beyond these is refused before Flask sees it.
limit_request_line = 4094
limit_request_fields = 50
# No gunicornc control socket: nothing uses it, a read-only home cannot hold it, and two servers on one
# machine would fight over the same default path.
control_socket_disable = True


def on_starting(server: object) -> None:
    """Set up the app's logging; start the summed metrics from zero (no previous server's files added)."""
    # The app's own lines (flask_app.*: predictor errors, the predictor down and up again) beside gunicorn's,
    # in its format and at its level; the workers inherit this. Unconfigured, Python printed warnings bare
    # and dropped INFO.
    logging.basicConfig(
        level=loglevel.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %z",
        stream=sys.stderr,
    )
    metrics.clear_multiprocess_dir()


def when_ready(server: object) -> None:
    """Serve the workers' summed metrics on WEB_METRICS_PORT, from a thread of the master."""
    if metrics_port:
        try:
            metrics.serve_metrics(host, int(metrics_port))
        except OSError as exc:  # one line naming the setting, not a traceback through wsgiref
            raise SystemExit(
                f"WEB_METRICS_PORT={metrics_port}: cannot listen on {host}: {exc.strerror}"
            ) from exc
        logging.getLogger(__name__).info("Prometheus metrics at http://%s:%s/metrics", host, metrics_port)


def child_exit(server: object, worker: object) -> None:
    """Retire the files of a worker that exited (its counts stay in the totals)."""
    metrics.worker_exited(worker.pid)


def on_exit(server: object) -> None:
    """Remove the metrics folder ``python -m flask_app`` made for this server; one the operator set stays.

    Not while the other master of a USR2 upgrade shares it: gunicorn's own test before it unlinks a socket.
    """
    if server.reexec_pid == server.master_pid == 0:
        metrics.remove_made_multiprocess_dir()
