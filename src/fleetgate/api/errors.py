"""One error shape for every API answer that is not a success.

``{"error": {"code": "...", "message": "one line", "field": "..."?}}``. User mistakes are 4xx
(400 malformed, 401/403 who, 404 unknown, 409 not now, 413 too large, 422 refused content);
only a fault of fleetgate itself is a 500, and even that answers in this shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetgate.errors import (
    FleetgateError,
    GuardrailError,
    InputError,
    IntegrityError,
    LeaseLost,
    StoreError,
    ValidationError,
)

log = logging.getLogger("fleetgate.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return {"error": err}


def _respond(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(code, message.splitlines()[0] if message else code, field), status_code=status
    )


def from_fleetgate(exc: FleetgateError, field: str | None = None) -> ApiError:
    """Map the engine's errors onto HTTP: whose fault, and whether trying later helps."""
    msg = str(exc)
    if isinstance(exc, ValidationError | InputError):
        return ApiError(400, "invalid", msg, field)
    if isinstance(exc, IntegrityError):
        return ApiError(422, "integrity-error", msg, field)
    if isinstance(exc, GuardrailError):
        return ApiError(409, "refused", msg, field)
    if isinstance(exc, LeaseLost):
        return ApiError(409, "lease-lost", msg)
    if isinstance(exc, StoreError):
        return ApiError(503, "store-unavailable", msg)
    if type(exc).__name__ == "IllegalTransition":
        return ApiError(409, "not-now", msg, field)
    if exc.retryable:
        return ApiError(409, "busy", msg)
    return ApiError(500, "internal", msg)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_r: Request, exc: ApiError) -> JSONResponse:
        return _respond(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(FleetgateError)
    async def _fg(_r: Request, exc: FleetgateError) -> JSONResponse:
        e = from_fleetgate(exc)
        return _respond(e.status, e.code, e.message, e.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        field = ".".join(loc) or None
        return _respond(400, "invalid", f"{field or 'request'}: {first.get('msg')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return _respond(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _respond(500, "internal", f"internal error: {type(exc).__name__}")
