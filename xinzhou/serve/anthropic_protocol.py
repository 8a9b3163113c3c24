"""Anthropic Messages: request models, conversion to a :class:`ChatJob`, and the response and SSE event shapes.

Input: ``system`` (a string or text blocks), user and assistant messages whose content is a string or blocks
(``text``, ``thinking``, ``redacted_thinking``, ``tool_use``, ``tool_result``), ``tools`` (``input_schema``),
``tool_choice`` (``auto`` / ``any`` / ``tool`` / ``none``). A user message's ``tool_result`` blocks become tool
messages, not a user turn, so the thinking of the tool chain is kept in the prompt (M2's template drops thinking
before the last *user* message). Thinking blocks are accepted with or without a signature.

Output: ``thinking`` (with a signature: a hash of the thinking text, an integrity tag rather than a secret),
``text`` and ``tool_use`` blocks, in the order the model wrote them; ``stop_reason`` ``tool_use`` / ``end_turn``
/ ``max_tokens`` / ``stop_sequence``. M2 always thinks; ``thinking: {"type": "disabled"}`` leaves the thinking
blocks out of the response (the client then cannot send them back). Extensions: ``seed``, ``ignore_eos`` (vLLM's,
for benchmarks and load tests). Streams are the full event sequence:
``message_start``, ``content_block_start`` / ``content_block_delta`` (``thinking_delta``, ``signature_delta``,
``text_delta``, ``input_json_delta``) / ``content_block_stop``, ``message_delta``, ``message_stop``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xinzhou.chat.types import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from xinzhou.engine import SamplingParams
from xinzhou.serve.errors import APIError, error_body
from xinzhou.serve.generation import (
    ChatJob,
    ChoiceEnd,
    ChoiceResult,
    Generation,
    GenerationError,
    TextDelta,
    ToolCallDelta,
)
from xinzhou.serve.limits import ServerConfig
from xinzhou.serve.openai_protocol import NAME_PATTERN, SEED_RANGE

STOP_REASONS = {"tool_calls": "tool_use", "stop": "end_turn", "length": "max_tokens"}


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_In):
    type: Literal["text"]
    text: str


class ThinkingBlock(_In):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_In):
    type: Literal["redacted_thinking"]
    data: str = ""


class ToolUseBlock(_In):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_In):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class UnsupportedBlock(_In):
    type: Literal["image", "document", "search_result", "server_tool_use", "web_search_tool_result"]


Block = Annotated[TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock | ToolResultBlock | UnsupportedBlock,
                  Field(discriminator="type")]


class MessageIn(_In):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolIn(_In):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoiceIn(_In):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_In):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"] = "enabled"


class MessagesRequest(_In):
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=1 << 20)
    stop_sequences: list[str] | None = None
    stream: bool = False
    thinking: ThinkingConfig | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64, description="extension: a sampling seed")
    ignore_eos: bool = Field(False, description="extension (vLLM's): do not stop at the end-of-message token")


class CountTokensRequest(_In):
    """``POST /v1/messages/count_tokens``: the prompt part of a Messages request."""

    model: str
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingConfig | None = None


def count_job(req: CountTokensRequest, config: ServerConfig) -> ChatJob:
    """The chat whose rendered prompt a Messages request with these fields would send to the model."""
    fields = req.model_dump(exclude_none=True)
    return to_job(MessagesRequest(**fields, max_tokens=1), config)


# ------------------------------------------------------------------------------------------------ request


def _text(content: str | list[TextBlock] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(b.text for b in content)


def to_messages(req: MessagesRequest) -> list[Message]:
    """The conversation as xinzhou messages (tool_result blocks -> tool messages, placed first)."""
    out: list[Message] = []
    if req.system is not None:
        out.append(SystemMessage(_text(req.system)))
    names: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        blocks = [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        bad = next((b.type for b in blocks if isinstance(b, UnsupportedBlock)), None)
        if bad is not None:
            raise APIError(400, f"messages.{i}: content blocks of type {bad!r} are not supported", param=f"messages.{i}")
        if m.role == "assistant":
            msg = AssistantMessage()
            thinking = [b.thinking for b in blocks if isinstance(b, ThinkingBlock)]
            msg.reasoning_content = "".join(thinking) if thinking else None
            msg.content = "".join(b.text for b in blocks if isinstance(b, TextBlock))
            for b in blocks:
                if isinstance(b, ToolUseBlock):
                    names[b.id] = b.name
                    msg.tool_calls.append(ToolCall(b.name, dict(b.input), id=b.id))
            out.append(msg)
            continue
        for b in blocks:
            if isinstance(b, ToolResultBlock):
                text = _text(b.content)
                out.append(ToolMessage(f"Error: {text}" if b.is_error else text, b.tool_use_id, names.get(b.tool_use_id)))
        texts = [b.text for b in blocks if isinstance(b, TextBlock)]
        if texts or not any(isinstance(b, ToolResultBlock) for b in blocks):
            out.append(UserMessage("".join(texts)))
    return out


def to_job(req: MessagesRequest, config: ServerConfig) -> ChatJob:
    if req.max_tokens > config.max_tokens_limit:
        raise APIError(400, f"max_tokens is {req.max_tokens}; this server allows at most {config.max_tokens_limit}")
    choice = req.tool_choice
    tool_choice = {"auto": "auto", "any": "required", "none": "none", None: "auto"}.get(choice and choice.type, "")
    if choice is not None and choice.type == "tool":
        if not choice.name:
            raise APIError(400, "tool_choice of type 'tool' needs a 'name'")
        tool_choice = choice.name
    params = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        stop=req.stop_sequences or None,
        seed=None if req.seed is None else req.seed % SEED_RANGE,
        ignore_eos=req.ignore_eos,
    )
    tools = [ToolSpec(t.name, t.description, t.input_schema) for t in req.tools or []]
    parallel = not (choice is not None and choice.disable_parallel_tool_use)
    return ChatJob(to_messages(req), tools, tool_choice, params, 1, strict_max_tokens=True,
                   parallel_tool_calls=parallel)


# ----------------------------------------------------------------------------------------------- response


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def signature(thinking: str) -> str:
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def usage(prompt_tokens: int, end: ChoiceEnd | None) -> dict[str, int]:
    cached = end.cached_tokens if end else 0
    return {"input_tokens": prompt_tokens - cached, "output_tokens": end.completion_tokens if end else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def stop_fields(end: ChoiceEnd | None) -> dict[str, Any]:
    if end is not None and end.stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": end.stop_sequence}
    return {"stop_reason": STOP_REASONS[end.finish_reason] if end else "end_turn", "stop_sequence": None}


def message(model: str, prompt_tokens: int, r: ChoiceResult, show_thinking: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if r.reasoning and show_thinking:
        content.append({"type": "thinking", "thinking": r.reasoning, "signature": signature(r.reasoning)})
    if r.content:
        content.append({"type": "text", "text": r.content})
    content += [{"type": "tool_use", "id": tool_use_id(), "name": c.name, "input": c.arguments} for c in r.tool_calls]
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            **stop_fields(r.end), "usage": usage(prompt_tokens, r.end)}


def event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def stream(gen: Generation, model: str, show_thinking: bool) -> AsyncIterator[str]:
    """The SSE body; consecutive deltas of one kind share a content block, a tool call is a block of its own."""
    start = {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": gen.prompt_tokens, "output_tokens": 0}}
    yield event("message_start", {"message": start})
    index, open_kind, thinking = -1, None, []

    def close() -> list[str]:
        out = []
        if open_kind == "reasoning":
            sig = {"type": "signature_delta", "signature": signature("".join(thinking))}
            out.append(event("content_block_delta", {"index": index, "delta": sig}))
        if open_kind is not None:
            out.append(event("content_block_stop", {"index": index}))
        return out

    end: ChoiceEnd | None = None
    try:
        async for e in gen.events():
            if isinstance(e, TextDelta):
                if e.kind == "reasoning" and not show_thinking:
                    continue
                if open_kind != e.kind:
                    for s in close():
                        yield s
                    index, open_kind, thinking = index + 1, e.kind, []
                    block = {"type": "thinking", "thinking": "", "signature": ""} if e.kind == "reasoning" else \
                        {"type": "text", "text": ""}
                    yield event("content_block_start", {"index": index, "content_block": block})
                if e.kind == "reasoning":
                    thinking.append(e.text)
                    delta = {"type": "thinking_delta", "thinking": e.text}
                else:
                    delta = {"type": "text_delta", "text": e.text}
                yield event("content_block_delta", {"index": index, "delta": delta})
            elif isinstance(e, ChoiceEnd):
                end = e
            elif isinstance(e, ToolCallDelta):  # (logprobs are never asked for here: the API has none)
                for s in close():
                    yield s
                index, open_kind = index + 1, None
                block = {"type": "tool_use", "id": tool_use_id(), "name": e.call.name, "input": {}}
                yield event("content_block_start", {"index": index, "content_block": block})
                args = json.dumps(e.call.arguments, ensure_ascii=False)
                yield event("content_block_delta", {"index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": args}})
                yield event("content_block_stop", {"index": index})
    except GenerationError as err:
        yield event("error", {"error": error_body("/v1/messages", 500, f"generation failed: {err}")["error"]})
        return
    for s in close():
        yield s
    yield event("message_delta", {"delta": stop_fields(end), "usage": usage(gen.prompt_tokens, end)})
    yield event("message_stop", {})
