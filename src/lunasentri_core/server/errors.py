"""Errors as the API reports them: ``{"error": {"code", "message", "field"}}``.

Every failure a client can cause is a 4xx with this body; a 500 means a bug, and
its body says only that (the details go to the log under the request id).
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lunasentri_core.errors import (
    ConflictError,
    InUseError,
    LunaSentriError,
    NotFoundError,
    StorageError,
    ValidationError,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


UNAVAILABLE_RETRY_AFTER = 5
"""Seconds a 503 asks clients to wait when its cause names no better time (a storage
fault: a full disk, a database locked past its busy timeout). Short, because agents
hold samples meanwhile and a fault that clears should drain them within seconds."""


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, str]] | None = None,
    in_use_by: dict[str, list[str]] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message, "field": field}
    if details is not None:
        body["details"] = details
    if in_use_by is not None:
        body["in_use_by"] = in_use_by
    if status == 503 and "retry-after" not in {name.lower() for name in headers or ()}:
        headers = {**(headers or {}), "Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def handle_api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(
        error.status, error.code, error.message, error.field, headers=error.headers
    )


async def handle_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ValidationError)
    first = error.errors[0] if error.errors else None
    details = [{"field": e.path, "message": e.message} for e in error.errors]
    return error_response(
        422, "invalid", str(error), first.path if first else None, details=details
    )


async def handle_domain_error(request: Request, error: Exception) -> Response:
    if isinstance(error, NotFoundError):
        return error_response(404, "not_found", str(error))
    if isinstance(error, InUseError):
        return error_response(409, "in_use", str(error), in_use_by=error.users)
    if isinstance(error, ConflictError):
        return error_response(409, "conflict", str(error))
    if isinstance(error, StorageError):
        log.error("storage error: %s", error)
        return error_response(503, "unavailable", "storage is unavailable")
    assert isinstance(error, LunaSentriError)
    return error_response(400, "bad_request", str(error))


async def handle_http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        error.status_code,
        codes.get(error.status_code, "http_error"),
        str(error.detail),
        headers=dict(error.headers) if error.headers else None,
    )


async def handle_unexpected(request: Request, error: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal server error")


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    ValidationError: handle_validation_error,
    LunaSentriError: handle_domain_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
