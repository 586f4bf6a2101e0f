"""The FastAPI application of `sdrt serve`: routes, the one JSON error body, auth and request metrics.

`create_app` builds everything from its arguments and starts nothing, so the same app runs under uvicorn
(`sdrt serve`), in tests, and inside a Ray Serve deployment (`@serve.ingress` with a builder, or a class whose
`__serve_build_asgi_app__` returns `create_app(self.engine, ...)`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import a1111, openai_api
from .api_errors import ApiError, error_responses, internal_error, invalid, printable
from .auth import BearerAuth
from .body_guard import BodyGuard
from .internal_errors import InternalErrors
from .metrics import RequestMetrics, ServeMetrics
from .model_info import ServedModel
from .runner import ServerState
from .settings import ServeSettings

log = logging.getLogger("sdrt.serve")
STATIC = Path(__file__).with_name("static")  # the playground: plain HTML, CSS and JS, no build step
HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    draining: bool


def create_app(engine: Any, settings: ServeSettings, model: ServedModel,
               metrics: ServeMetrics | None = None) -> FastAPI:
    """The app for one engine. Pass the ServeMetrics that is the engine's observer, so /metrics shows the
    batching loop's series; without one the app keeps its own (HTTP series, queue depth, active jobs)."""
    metrics = metrics or ServeMetrics()
    metrics.watch(engine)
    state = ServerState(engine, settings, model, metrics)
    app = FastAPI(title="sdrt", version=__version__,
                  description="Stable Diffusion serving: AUTOMATIC1111 and OpenAI Images API shapes.")
    app.state.sdrt = state
    _install_error_handlers(app)
    routers = [a1111.router(state), openai_api.router(state), _ops_router(state)]
    # With API keys, every route but /healthz and the playground's page says so in the document: a bearer
    # security scheme and the 401 answer. The middleware does the checking (404s included).
    guarded = {"dependencies": [Depends(HTTPBearer(auto_error=False, description="A key from the server's "
                                                   "--api-key-file."))],
               "responses": error_responses(401)} if settings.api_keys else {}
    for api in routers:
        app.include_router(api, **guarded)
    routers.append(_open_router())
    app.include_router(routers[-1])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(InternalErrors)  # innermost: a bug is an ordinary 500 that auth and metrics see
    if settings.api_keys:
        app.add_middleware(BearerAuth, keys=settings.api_keys)
    app.add_middleware(BodyGuard, limit=state.max_body_bytes)
    paths = {route.path for source in (app, *routers) for route in source.routes if hasattr(route, "path")}
    app.add_middleware(RequestMetrics, metrics=metrics, routes=paths)  # outermost: counts 401s too
    return app


def _open_router() -> APIRouter:
    """Routes that never need an API key (auth.OPEN_PATHS): liveness, and the playground's page, which asks
    for the key itself."""
    api = APIRouter()

    @api.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> dict[str, str]:
        """Alive (the process answers). Never needs an API key."""
        return {"status": "ok"}

    @api.get("/", response_class=HTMLResponse, tags=["playground"])
    def playground() -> FileResponse:
        """The playground: a page to try the bundle from a browser (its scripts and styles under /static)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return api


def _ops_router(state: ServerState) -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.get("/readyz", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "Not ready, or draining."}})
    def readyz() -> JSONResponse:
        """Engines loaded and warmed, and not shutting down: 200, else 503."""
        body = {"ready": state.ready, "draining": state.draining}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        data, content_type = state.metrics.render()
        return PlainTextResponse(data, media_type=content_type)

    return api


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else list(map(str, loc))
    return ".".join(parts) or None


def _validation_message(error: dict) -> tuple[str, str | None]:
    field = _field(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'syntax error')})", None
    if kind == "missing":
        return (f"{field} is required" if field else "the request body is required (JSON)"), field
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if kind == "string_unicode":  # a JSON key that is not Unicode text (a lone surrogate): an unknown field's name
        name = printable(str(error.get("input")))
        path = f"{field}.{name}" if field else name
        return (f"the field name {path} is not valid Unicode text (it holds a lone surrogate): send field names "
                "as UTF-8 text"), path
    if field is None and (kind == "model_attributes_type" or kind.endswith("_type")):
        return "the request body must be a JSON object, sent with Content-Type: application/json", field
    if kind == "model_attributes_type":
        return f"{field} must be a JSON object, got {shown}", field
    message = error.get("msg", "is invalid")
    return (f"{field}: {message[0].lower() + message[1:]}, got {shown}" if field else message), field


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message, field = _validation_message(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _error_response(ApiError(422, "invalid_request", message, field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body as JSON
            reason = "not UTF-8 text" if isinstance(exc.__cause__, UnicodeError) else type(exc.__cause__).__name__
            return _error_response(invalid(f"the request body is not valid JSON ({reason}): send a JSON object, "
                                           "UTF-8 encoded, with Content-Type: application/json"))
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            detail = f"no route {request.url.path}: see /docs for the routes"
        return _error_response(ApiError(exc.status_code, code, detail, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """The last resort, for a failure outside the routes (middleware); InternalErrors catches the rest."""
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(internal_error(exc))
