"""The FastAPI application: REST API under /api/v1, web UI under /, OpenAPI at /docs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi_offline import FastAPIOffline
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.config import get_settings
from app.datasets.router import router as datasets_router
from app.db import get_engine, refusal
from app.edge import check_request
from app.errors import DomainError, validation_message
from app.evaluation.router import router as evaluations_router
from app.generation.router import router as generation_router
from app.imports.documents_router import router as documents_router
from app.imports.router import router as imports_router
from app.jobs.router import router as jobs_router
from app.openapi import install as install_openapi
from app.preferences.router import router as preferences_router
from app.projects.router import router as projects_router
from app.records.router import router as records_router
from app.review.router import router as review_router
from app.snapshots.router import router as snapshots_router
from app.training.router import router as training_router
from app.ui.router import router as ui_router
from app.ui.web import error_page

log = logging.getLogger(__name__)
# Request threads per process; fewer than the database pool's connections (app.db.make_engine).
THREADS = 24


class BodyLimitMiddleware:
    """Refuse bodies over the upload limit with 413 before reading them (Content-Length or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse(
                {"detail": f"request body is larger than the {self.limit // (1024 * 1024)} MB upload limit"},
                status_code=413,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """The headers every response carries, whatever produced it: JSON, downloads, /docs, errors, pages.

    Pages set their own, stricter Content-Security-Policy (app.ui.web.CSP); a header a response already
    has is never replaced. Elsewhere no browser may sniff a download into HTML (nosniff), frame a
    response (clickjacking of /docs or a page), or, for the API, run anything a JSON body might hold;
    API answers are personal, so no shared cache keeps them.
    """

    COMMON = (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
    )
    API_CSP = "default-src 'none'; frame-ancestors 'none'"
    OTHER_CSP = "frame-ancestors 'none'"  # /docs loads Swagger UI's scripts: only framing is refused

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in self.COMMON:
                    headers.setdefault(key, value)
                headers.setdefault("Content-Security-Policy", self.API_CSP if api else self.OTHER_CSP)
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def health(request: Request) -> dict[str, Any]:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, don't crash: health must answer
        checks["database"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "degraded", "version": __version__, "checks": checks}


def _openapi_alias() -> RedirectResponse:
    """Where tools look for it first; the document itself lives beside the API it describes."""
    return RedirectResponse("/api/v1/openapi.json", status_code=308)


def create_app() -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    # Swagger UI and ReDoc from files installed with fastapi-offline: /docs works without internet.
    app = FastAPIOffline(
        lifespan=lifespan,
        title="InstructForge",
        version=__version__,
        description="Build instruction-tuning datasets: generate, curate, review, snapshot, export and train.",
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/api/v1/openapi.json",
    )
    app.add_api_route("/openapi.json", _openapi_alias, methods=["GET"], include_in_schema=False)
    install_openapi(app)  # the error bodies the service really sends

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message}
        body.update({k: v for k, v in exc.detail.items() if v is not None})
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> Response:
        if isinstance(exc, OperationalError | InterfaceError):
            # The database is down, or busy past its lock timeout: nothing was stored; try again.
            log.warning("database unavailable: %s", exc.orig)
            return JSONResponse(
                {"detail": "the database is unavailable; nothing was stored, try again"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        domain = refusal(exc)
        if not request.url.path.startswith("/api/"):
            return error_page(request, domain)  # a form's commit failed: a page, as for other errors
        return await _domain_error(request, domain)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse({"detail": validation_message(exc.errors()), "errors": errors}, status_code=422)

    # Every API and page request passes the edge check (app.edge) before its handler runs.
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(check_request)])
    api.add_api_route("/health", health, methods=["GET"], tags=["health"])
    for router in (
        auth_router,
        projects_router,
        datasets_router,
        records_router,
        preferences_router,
        imports_router,
        documents_router,
        jobs_router,
        snapshots_router,
        training_router,
        evaluations_router,
        review_router,
        generation_router,
        audit_router,
    ):
        api.include_router(router)
    app.include_router(api)
    app.include_router(ui_router, dependencies=[Depends(check_request)])
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: the 413 above gets the headers too
    return app
