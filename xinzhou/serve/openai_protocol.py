"""OpenAI Chat Completions: request models, conversion to a :class:`ChatJob`, and the response and stream shapes.

Reasoning goes out three ways at once, because clients read different fields: ``reasoning_content`` (DeepSeek,
SGLang, vLLM <= 0.10), ``reasoning`` (vLLM >= 0.11, OpenRouter) and ``reasoning_details`` as
``[{"type": "reasoning.text", "text", "index"}]`` (OpenRouter, MiniMax's ``reasoning_split``); streamed deltas are
incremental in all three. Prior thinking comes back in any of them, or inline as ``<think>…</think>`` in
``content``; :func:`xinzhou.chat.to_message` reads every form, and the template keeps it for the current tool
chain. Tool-call arguments are JSON strings of values typed by the tool's schema (``"02134"`` stays a string for a
string parameter). A streamed tool call is two deltas: ``index``, ``id``, ``type`` and ``name`` with empty
arguments, then the arguments.

``logprobs`` / ``top_logprobs`` (up to 20) return the raw model's fp32 logprobs of every sampled token, thinking and
tool-call markup and the end-of-message token included (the text of all three fields comes from them), in
``choices[i].logprobs.content`` (OpenAI's shape: ``token``, ``logprob``, ``bytes``, ``top_logprobs``); streamed,
each engine step's tokens arrive in a chunk of their own with an empty delta, before the text they produce.

Extensions accepted besides the standard fields: ``top_k``, ``ignore_eos`` (vLLM's, for benchmarks),
``reasoning_split`` (MiniMax's; reasoning is always split). Other unknown fields are ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xinzhou.chat.types import ToolSpec, to_messages
from xinzhou.engine import SamplingParams
from xinzhou.serve.errors import APIError, error_body
from xinzhou.serve.generation import (
    ChatJob,
    ChoiceEnd,
    ChoiceResult,
    Generation,
    GenerationError,
    LogprobsDelta,
    TextDelta,
    ToolCallDelta,
)
from xinzhou.serve.limits import ServerConfig

SEED_RANGE = 1 << 62  # the engine seeds torch generators; seeds are taken modulo this (n > 1 adds to them)
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_In):
    type: str = Field(description="only 'text' parts are supported")
    text: str | None = None


class ReasoningDetail(_In):
    type: str = "reasoning.text"
    text: str | None = None


class FunctionCall(_In):
    name: str
    arguments: str | dict[str, Any] = Field(default="{}", description="a JSON object (string or object)")


class ToolCallIn(_In):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    reasoning_details: list[ReasoningDetail] | None = None


class FunctionDef(_In):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolIn(_In):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(_In):
    name: str


class NamedToolChoice(_In):
    type: Literal["function"] = "function"
    function: FunctionName


class StreamOptions(_In):
    include_usage: bool = False


class ChatCompletionRequest(_In):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, le=1 << 20, description="extension: 0 or -1 keeps all tokens")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    ignore_eos: bool = Field(False, description="extension: do not stop at the end-of-message token")


# ------------------------------------------------------------------------------------------------ request


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the dicts :func:`xinzhou.chat.to_message` reads (developer -> system; text parts only)."""
    out = []
    for i, m in enumerate(messages):
        d = m.model_dump(exclude_none=True)
        if d["role"] == "developer":
            d["role"] = "system"
        if isinstance(m.content, list):
            bad = next((p.type for p in m.content if p.type != "text"), None)
            if bad is not None:
                raise APIError(400, f"messages.{i}.content: content parts of type {bad!r} are not supported (only "
                               "'text')", param=f"messages.{i}.content")
            d["content"] = "".join(p.text or "" for p in m.content)
        out.append(d)
    return out


def to_job(req: ChatCompletionRequest, config: ServerConfig) -> ChatJob:
    """Validate and convert (``ValueError``/``APIError`` for what the request gets wrong)."""
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None and max_tokens > config.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {config.max_tokens_limit}",
                       param="max_tokens")
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    if req.n > config.max_n:
        raise APIError(400, f"n is {req.n}; this server allows at most {config.max_n}", param="n")
    choice = req.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    params = SamplingParams(
        max_tokens=max_tokens or config.default_max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(0, req.top_k or 0),
        stop=stop or None,
        seed=None if req.seed is None else req.seed % SEED_RANGE,
        ignore_eos=req.ignore_eos,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs or 0,
    )
    tools = [ToolSpec(t.function.name, t.function.description,
                      t.function.parameters or {"type": "object", "properties": {}}) for t in req.tools or []]
    return ChatJob(to_messages(message_dicts(req.messages)), tools, choice, params, req.n,
                   strict_max_tokens=max_tokens is not None, parallel_tool_calls=req.parallel_tool_calls is not False)


# ----------------------------------------------------------------------------------------------- response


def new_ids() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def reasoning_fields(text: str) -> dict[str, Any]:
    return {"reasoning_content": text, "reasoning": text,
            "reasoning_details": [{"type": "reasoning.text", "text": text, "index": 0}]}


def usage(prompt_tokens: int, ends: list[ChoiceEnd]) -> dict[str, Any]:
    completion = sum(e.completion_tokens for e in ends)
    cached = max((e.cached_tokens for e in ends), default=0)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}


def completion(model: str, prompt_tokens: int, results: list[ChoiceResult]) -> dict[str, Any]:
    cid, created = new_ids()
    choices = []
    for r in results:
        message: dict[str, Any] = {"role": "assistant", "content": r.content if r.content or not r.tool_calls else None}
        if r.reasoning:
            message.update(reasoning_fields(r.reasoning))
        if r.tool_calls:
            message["tool_calls"] = [{"id": call_id(), "type": "function", "function": {
                "name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in r.tool_calls]
        logprobs = None if r.logprobs is None else {"content": r.logprobs, "refusal": None}
        choices.append({"index": r.index, "message": message, "logprobs": logprobs,
                        "finish_reason": r.end.finish_reason if r.end else "stop"})
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": usage(prompt_tokens, [r.end for r in results if r.end])}


def sse(data: dict[str, Any] | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {body}\n\n"


async def stream(gen: Generation, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body: a role delta per choice, text and tool-call deltas, a finish chunk per choice, the usage
    chunk (``include_usage``), ``[DONE]``. A failing sequence ends the stream with an ``error`` event."""
    cid, created = new_ids()

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: list | None = None) -> str:
        lp = None if logprobs is None else {"content": logprobs, "refusal": None}
        return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]})

    for i in range(gen.job.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    calls = [0] * gen.job.n
    ends: list[ChoiceEnd] = []
    try:
        async for e in gen.events():
            if isinstance(e, LogprobsDelta):
                yield chunk(e.index, {}, logprobs=e.content)
            elif isinstance(e, TextDelta):
                yield chunk(e.index, reasoning_fields(e.text) if e.kind == "reasoning" else {"content": e.text})
            elif isinstance(e, ToolCallDelta):
                k = calls[e.index]
                calls[e.index] += 1
                head = {"index": k, "id": call_id(), "type": "function",
                        "function": {"name": e.call.name, "arguments": ""}}
                yield chunk(e.index, {"tool_calls": [head]})
                args = json.dumps(e.call.arguments, ensure_ascii=False)
                yield chunk(e.index, {"tool_calls": [{"index": k, "function": {"arguments": args}}]})
            else:
                ends.append(e)
                yield chunk(e.index, {}, e.finish_reason)
    except GenerationError as err:
        yield sse(error_body("/v1/chat/completions", 500, f"generation failed: {err}"))
    else:
        if include_usage:
            yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage(gen.prompt_tokens, ends)})
    yield sse("[DONE]")
