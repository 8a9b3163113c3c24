"""Typed chat messages and tool specs, and the one place where loose OpenAI-style dicts become them.

Clients send conversations in many shapes: `reasoning_content`, `reasoning` or `reasoning_details` for the
thinking, inline `<think>` in `content`, tool-call `arguments` as a JSON string or an object, list-of-parts
content. Interleaved thinking fails when any of these is silently dropped, so every shape is normalised here,
once, and the renderer, parsers and agent only ever see the canonical dataclasses below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")
# Where a message's reasoning may be given, in the order transformers' apply_chat_template looks.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@dataclass
class ToolCall:
    """One call of a tool. `arguments` is always a mapping (parsed from JSON when given as a string)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """OpenAI shape with `arguments` kept as a mapping (what chat templates need)."""
        d: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"id": self.id, **d} if self.id is not None else d


@dataclass
class SystemMessage:
    content: str = ""
    current_date: str | None = None
    current_location: str | None = None
    role: Literal["system"] = field(default="system", init=False)


@dataclass
class UserMessage:
    content: str
    role: Literal["user"] = field(default="user", init=False)


@dataclass
class AssistantMessage:
    """An assistant turn. With `reasoning_content=None`, inline `<think>…</think>` in `content` is split out when
    rendering, as M2's template does (`to_message` already splits it)."""

    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    role: Literal["assistant"] = field(default="assistant", init=False)


@dataclass
class ToolMessage:
    """A tool result. A list `content` renders one `<response>` per item (the M2 list form)."""

    content: str | list[str]
    tool_call_id: str | None = None
    name: str | None = None
    role: Literal["tool"] = field(default="tool", init=False)


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage
MessageLike = Message | Mapping[str, Any]


@dataclass
class ToolSpec:
    """A tool as the model sees it: a name, a description and an OpenAI function JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def function_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            d["description"] = self.description
        d["parameters"] = self.parameters
        return d

    def to_dict(self) -> dict[str, Any]:
        """OpenAI shape: `{"type": "function", "function": {...}}`."""
        return {"type": "function", "function": self.function_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToolSpec:
        """Accept the OpenAI wrapper `{"type": "function", "function": {...}}` or a bare function dict."""
        fn = d.get("function", d)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ValueError(f"a tool spec needs a string 'name' (bare or under 'function'), got {dict(d)!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise TypeError(f"tool {fn['name']!r}: 'parameters' must be a JSON schema object, got {params!r}")
        return cls(name=fn["name"], description=fn.get("description"), parameters=dict(params))


ToolLike = ToolSpec | Mapping[str, Any]


def to_tool_spec(tool: Any) -> ToolSpec:
    """A ToolSpec from a ToolSpec, an OpenAI tool dict, or anything with a `.spec()` (a registry Tool)."""
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, Mapping):
        return ToolSpec.from_dict(tool)
    if callable(getattr(tool, "spec", None)):
        return tool.spec()
    raise TypeError(f"expected a ToolSpec, an OpenAI tool dict or a registry Tool, got {type(tool).__name__}")


def tool_function_dict(tool: Any) -> dict[str, Any]:
    """The dict rendered inside `<tool>…</tool>`: the function object, unwrapped, keys in the caller's order."""
    if isinstance(tool, Mapping):
        fn = tool.get("function", tool)
        if not isinstance(fn, Mapping):
            raise TypeError(f"tool 'function' must be a mapping, got {fn!r}")
        return dict(fn)
    return to_tool_spec(tool).function_dict()


# ---------------------------------------------------------------------------------------------- normalisation


def content_text(content: Any) -> str:
    """Visible text of a content field: a string, None, or a list of parts (strings or `{"type": "text"}`)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
        return "".join(out)
    raise TypeError(f"message content must be a string, None or a list of parts, got {type(content).__name__}")


def split_inline_think(content: str) -> tuple[str | None, str]:
    """Split `<think>…</think>` out of content, exactly as the M2 template does; (None, content) if absent."""
    if "</think>" not in content:
        return None, content
    parts = content.split("</think>")
    return parts[0].strip("\n").split("<think>")[-1].strip("\n"), parts[-1].strip("\n")


def _reasoning_of(m: Mapping[str, Any]) -> str | None:
    value = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
    if isinstance(value, str):
        return value
    details = m.get("reasoning_details")
    if isinstance(details, (list, tuple)):
        texts = [d["text"] for d in details if isinstance(d, Mapping) and isinstance(d.get("text"), str)]
        if texts:
            return "".join(texts)
    return None


def parse_arguments(arguments: Any, name: str = "?") -> dict[str, Any]:
    """Tool-call arguments as a dict: a mapping as is, a JSON-object string parsed, None as {}."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"tool call {name!r}: arguments are not valid JSON ({e}): {arguments[:200]!r}") from e
    if not isinstance(arguments, Mapping):
        raise ValueError(f"tool call {name!r}: arguments must be a JSON object, got {type(arguments).__name__}")
    return dict(arguments)


def to_tool_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    """A ToolCall from the OpenAI shape `{"id", "function": {"name", "arguments"}}` or a flat `{"name", ...}`."""
    if isinstance(call, ToolCall):
        return call
    if not isinstance(call, Mapping):
        raise TypeError(f"a tool call must be a ToolCall or a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool call needs a non-empty string name, got {dict(call)!r}")
    return ToolCall(name=name, arguments=parse_arguments(fn.get("arguments"), name), id=call.get("id"))


def _tool_content(content: Any) -> str | list[str]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise TypeError(f"tool message content must be a string or a list, got {type(content).__name__}")
    items = []
    for item in content:
        if isinstance(item, Mapping) and "output" in item:
            item = item["output"]
        elif isinstance(item, Mapping) and item.get("type") == "text" and "text" in item:
            item = item["text"]
        items.append(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False))
    return items


def to_message(m: MessageLike) -> Message:
    """Normalise one message (a dataclass or an OpenAI-style dict) to its canonical dataclass."""
    if isinstance(m, (SystemMessage, UserMessage, AssistantMessage, ToolMessage)):
        return m
    if not isinstance(m, Mapping):
        raise TypeError(f"a message must be a dict or a message dataclass, got {type(m).__name__}")
    role = m.get("role")
    if role == "user":
        return UserMessage(content_text(m.get("content")))
    if role == "system":
        return SystemMessage(content_text(m.get("content")), m.get("current_date"), m.get("current_location"))
    if role == "assistant":
        content = content_text(m.get("content"))
        reasoning = _reasoning_of(m)
        if reasoning is None:
            reasoning, content = split_inline_think(content)
        calls = [to_tool_call(c) for c in (m.get("tool_calls") or [])]
        return AssistantMessage(content=content, reasoning_content=reasoning, tool_calls=calls)
    if role == "tool":
        return ToolMessage(_tool_content(m.get("content")), m.get("tool_call_id"), m.get("name"))
    raise ValueError(f"unknown message role {role!r}; valid roles: {', '.join(ROLES)}")


def to_messages(messages: Iterable[MessageLike]) -> list[Message]:
    return [to_message(m) for m in messages]


def message_to_dict(m: Message) -> dict[str, Any]:
    """The canonical OpenAI-style dict (tool arguments as mappings); None fields are left out."""
    if isinstance(m, (UserMessage, SystemMessage)):
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if isinstance(m, SystemMessage):
            d.update({k: v for k, v in (("current_date", m.current_date), ("current_location", m.current_location))
                      if v is not None})
        return d
    if isinstance(m, AssistantMessage):
        d = {"role": "assistant", "content": m.content}
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in m.tool_calls]
        return d
    if isinstance(m, ToolMessage):
        d = {"role": "tool", "content": list(m.content) if isinstance(m.content, list) else m.content}
        d.update({k: v for k, v in (("tool_call_id", m.tool_call_id), ("name", m.name)) if v is not None})
        return d
    raise TypeError(f"not a message dataclass: {type(m).__name__}")


def messages_to_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [message_to_dict(m) for m in messages]
