"""The HTTP surface: FastAPI routes over a :class:`Backend`, nothing more.

``create_app(backend, config)`` serves ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/completions`` (OpenAI's
legacy text completions, for evaluation harnesses), ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``
(Anthropic), vLLM's tokenizer endpoints (``tokenizer_api.py``), ``GET /v1/models``, ``GET /health`` and the OpenAPI
schema (``/openapi.json``, ``/docs``). The protocol modules own the shapes, ``generation.py`` owns what is
generated, ``limits.py`` the gate, ``errors.py`` the error bodies. Each generation request holds a place in the
concurrency gate until its response ends; a streaming client that disconnects cancels its response, which aborts its
sequences in the engine at once (a non-streaming one is watched for the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from xinzhou.serve import anthropic_protocol, completions_protocol, generation, openai_protocol, tokenizer_api
from xinzhou.serve.backend import Backend
from xinzhou.serve.errors import APIError, install
from xinzhou.serve.generation import Generation, GenerationError
from xinzhou.serve.limits import Gate, Guard, ServerConfig

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request (the API's own error shape)"},
    401: {"description": "missing or wrong API key"},
    404: {"description": "unknown model"},
    413: {"description": "body larger than the limit"},
    429: {"description": "too many concurrent requests"},
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(backend: Backend, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app. The backend is started and closed with the app's lifespan."""
    config = config or ServerConfig()
    gate = Gate(config.max_concurrent_requests)
    models = (backend.model_id, *config.model_aliases)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend.start()
        try:
            yield
        finally:
            backend.close()

    app = FastAPI(title="xinzhou", summary="OpenAI- and Anthropic-compatible MiniMax-M2 chat server",
                  version="0.1.0", lifespan=lifespan)
    app.add_middleware(Guard, config=config)
    install(app)
    app.state.backend, app.state.config, app.state.gate = backend, config, gate

    def check_model(model: str) -> None:
        if model not in models:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {list(models)}",
                           code="model_not_found", param="model")

    async def run(request: Request, start: Callable[[], Awaitable[Running]], stream: bool,
                  respond: Callable[[Any], Awaitable[dict[str, Any]]],
                  events: Callable[[Any], AsyncIterator[str]]) -> Any:
        """Hold a place in the gate from ``start()`` (a request that cannot run: 400) until the response ends."""
        gate.enter()
        try:
            with bad_request():
                gen = await start()
            if stream:
                return EventStream(events(gen), gen, gate)
        except BaseException:
            gate.leave()
            raise
        try:
            return JSONResponse(await _unless_disconnected(request, respond(gen)))
        except GenerationError as e:
            raise APIError(500, f"generation failed: {e}") from e
        finally:
            await gen.aclose()
            gate.leave()

    @app.get("/health", summary="Liveness and load")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.model_id, "active_requests": gate.active, **backend.stats()}

    @app.get("/v1/models", summary="The served model (OpenAI and Anthropic fields)")
    async def list_models() -> dict[str, Any]:
        now = int(time.time())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        data = [{"id": m, "object": "model", "created": now, "owned_by": "xinzhou", "type": "model",
                 "display_name": m, "created_at": stamp} for m in models]
        return {"object": "list", "data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}

    @app.post("/v1/chat/completions", summary="OpenAI chat completion", responses=ERROR_RESPONSES)
    async def chat_completions(body: openai_protocol.ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)

        async def respond(gen: Generation) -> dict[str, Any]:
            return openai_protocol.completion(body.model, gen.prompt_tokens, await generation.collect(gen))

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await run(request, lambda: generation.start(backend, openai_protocol.to_job(body, config)), body.stream,
                         respond, lambda gen: openai_protocol.stream(gen, body.model, include_usage))

    @app.post("/v1/completions", summary="OpenAI (legacy) text completion", responses=ERROR_RESPONSES)
    async def completions(body: completions_protocol.CompletionRequest, request: Request) -> Any:
        check_model(body.model)

        async def start() -> completions_protocol.CompletionRun:
            started = completions_protocol.CompletionRun(backend, body, config)
            await started.start()
            return started

        return await run(request, start, body.stream, completions_protocol.complete, completions_protocol.stream)

    @app.post("/v1/messages", summary="Anthropic message", responses=ERROR_RESPONSES)
    async def messages(body: anthropic_protocol.MessagesRequest, request: Request) -> Any:
        check_model(body.model)
        show = body.thinking is None or body.thinking.type != "disabled"

        async def respond(gen: Generation) -> dict[str, Any]:
            result = (await generation.collect(gen))[0]
            return anthropic_protocol.message(body.model, gen.prompt_tokens, result, show)

        return await run(request, lambda: generation.start(backend, anthropic_protocol.to_job(body, config)),
                         body.stream, respond, lambda gen: anthropic_protocol.stream(gen, body.model, show))

    @app.post("/v1/messages/count_tokens", summary="Anthropic token count of a Messages request's prompt",
              responses=ERROR_RESPONSES)
    async def count_tokens(body: anthropic_protocol.CountTokensRequest) -> dict[str, int]:
        check_model(body.model)
        with bad_request():
            prompt = anthropic_protocol.count_job(body, config).prompt()
        return {"input_tokens": await backend.count_tokens(prompt)}

    @app.get("/tokenizer_info", summary="The served tokenizer (vLLM's endpoint): eos token, chat template")
    async def tokenizer_info() -> dict[str, Any]:
        return tokenizer_api.info(await backend.tokenizer_info(), backend.max_model_len)

    @app.post("/tokenize", summary="Token ids of a prompt or a rendered chat (vLLM's endpoint)",
              responses=ERROR_RESPONSES)
    async def tokenize(body: tokenizer_api.TokenizeRequest) -> dict[str, Any]:
        if body.model is not None:
            check_model(body.model)
        with bad_request():
            ids = await backend.tokenize(tokenizer_api.text_of(body))
        return {"count": len(ids), "max_model_len": backend.max_model_len, "tokens": ids}

    @app.post("/detokenize", summary="The text of token ids (vLLM's endpoint)", responses=ERROR_RESPONSES)
    async def detokenize(body: tokenizer_api.DetokenizeRequest) -> dict[str, Any]:
        if body.model is not None:
            check_model(body.model)
        with bad_request():
            return {"prompt": await backend.detokenize(body.tokens)}

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The generated schema, with ``model`` narrowed to the served names (clients and fuzzers see them)."""
        if app.openapi_schema is None:
            schema = base_openapi()
            for name in ("ChatCompletionRequest", "CompletionRequest", "MessagesRequest", "CountTokensRequest"):
                schema["components"]["schemas"][name]["properties"]["model"]["enum"] = list(models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class Running(Protocol):
    """A started request (a chat :class:`Generation`, a :class:`~completions_protocol.CompletionRun`)."""

    async def aclose(self) -> None:
        """Abort whatever still runs (idempotent)."""


@contextlib.contextmanager
def bad_request() -> Iterator[None]:
    """A ``ValueError``/``TypeError`` raised inside (the request's own fault) becomes a 400 in the API's shape."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise APIError(400, str(e), code="invalid_request") from e


class EventStream(StreamingResponse):
    """An SSE response that, however it ends (done, failed, or cancelled because the client left, even before
    the first byte), aborts the request's sequences and frees its place in the gate."""

    def __init__(self, body: AsyncIterator[str], gen: Running, gate: Gate) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self.gen, self.gate = gen, gate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                with contextlib.suppress(Exception):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self.gen.aclose()
            finally:
                self.gate.leave()


async def _unless_disconnected(request: Request, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await ``work`` unless the client disconnects first (then cancel it: the caller aborts the sequences)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise APIError(499, "the client closed the connection")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)
