"""Every failure the server reports, in the error shape of the API the client speaks.

Clients branch on these bodies (the official SDKs raise typed exceptions from the status code and show the
message), so nothing may leak out as an HTML page, a bare string or a dropped connection: malformed JSON, wrong
types, unknown routes and models, limits and internal errors all become JSON. OpenAI's shape is
``{"error": {"message", "type", "param", "code"}}``; Anthropic's is ``{"type": "error", "error": {"type",
"message"}}``. The Anthropic shape is used for paths under ``/v1/messages``; the OpenAI shape everywhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("xinzhou.serve")

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                   429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}


class APIError(Exception):
    """An error to answer with ``status``; ``code`` and ``param`` fill the OpenAI fields."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def is_anthropic(path: str) -> bool:
    return path.rstrip("/").startswith("/v1/messages")


def error_body(path: str, status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    if is_anthropic(path):
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(path: str, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, code, param), status_code=status)


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the first offending parameter from pydantic's error list."""
    parts, param = [], None
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            parts.append(f"the request body is not valid JSON ({ctx.get('error', 'parse error')})")
            continue
        if not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("the request body must be a JSON object (Content-Type: application/json)")
            continue
        param = param or (where or None)
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid value')}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "; ".join(parts) or "invalid request", param


def install(app: FastAPI) -> None:
    """Register handlers that turn every exception into a JSON error of the right shape."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(list(exc.errors()))
        return error_response(request.url.path, 400, message, "invalid_request", param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(request.url.path, exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, f"internal server error ({type(exc).__name__})")
