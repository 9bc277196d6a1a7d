"""The KServe glue around the model: model repository with reload, versioned data plane, request guards."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudevents.http import CloudEvent
from grpc import StatusCode
from grpc_interceptor.exceptions import PermissionDenied
from kserve import InferRequest, ModelServer, model_server
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.logging import KSERVE_TRACE_LOGGER_NAME
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import server as grpc_server
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.v2_datamodels import InferenceResponse
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.metrics import RequestMetricsMiddleware
from serving.model import MAX_MESSAGE_CHARS, DeepGuardModel, parse_infer_request, quote

log = logging.getLogger(__name__)

# V2 bodies up to this size are parsed on the event loop (see infer_route).
INLINE_MAX_BODY_BYTES = 256 * 1024
_VERSIONED_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/.*)?$")


class ReloadingRepository(ModelRepository):
    """KServe's model repository extension: ``load`` re-resolves the model's URI and swaps it in."""

    def __init__(self, models: Sequence[DeepGuardModel]) -> None:
        super().__init__()
        # Kept apart from the served set, so a load after an unload can bring a model back.
        self._reloadable = {model.name: model for model in models}

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model this server can load (served or unloaded)."""
        return name in self._reloadable

    async def load(self, name: str) -> bool:
        """Reload ``name`` (``POST /v2/repository/models/<name>/load``); the old model serves meanwhile."""
        model = self._reloadable.get(name)
        if model is None:
            raise ModelNotFound(name)
        await model.reload()
        self.update(model)
        return model.ready


class ReloadingRepositoryExtension(ModelRepositoryExtension):
    """KServe's model repository extension, except that loading a model this server does not know is 404.

    KServe turns every failure of a load into ``ModelNotReady`` (503: "try again later"); a name that no
    retry can load is the client's error, as it is for inference. Both calls answer what KServe's gRPC
    servicer reads from them (its HTTP routes build their own): KServe's extension answers None, so over gRPC
    (``--enable_grpc``) a reload that worked came back ``INTERNAL`` with an ERROR traceback in the log.
    """

    async def load(self, model_name: str) -> dict[str, Any]:
        """Load ``model_name``; ``ModelNotFound`` (HTTP 404, gRPC ``NOT_FOUND``) for a name not served.

        Returns:
            ``{"name": model_name, "load": True}``, as KServe's HTTP route answers.
        """
        if not self._model_registry.knows(model_name):
            raise ModelNotFound(model_name)
        await super().load(model_name)
        return {"name": model_name, "load": True}

    async def unload(self, model_name: str) -> dict[str, Any]:
        """Unload ``model_name`` (a later load brings it back).

        Returns:
            ``{"name": model_name, "unload": True}``, as KServe's HTTP route answers.
        """
        await super().unload(model_name)
        return {"name": model_name, "unload": True}


RELOAD_OFF_MESSAGE = "model reload is switched off on this server (--no-reload); roll out a new revision"


class FrozenRepositoryExtension(ModelRepositoryExtension):
    """KServe's model repository extension with ``load`` and ``unload`` refused: ``--no-reload``.

    KServe's gRPC servicer calls the extension directly (``RepositoryModelLoad``, ``RepositoryModelUnload``),
    so refusing here closes both protocols; over HTTP :class:`ReloadGuardMiddleware` answers 403 first. The
    server's own shutdown unloads through the repository, not through this.
    """

    async def load(self, model_name: str) -> None:
        """Refused (gRPC ``PERMISSION_DENIED``)."""
        raise PermissionDenied(RELOAD_OFF_MESSAGE)

    async def unload(self, model_name: str) -> None:
        """Refused (gRPC ``PERMISSION_DENIED``)."""
        raise PermissionDenied(RELOAD_OFF_MESSAGE)


class VersionedDataPlane(DataPlane):
    """KServe's data plane, plus the served version in ``GET /v2/models/<name>`` and typed decode errors."""

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        """KServe's decoding, but binary BYTES stay bytes; a malformed request is a 400, not a 500.

        A raw body without the binary-extension header is all JSON (:func:`infer_route` sends those).
        """
        try:
            if isinstance(body, bytes):
                declared = headers.get(INFERENCE_CONTENT_LENGTH_HEADER, str(len(body)))
                if not declared.strip().isdigit():  # said "invalid literal for int() with base 10"
                    raise InvalidInput(
                        f"{INFERENCE_CONTENT_LENGTH_HEADER} {quote(declared)} is not a number of bytes"
                    )
                return parse_infer_request(body, int(declared), model_name)
            return super().decode_inference_request(body, headers, model_name)
        except (KeyError, ValueError, TypeError, IndexError, struct.error, InferenceError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            message = f"malformed inference request: {type(exc).__name__}: {exc}"
            raise InvalidInput(message[:MAX_MESSAGE_CHARS]) from None

    def decode_cloudevent(self, body: Any) -> tuple[Any, dict]:
        """KServe's CloudEvent decoding, except that an event without data is a 400 and decoded data is kept.

        KServe calls ``.decode`` on a binary-mode event's data (``ce-*`` headers): an empty body (data None)
        and an event whose data the ``ce-contenttype`` header had already parsed into JSON both failed with an
        ``AttributeError``, a 500 for a request the client got wrong or, in the second case, right.
        """
        if isinstance(body, CloudEvent):
            data = body.get_data()
            if data is None:
                raise InvalidInput("the CloudEvent (ce-* headers) has no data: the request body is empty")
            if not isinstance(data, bytes):
                return data, body._get_attributes()
        return super().decode_cloudevent(body)

    async def model_metadata(self, model_name: str) -> dict:
        """KServe's model metadata with ``versions`` and ``platform`` filled in."""
        metadata = await super().model_metadata(model_name)
        served_model = self.get_model_from_registry(model_name)
        metadata["versions"] = [getattr(served_model, "version", "unknown")]
        metadata["platform"] = "tensorflow_keras"
        return metadata


def version_not_served(repository: ModelRepository, name: str, version: str) -> str | None:
    """Why ``version`` of model ``name`` cannot answer (it is not the one served), or None when it can."""
    served = getattr(repository.get_model(name), "version", None)
    if served is not None and version == served:
        return None
    detail = f"serving version {served}" if served else "no such model"
    return f"model {quote(name)} version {quote(version)} is not served ({detail})"


class VersionNotServed(ModelNotFound):
    """A request pinned a model version other than the one served (HTTP 404, gRPC ``NOT_FOUND``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class VersionPathMiddleware:
    """Serves ``/v2/models/<name>/versions/<v>/...`` when ``<v>`` is the version served, else a 404.

    KServe answers every versioned V2 path with 501; a client pinning the version it expects should get its
    answer, or a 404 that says which version is served instead.
    """

    def __init__(self, app: Any, repository: ModelRepository) -> None:
        self.app = app
        self.repository = repository

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """ASGI entry: rewrite or refuse versioned V2 paths, pass everything else through."""
        match = _VERSIONED_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match:
            message = version_not_served(self.repository, match["name"], match["version"])
            if message is not None:
                response = JSONResponse({"error": message}, status_code=404)
                await response(scope, receive, send)
                return
            path = f"/v2/models/{match['name']}{match['rest'] or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def json_values_over(body: bytes, headers: dict[bytes, bytes], max_values: int) -> int | None:
    """How many values a body's JSON holds at most, when that is over ``max_values``; else None.

    Values are counted by their separators, a byte scan (~0.1 s for 256 MiB) before any parsing: JSON
    strings (base64 files, names) hold no comma that is not the client's own. Only the JSON header of a V2
    binary-extension request is counted: the tensor bytes after it are not JSON.
    """
    declared = headers.get(INFERENCE_CONTENT_LENGTH_HEADER.lower().encode(), b"")
    end = int(declared) if declared.isdigit() and int(declared) <= len(body) else len(body)
    values = body.count(b",", 0, end) + 1
    return values if values > max_values else None


class BodyLimitMiddleware:
    """Answers 413 to a request body over ``max_bytes``, or to JSON of over ``max_json_values`` values, before
    anything parses it.

    A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as it arrives.
    The body read here is handed on to the app, which would have buffered it whole anyway.
    """

    def __init__(self, app: Any, max_bytes: int, max_json_values: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_values = max_json_values

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        message = f"request body larger than the limit of {self.max_bytes} bytes"
        await JSONResponse({"error": message}, status_code=413)(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """ASGI entry: count the body of every HTTP request, then pass it on whole."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client disconnected
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        del chunks  # held for the whole request otherwise: a second copy of the body
        headers = dict(scope["headers"])
        values = (
            None if self.max_json_values is None else json_values_over(body, headers, self.max_json_values)
        )
        if values is not None:
            message = (
                f"request JSON of up to {values} values is over the limit of {self.max_json_values} values: "
                "send image files as BYTES, or pixels in the binary extension (binary_data_size)"
            )
            await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:  # after the body, the app only waits for a disconnect
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class ContentEncodingMiddleware:
    """Answers 415 to a request body sent compressed (``Content-Encoding: gzip``), which nothing here decodes.

    Such a body reached the JSON parser as it came and was refused as "invalid JSON: unexpected character",
    which says nothing of the compression the client chose.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """ASGI entry: 415 for a body in any encoding but ``identity``, everything else passes."""
        carries_body = scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH")
        encoding = dict(scope["headers"]).get(b"content-encoding", b"") if carries_body else b""
        if encoding.strip().lower() not in (b"", b"identity"):
            name = quote(encoding.decode("latin-1"))
            message = f"Content-Encoding {name} is not supported: send the request body uncompressed"
            await JSONResponse({"error": message}, status_code=415)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ReloadGuardMiddleware:
    """Refuses KServe's model repository endpoints (``/v2/repository/...``) when reload is off.

    In the cluster KServe rolls out a new revision for a new champion, so nothing needs the endpoint there;
    Knative's queue-proxy forwards outside requests from inside the pod, so only switching it off keeps it
    private.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """ASGI entry: 403 for ``/v2/repository/...``, everything else passes."""
        if scope["type"] == "http" and scope.get("path", "").startswith("/v2/repository/"):
            await JSONResponse({"error": RELOAD_OFF_MESSAGE}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def infer_route(dataplane: DataPlane, pool: ThreadPoolExecutor) -> Callable[..., Any]:
    """``POST /v2/models/<name>/infer`` parsing the body in ``pool``, then handing over to KServe's endpoint.

    FastAPI would parse the JSON body on the event loop: 20 MB of base64 images held every endpoint, liveness
    included, for 100-300 ms. Bodies up to ``INLINE_MAX_BODY_BYTES`` are parsed in place (tens of
    microseconds, less than the trip to the pool). KServe's endpoint takes the decoded ``InferRequest``.

    Its JSON answer (a pydantic ``InferenceResponse``) is written by pydantic's own serialiser: the same JSON
    FastAPI's generic ``jsonable_encoder`` would write, in ~4 µs instead of ~100 µs for one image's answer.
    """
    endpoints = V2Endpoints(dataplane)

    async def infer(raw_request: Request, raw_response: Response, model_name: str) -> Any:
        # A model name this server does not serve is a 404 whatever the body: no use parsing it first.
        dataplane.get_model_from_registry(model_name)
        body = await raw_request.body()
        headers = dict(raw_request.headers)
        if len(body) <= INLINE_MAX_BODY_BYTES:
            request = dataplane.decode_inference_request(body, headers, model_name)
        else:
            request = await asyncio.get_running_loop().run_in_executor(
                pool, dataplane.decode_inference_request, body, headers, model_name
            )
        answer = await endpoints.infer(raw_request, raw_response, model_name, request)
        if not isinstance(answer, InferenceResponse):  # the binary extension's answer: a Response already
            # A JSON header and raw tensors, which KServe sends with no Content-Type (it drops the JSON one).
            answer.headers["content-type"] = "application/octet-stream"
            return answer
        kept = {k: v for k, v in raw_response.headers.items() if k not in ("content-length", "content-type")}
        return Response(answer.model_dump_json(by_alias=True), media_type="application/json", headers=kept)

    return infer


def metadata_route(dataplane: DataPlane) -> Callable[..., Any]:
    """``GET /v2/models/<name>``: KServe's model metadata plus ``parameters`` (version facts, model card).

    KServe 0.21 filters its metadata response through ``ModelMetadataResponse``, which has no room for
    ``parameters``; this route answers the same path first with the dataplane's dict and the model's
    :meth:`~serving.model.DeepGuardModel.metadata_parameters`.
    """

    async def model_metadata(model_name: str) -> dict:
        metadata = await dataplane.model_metadata(model_name)
        model = dataplane.get_model_from_registry(model_name)
        parameters = getattr(model, "metadata_parameters", None)
        return {**metadata, "parameters": parameters() if parameters else {}}

    return model_metadata


# KServe's statuses for the errors that are the client's (kserve.errors' handlers).
CLIENT_ERROR_STATUS: dict[type[Exception], int] = {InvalidInput: 400, ModelNotFound: 404}


def printable(text: str) -> str:
    """``text`` with each unprintable character (a newline, an ANSI escape) written as its escape sequence.

    A refusal's message can hold the client's words: KServe's "Model with name ... does not exist" names the
    model of the URL (``/v2/models/x%0A2026-12-01 ... ERROR .../infer``) as it came, and a log line quoting it
    must stay one line that forges no other and drives no terminal.
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


async def client_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """KServe's answer to a client's error (same status, same body), logged in one INFO line.

    KServe's handlers log every refusal at ERROR with a traceback: a user's unreadable upload is no server
    fault, and would fill the log and fire the alerts on ERROR lines.
    """
    status = next(status for error, status in CLIENT_ERROR_STATUS.items() if isinstance(exc, error))
    log.info("%s %s answered %d: %s", request.method, quote(request.url.path), status, printable(str(exc)))
    return JSONResponse({"error": str(exc)}, status_code=status)


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """The router's own refusals (no such path, a method the path does not take) as the protocol's errors.

    FastAPI answers them ``{"detail": "Method Not Allowed"}``; the Open Inference Protocol's error is
    ``{"error": "..."}``, as every other refusal here, and the message says which request and what it may be.
    """
    message = f"{request.method} {quote(request.url.path)}: {exc.detail}"
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allowed:
        message += f"; this path takes {allowed}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def post_only(request: Request) -> None:
    """``GET /v1/models/<name>:predict`` (and ``:explain``): 405, not KServe's 404 for a model so named.

    KServe's V1 route ``GET /v1/models/<name>`` (model ready) took ``deepguard:predict`` for the model's name
    and answered that no model of that name exists.
    """
    raise HTTPException(405, headers={"Allow": "POST"})


class ClientErrorInterceptor(ExceptionToStatusInterceptor):
    """KServe's gRPC mapping of errors to statuses; a client's error is one INFO line, as over HTTP."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        if not isinstance(ex, tuple(CLIENT_ERROR_STATUS)):
            await super().handle_exception(ex, request_or_iterator, context, method_name)
            return
        status = StatusCode.NOT_FOUND if isinstance(ex, ModelNotFound) else StatusCode.INVALID_ARGUMENT
        log.info("gRPC %s answered %s: %s", method_name, status.name, printable(str(ex)))
        await context.abort(status, ex.reason)


class VersionedServicer(InferenceServicer):
    """KServe's gRPC servicer, with the versions HTTP has: in ``ModelMetadata`` and checked when pinned.

    KServe 0.21 copies name, platform, inputs and outputs from the data plane's metadata and drops the rest,
    so a gRPC client asking which version is served got an empty ``versions`` list; and it ignores a
    request's version, so one pinning version 9 was answered by whichever version is served (HTTP: 404).
    """

    def _served(self, name: str, version: str) -> None:
        """A request naming a version (empty: whichever is served) is answered by that version or refused."""
        if version and (message := version_not_served(self._data_plane.model_registry, name, version)):
            raise VersionNotServed(message)

    async def ModelReady(  # noqa: N802 (the protocol's method names)
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        self._served(request.name, request.version)
        return await super().ModelReady(request, context)

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        self._served(request.model_name, request.model_version)
        return await super().ModelInfer(request, context)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        self._served(request.name, request.version)
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
        )


class DeepGuardServer(ModelServer):
    """``kserve.ModelServer`` listening on ``http_host`` (KServe 0.21 always binds 0.0.0.0)."""

    def __init__(self, http_host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_host = http_host

    async def _serve(self) -> None:
        # start() has built the REST server but not started it; uvicorn reads the host when it binds.
        rest = self._rest_server
        rest.config.host = self.http_host
        # KServe adds its exception handlers when its REST server starts, replacing any added before: ours
        # for the client's errors go in right after them.
        add_kserve_handlers = rest._add_exception_handlers

        def add_exception_handlers(app: Any) -> None:
            add_kserve_handlers(app)
            for error in CLIENT_ERROR_STATUS:
                app.add_exception_handler(error, client_error_handler)
            app.add_exception_handler(HTTPException, http_error_handler)

        rest._add_exception_handlers = add_exception_handlers
        # KServe's gRPC server names its interceptor when it starts, below.
        grpc_server.ExceptionToStatusInterceptor = ClientErrorInterceptor
        grpc_server.InferenceServicer = VersionedServicer
        await super()._serve()


def build_server(model: DeepGuardModel, args: argparse.Namespace) -> ModelServer:
    """Build the model server whose repository reloads ``model``, with the request guards in front."""
    repository = ReloadingRepository([model])
    server = DeepGuardServer(
        http_host=args.http_host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        registered_models=repository,
    )
    if not args.enable_latency_logging:  # KServe's timing middleware logs every request to its trace logger
        logging.getLogger(KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    # Replaced before start(): the REST server is built from server.dataplane in start().
    server.dataplane = VersionedDataPlane(model_registry=repository)
    app = model_server.app
    # Registered before start() adds KServe's routes, so this one answers the path.
    app.add_api_route(
        "/v2/models/{model_name}/infer",
        infer_route(server.dataplane, model.decode_pool),
        methods=["POST"],
        response_model=None,
    )
    app.add_api_route(
        "/v2/models/{model_name}", metadata_route(server.dataplane), methods=["GET"], response_model=None
    )
    for verb in ("predict", "explain"):
        path = f"/v1/models/{{model_name}}:{verb}"
        app.add_api_route(path, post_only, methods=["GET", "PUT", "PATCH", "DELETE"], response_model=None)
    app.add_middleware(VersionPathMiddleware, repository=repository)
    # Replaced before start(), which hands it to the REST and gRPC servers.
    if args.reload:
        server.model_repository_extension = ReloadingRepositoryExtension(model_registry=repository)
    else:
        app.add_middleware(ReloadGuardMiddleware)
        server.model_repository_extension = FrozenRepositoryExtension(model_registry=repository)
    # Added last, so it runs first: nothing reads a body over the limit, or one compressed.
    limits = model.limits
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=limits.max_request_bytes, max_json_values=limits.max_json_values
    )
    app.add_middleware(ContentEncodingMiddleware)
    # Outermost: times and counts every inference request, the guards' refusals included.
    app.add_middleware(RequestMetricsMiddleware)
    return server
