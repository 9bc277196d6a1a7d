"""The services one machine runs side by side (`make serve`, `make airflow`) default to different ports."""

from __future__ import annotations

import re
from pathlib import Path

from core.names import AIRFLOW_PORT, PREDICTOR_PORT, WEB_PORT

REPO = Path(__file__).resolve().parents[1]


def test_make_airflow_defaults_to_a_port_no_other_local_service_takes() -> None:
    # With `make airflow` on 8081, the predictor's gRPC server (`--enable_grpc true`, KServe's default port
    # 8081) could not bind beside it, or `make airflow` refused to start beside that predictor.
    from kserve import model_server

    from serving.__main__ import build_parser

    predictor = build_parser(model_server.parser).parse_args([])
    taken = {"predictor HTTP": predictor.http_port, "predictor gRPC": predictor.grpc_port, "web": WEB_PORT}
    assert predictor.http_port == PREDICTOR_PORT
    assert AIRFLOW_PORT not in taken.values(), taken
    (makefile_default,) = re.findall(r"^AIRFLOW_PORT \?= (\d+)$", (REPO / "Makefile").read_text(), re.M)
    assert int(makefile_default) == AIRFLOW_PORT, "the Makefile and tools/airflow_ui.py disagree"
