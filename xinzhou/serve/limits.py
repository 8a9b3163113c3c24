"""The server's limits and the gate every request passes: API key, body size, concurrent requests.

Why a raw ASGI middleware instead of FastAPI dependencies: the body limit must hold before anything reads the
body (a 1 GB upload must be refused after reading the first ``max_body_bytes``, not after parsing it), and a
streaming response must see the client's disconnect, which Starlette's ``BaseHTTPMiddleware`` would hide. The body
is read here, at most ``max_body_bytes + 1`` of it, and replayed to the app; after it, ``receive`` passes through,
so the disconnect still reaches the streaming response.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xinzhou.serve.errors import APIError, error_response

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass
class ServerConfig:
    """Server-wide settings.

    Attributes:
        api_key: when set, every request except health and docs needs it, as ``Authorization: Bearer KEY``
            or ``x-api-key: KEY``.
        model_aliases: names accepted in ``model`` besides the backend's model id.
        max_body_bytes: the largest request body (413 above it).
        max_tokens_limit: the largest ``max_tokens`` / ``max_completion_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when an OpenAI request gives none (the context still bounds it).
        max_concurrent_requests: generation requests in flight at once (429 above it); streams count until
            they end.
        max_n: the largest ``n`` (choices per request).
    """

    api_key: str | None = None
    model_aliases: tuple[str, ...] = ()
    max_body_bytes: int = 4 << 20
    max_tokens_limit: int = 32_768
    default_max_tokens: int = 2048
    max_concurrent_requests: int = 256
    max_n: int = 8

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens_limit", "default_max_tokens", "max_concurrent_requests", "max_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")


class Gate:
    """Counts generation requests in flight; ``enter()`` raises 429 when the limit is reached."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise APIError(429, f"too many concurrent requests (the limit is {self.limit}); retry later",
                           code="rate_limit_exceeded")
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


class Guard:
    """ASGI middleware: API key, then the body limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app, self.config = app, config
        self._key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            await self._reject(scope, send, 401, "missing or invalid API key: send it as 'Authorization: Bearer "
                               "KEY' or 'x-api-key: KEY'", "invalid_api_key")
            return
        limit = self.config.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reject(scope, send, 400, "invalid Content-Length header", "invalid_request")
                return
            if size > limit:
                await self._too_large(scope, send)
                return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            total += len(message.get("body", b""))
            if total > limit:
                await self._too_large(scope, send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope: Scope) -> bool:
        offered = [_header(scope, b"x-api-key")]
        auth = _header(scope, b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            offered.append(auth[7:].strip())
        return any(k is not None and hmac.compare_digest(k, self._key or b"") for k in offered)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await self._reject(scope, send, 413, f"the request body is larger than the limit of "
                           f"{self.config.max_body_bytes} bytes", "request_too_large")

    @staticmethod
    async def _reject(scope: Scope, send: Send, status: int, message: str, code: str) -> None:
        response = error_response(scope.get("path", ""), status, message, code)

        async def no_body() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)
