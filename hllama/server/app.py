"""``create_app``: the FastAPI application, its state, and the one place errors become statuses."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hllama import __version__
from hllama.aliases.watch import ModelfileWatcher
from hllama.config import Settings, address
from hllama.errors import (
    AddressInUse,
    AliasExists,
    AliasNotFound,
    BuiltinAlias,
    CannotListen,
    ChatTemplateError,
    ConfigError,
    GatedModel,
    HllamaError,
    HubUnreachable,
    IncompleteModel,
    InvalidAliasName,
    InvalidOption,
    ModelfileError,
    ModelLoadError,
    ModelNotDownloaded,
    ModelTooLarge,
    NoModelAtPath,
    NotSupported,
    PromptTooLong,
    QuantizationUnavailable,
    RemoteModelNotFound,
    RequestCancelled,
    RequestTooLarge,
    ResponseNotFound,
    ServerBusy,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from hllama.runtime.metrics import RequestMetrics
from hllama.runtime.service import Service, build_service
from hllama.server.anthropic_routes import router as anthropic_router
from hllama.server.anthropic_types import ErrorBody, ErrorResponse
from hllama.server.body import document_errors, hoist_schemas
from hllama.server.ollama_models import router as ollama_models_router
from hllama.server.ollama_routes import router as ollama_router
from hllama.server.ollama_types import ErrorResponse as OllamaError
from hllama.server.openai_routes import router as openai_router
from hllama.server.openai_types import ErrorDetail
from hllama.server.openai_types import ErrorResponse as OpenAIError
from hllama.server.responses_routes import router as responses_router
from hllama.server.security import add_access_control

log = logging.getLogger("hllama.server")

#: Error class -> HTTP status, applied by a single handler (the first class in the MRO that is listed wins).
HTTP_STATUS: dict[type[HllamaError], int] = {
    InvalidOption: 400, InvalidAliasName: 400, ModelfileError: 400, PromptTooLong: 400, AliasExists: 400,
    NotSupported: 400, ChatTemplateError: 400, BuiltinAlias: 400, IncompleteModel: 400,
    AliasNotFound: 404, ResponseNotFound: 404, ModelNotDownloaded: 404, NoModelAtPath: 404, RemoteModelNotFound: 404,
    UnsupportedMediaType: 415, RequestTooLarge: 413, GatedModel: 403, HubUnreachable: 502, UpstreamUnavailable: 502,
    ServerBusy: 503, RequestCancelled: 499,  # nginx's "client closed request": nobody is there to read it
    ModelTooLarge: 500, QuantizationUnavailable: 500, ModelLoadError: 500, ConfigError: 500,
}

_OPENAI_TYPE = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error"}


_ANTHROPIC_TYPE = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                   413: "request_too_large", 503: "overloaded_error"}


def status_of(error: HllamaError) -> int:
    return next((HTTP_STATUS[cls] for cls in type(error).__mro__ if cls in HTTP_STATUS), 500)


#: Every API's routes, in the order they are matched.
ROUTERS = (ollama_models_router, ollama_router, openai_router, anthropic_router, responses_router)


def create_app(service: Service, *, watch: bool = True, bind_host: str = "127.0.0.1") -> FastAPI:
    """The app over ``service``; with ``watch``, edits in the modelfiles folder apply without a restart.

    ``bind_host`` is where it will listen: on loopback, requests naming another host are refused.
    """
    app = FastAPI(title="hllama", version=__version__, lifespan=_lifespan(service, watch=watch), docs_url=None,
                  redoc_url=None)
    app.state.service = service
    app.add_middleware(AnswerUnexpectedErrors)  # innermost: what it answers passes the others as any answer does
    key = service.settings.api_key
    add_access_control(app, bind_host=bind_host, origins=service.settings.origins,
                       api_key=key.get_secret_value() if key else None, refuse=error_response,
                       max_body=int(service.settings.max_request_size),
                       open_paths=("/metrics",) if service.settings.metrics_without_key else ())
    if service.settings.metrics:
        app.add_middleware(RequestMetrics, metrics=service.metrics)  # outermost: refusals are counted too

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            """Prometheus' text format."""
            return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _answer_errors(app)
    for router in ROUTERS:
        app.include_router(router)
    _document_errors(app)
    return app


def _lifespan(service: Service, *, watch: bool) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Watch the modelfiles while the app runs; at its end, unload every model and write the request log."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = ModelfileWatcher(service) if watch else None
        task = None
        if watcher is not None:
            ready = asyncio.Event()
            task = asyncio.create_task(watcher.run(ready))
            await asyncio.wait_for(ready.wait(), timeout=30)
        yield
        if watcher and task:
            watcher.stop()
            await asyncio.gather(task, return_exceptions=True)
        await service.scheduler.close()
        await asyncio.to_thread(service.close_log)

    return lifespan


def _answer_errors(app: FastAPI) -> None:
    """hllama's errors, the router's own and bad path values, each in the API's own error shape."""

    @app.exception_handler(HllamaError)
    async def hllama_error(request: Request, exc: HllamaError) -> JSONResponse:
        path = request.url.path
        if isinstance(exc, PromptTooLong):  # in the words each API's clients act on (compacting, trimming)
            message = f"prompt is too long: {exc.needed} tokens > {exc.context} maximum ({exc})" \
                if path.startswith("/v1/messages") else str(exc)
            return error_response(path, status_of(exc), message, code="context_length_exceeded")
        return error_response(path, status_of(exc), str(exc))

    @app.exception_handler(HTTPException)
    async def framework_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The router's own 404/405 in each API's shape (never ``{"detail": ...}``)."""
        message = {404: f"{request.url.path} not found", 405: f"method {request.method} not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(request.url.path, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_path(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 400, f"invalid request: {exc.errors()[0].get('msg', 'bad value')}")


def _document_errors(app: FastAPI) -> None:
    """``/openapi.json`` with each route's error answers in its API's shape, the schemas hoisted once."""
    describe_api = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            shapes = [(prefix, name, model.model_json_schema(ref_template="#/components/schemas/{model}"))
                      for prefix, name, model in ERROR_SHAPES]
            app.openapi_schema = document_errors(hoist_schemas(describe_api()), shapes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class AnswerUnexpectedErrors:
    """A 500 in the route's API's shape for an exception no handler knows (its traceback logged once), on a
    connection that stays open: FastAPI's own handler for ``Exception`` answers, then raises it again, and uvicorn
    closes the connection, which a pooled client's next requests then fail on. An error once the answer has
    begun cannot become a status; the answer just ends there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # noqa: BLE001 - every exception: this is where unexpected ones end
            log.exception("unexpected error on %s", scope["path"])
            if not started:
                message = f"internal error ({type(exc).__name__}); the server log has the details"
                await error_response(scope["path"], 500, message)(scope, receive, send)


def error_response(path: str, status: int, message: str, *, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Ollama's ``{"error": "..."}``, Anthropic's error under ``/v1/messages``, or OpenAI's elsewhere under ``/v1``."""
    if path.startswith("/v1/messages"):
        kind = _ANTHROPIC_TYPE.get(status, "invalid_request_error" if status < 500 else "api_error")
        return JSONResponse(ErrorResponse(error=ErrorBody(type=kind, message=message)).model_dump(),
                            status_code=status, headers=headers)
    if path.startswith("/v1/"):
        body = OpenAIError(error=ErrorDetail(message=message, type=_OPENAI_TYPE.get(status, "api_error"), code=code))
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)
    return JSONResponse(OllamaError(error=message).model_dump(), status_code=status, headers=headers)


#: Each API's error shape, by the paths it answers (the first prefix that matches wins), for the OpenAPI document.
ERROR_SHAPES = [("/v1/messages", "AnthropicError", ErrorResponse), ("/v1/", "OpenAIError", OpenAIError),
                ("/", "OllamaError", OllamaError)]


def serve(settings: Settings, *, host: str, port: int) -> None:
    from hllama.server.security import exposure_warning
    from hllama.units import format_bytes

    listening = listen(host, port)  # before anything else: an address in use is one line, not a startup and a crash
    logging.getLogger("hllama").setLevel(logging.INFO)  # a line per model loaded and unloaded, among uvicorn's
    service = build_service(settings)
    log.info("memory budget %s (%s)", format_bytes(service.budget.bytes), service.budget.source)
    if warning := exposure_warning(host, has_key=settings.api_key is not None):
        log.warning("%s", warning)
    config = uvicorn.Config(create_app(service, bind_host=host), host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    log.info("serving on http://%s (Ctrl+C to stop)", address(host, port))  # uvicorn names no socket it is given
    StoppingServer(config, service).run(sockets=[listening])


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), or :class:`AddressInUse` / :class:`CannotListen`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart need not wait
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(address(host, port)) from None
        raise CannotListen(address(host, port), exc.strerror or str(exc)) from None
    return listening


#: After a stop signal, how long requests still under way may take to finish before they are cut.
SHUTDOWN_SECONDS = 3


class StoppingServer(uvicorn.Server):
    """Stops promptly: the first signal cancels running generations (their answers end, as a client's
    disconnect ends them) and waits at most :data:`SHUTDOWN_SECONDS` for the rest; a second exits at once."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit:
            log.warning("second signal: exiting now")
            os._exit(128 + sig)
        log.info("stopping: cancelling running generations")
        self.service.cancel_all()
        super().handle_exit(sig, frame)
