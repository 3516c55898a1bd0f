"""Domain exceptions and their RFC 9457 problem+json rendering.

Each exception carries the HTTP status and the stable `code` of docs/api.md §1. Clients
never see a traceback or a server path: unexpected exceptions answer a fixed message (the
exception text only with `debug` on).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI
    from starlette.routing import BaseRoute

log = logging.getLogger("omnibatch.errors")
PROBLEM_JSON = "application/problem+json"
REDIS_RETRY_AFTER_S = 5  # a restart with AOF replay, or a failover, takes seconds


class OmnibatchError(Exception):
    status = 500
    code = "internal"
    title = "Internal error"

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}


class InvalidRequest(OmnibatchError):
    status, code, title = 422, "invalid_request", "Invalid request"


class BadRequest(OmnibatchError):
    status, code, title = 400, "invalid_request", "Bad request"


class Unauthorized(OmnibatchError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None):
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class NotFound(OmnibatchError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(OmnibatchError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(OmnibatchError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(OmnibatchError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UrlForbidden(OmnibatchError):
    status, code, title = 422, "url_forbidden", "URL forbidden"


class UrlFetchFailed(OmnibatchError):
    status, code, title = 422, "url_fetch_failed", "URL fetch failed"


class _RetryLater(OmnibatchError):
    """A refusal that tells the client when to come back (`Retry-After`, whole seconds)."""

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class RateLimited(_RetryLater):
    status, code, title = 429, "rate_limited", "Rate limited"


class QueueFull(_RetryLater):
    status, code, title = 503, "queue_full", "Queue full"


class ServiceUnavailable(_RetryLater):
    """Redis (the job store and queue) is unreachable or still loading its data."""

    status, code, title = 503, "service_unavailable", "Service unavailable"


class RequestTimeout(OmnibatchError):
    status, code, title = 408, "request_timeout", "Request timeout"

    def __init__(self, detail: str):
        super().__init__(detail, {"Connection": "close"})


class NotReady(OmnibatchError):
    status, code, title = 503, "not_ready", "Not ready"


def problem_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """A route's `responses=` for the refusals it can answer: problem+json bodies (FastAPI
    documents a route's validation 422 as plain JSON unless it is listed here)."""
    from contract.schemas import Problem

    return {status: {"model": Problem, "content": {PROBLEM_JSON: {}}} for status in statuses}


def problem_body(status: int, code: str, title: str, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}


def register_handlers(app: FastAPI, debug: bool, routes: Sequence[BaseRoute]) -> None:
    """`routes`: the app's API routes, for the `Allow` header of 405 and OPTIONS answers."""
    import redis
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(status: int, code: str, title: str, detail: str, headers=None) -> JSONResponse:
        return JSONResponse(
            problem_body(status, code, title, detail),
            status_code=status,
            media_type=PROBLEM_JSON,
            headers=headers,
        )

    async def on_domain(_request, exc: OmnibatchError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.title, exc.detail, exc.headers)

    async def on_validation(_request, exc: RequestValidationError) -> JSONResponse:
        return respond(422, "invalid_request", "Invalid request", describe_validation(exc.errors()))

    async def on_http(request, exc: StarletteHTTPException) -> Response:
        headers = exc.headers
        if exc.status_code == 405:
            # The router names only the first route of the path; the resource has them all.
            allow = {"Allow": ", ".join(allowed_methods(routes, request.scope))}
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=allow)
            headers = (headers or {}) | allow
        codes = {401: "unauthorized", 404: "not_found", 409: "conflict", 413: "payload_too_large"}
        code = codes.get(
            exc.status_code, "invalid_request" if exc.status_code < 500 else "internal"
        )
        return respond(exc.status_code, code, str(exc.detail), str(exc.detail), headers)

    async def on_redis_down(request, exc: redis.RedisError) -> JSONResponse:
        # Refused or lost connections, timeouts, LOADING after a restart: each passes, and
        # redis-py has already retried for a few seconds; the client comes back later.
        log.warning("Redis unavailable: %s: %s", type(exc).__name__, exc)
        err = ServiceUnavailable("the job store is unavailable; retry later", REDIS_RETRY_AFTER_S)
        return await on_domain(request, err)

    async def on_unexpected(_request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        detail = f"{type(exc).__name__}: {exc}" if debug else "internal error"
        return respond(500, "internal", "Internal error", detail)

    app.add_exception_handler(OmnibatchError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(redis.ConnectionError, on_redis_down)  # BusyLoadingError too
    app.add_exception_handler(redis.TimeoutError, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)


def allowed_methods(routes: Sequence[BaseRoute], scope: dict) -> list[str]:
    """Every method some route of the request's path answers, OPTIONS included."""
    from starlette.routing import Match

    methods = {"OPTIONS"}
    for route in routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """One line per pydantic error, `field.path: message`, without echoing input values."""
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid"))
    return "; ".join(parts)
