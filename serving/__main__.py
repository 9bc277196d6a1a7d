"""``python -m serving``: KServe's model-server options plus ours; load the model, serve until stopped."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kserve import model_server

from core.cli import configure_logging
from core.config import load_params
from core.errors import DeepGuardError
from core.modelstore import set_model_threads
from core.names import MONITORING_DIR_ENV, SERVED_MODEL_NAME, champion_uri
from core.settings import settings
from serving import metrics
from serving.domain import DEFAULT_MARGIN
from serving.model import DeepGuardModel, Limits
from serving.records import RecordWriter
from serving.server import build_server

log = logging.getLogger(__name__)


def build_parser(kserve_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """KServe's model-server options plus ours."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        parents=[kserve_parser],
        description="Serve the DeepGuard champion with KServe (V1 and V2).",
    )
    parser.add_argument(
        "--model-uri",
        "--model_uri",
        dest="model_uri",
        default=None,
        help="models:/name@alias, models:/name/<version>, or a local MLflow model folder "
        "(default: the champion of params.yaml's mlflow.model_name)",
    )
    parser.add_argument(
        "--http-host",
        "--http_host",
        dest="http_host",
        default="127.0.0.1",
        help="address to listen on; the cluster passes 0.0.0.0 (default: %(default)s)",
    )
    parser.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve POST /v2/repository/models/<name>/load, which `deploy --target local` "
        "uses; the cluster passes --no-reload (default: on)",
    )
    limits = Limits()
    parser.add_argument(
        "--max-images",
        "--max_images",
        dest="max_images",
        type=int,
        default=limits.max_images,
        help="most images in one request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-bytes",
        "--max_image_bytes",
        dest="max_image_bytes",
        type=int,
        default=limits.max_image_bytes,
        help="largest image file (default: %(default)s)",
    )
    parser.add_argument(
        "--max-pixels",
        "--max_pixels",
        dest="max_pixels",
        type=int,
        default=limits.max_pixels,
        help="refuse images whose header claims more pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-pixels",
        "--max_request_pixels",
        dest="max_request_pixels",
        type=int,
        default=limits.max_request_pixels,
        help="refuse requests whose images claim more pixels in all (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        "--max_request_bytes",
        dest="max_request_bytes",
        type=int,
        default=limits.max_request_bytes,
        help="largest request body, answered with a 413 beyond it (default: %(default)s)",
    )
    parser.add_argument(
        "--max-json-values",
        "--max_json_values",
        dest="max_json_values",
        type=int,
        default=limits.max_json_values,
        help="most values in a request's JSON (numbers of a pixel tensor sent as JSON), answered with a 413 "
        "beyond it, before parsing (default: %(default)s)",
    )
    parser.add_argument(
        "--monitoring-dir",
        "--monitoring_dir",
        dest="monitoring_dir",
        type=Path,
        default=None,
        help=f"write a monitoring record per served image under DIR/records/ "
        f"(default: ${MONITORING_DIR_ENV}, else monitoring/ in the working folder)",
    )
    parser.add_argument(
        "--monitoring",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write monitoring records; --no-monitoring keeps only the Prometheus metrics (default: on)",
    )
    parser.add_argument(
        "--domain-margin",
        "--domain_margin",
        dest="domain_margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="an upload unlike the training images gets a decided verdict only this far beyond the "
        "uncertain band's edge (docs/serving.md: Input-domain notes); 0 switches the policy off "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--model-threads",
        "--model_threads",
        dest="model_threads",
        type=int,
        default=1,
        help="cores one model call may use (TensorFlow intra-op threads); 1 leaves the rest of a small pod "
        "to decoding and the event loop, and concurrent requests share a call anyway (default: %(default)s)",
    )
    # KServe logs three lines per request (its latency line and two timing lines); the Prometheus metrics
    # carry the same latencies. `--enable_latency_logging true` brings the lines back.
    # V2 over gRPC is opt-in (`--enable_grpc true`, on `--grpc_port`): KServe's gRPC server listens on every
    # interface whatever --http-host says, and the cluster's InferenceService routes HTTP only.
    parser.set_defaults(model_name=SERVED_MODEL_NAME, enable_latency_logging=False, enable_grpc=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load the model and serve until SIGINT/SIGTERM."""
    parser = build_parser(model_server.parser)
    args = parser.parse_args(argv)
    if args.workers != 1:
        # Each KServe worker process would need its own copy of the model and its own reload: scale with
        # replicas (the InferenceService's) instead.
        parser.error("--workers must be 1; run more replicas to scale out")
    if args.model_threads < 1:
        parser.error(f"--model-threads must be at least 1, got {args.model_threads}")
    configure_logging()
    try:
        # In the try: a bad environment variable (PREDICTOR_PORT=eighty) is one line, not a traceback.
        monitoring_dir = args.monitoring_dir or settings().monitoring_dir.absolute()
        records = RecordWriter(monitoring_dir) if args.monitoring else None
        if args.monitoring:
            metrics.watch_drift(Path(monitoring_dir))
        # params.yaml only when no URI is given: the image has none and is always given /mnt/models.
        model_uri = args.model_uri or champion_uri(load_params().mlflow.model_name)
        model = DeepGuardModel(
            args.model_name,
            model_uri,
            Limits(
                args.max_images,
                args.max_image_bytes,
                args.max_pixels,
                args.max_request_pixels,
                args.max_request_bytes,
                args.max_json_values,
            ),
            records,
            domain_margin=args.domain_margin,
        )
        set_model_threads(args.model_threads)
        model.load()
    except DeepGuardError as exc:
        log.error("predictor failed: %s", exc)
        print(f"serving: error: {exc}", file=sys.stderr)
        return 2
    if args.enable_grpc:
        log.warning("V2 over gRPC on port %d of every interface (KServe binds [::])", args.grpc_port)
    try:
        build_server(model, args).start([model])
    finally:
        # KServe's start() returns once SIGTERM/SIGINT has drained the in-flight requests: their records
        # are queued by then, and are written before the process exits.
        if records is not None:
            records.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
