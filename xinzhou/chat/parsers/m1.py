"""Streaming parser for the legacy MiniMax-M1 output format: `<think>` reasoning, then content, with tool calls as
JSON lines in a `<tool_calls>` block:

    <think>\\n{reasoning}\\n</think>\\n\\n{content}\\n<tool_calls>\\n{"name": "f", "arguments": {...}}\\n</tool_calls>

It exists because M2 served with the M1 template emits this format (MiniMax-M2 issue #14), and to read M1-era
data. Like vLLM's `minimax` parser it ignores `<tool_calls>` inside `<think>`, accepts `arguments` as an object or
a JSON string, and trims a doubled trailing `}`. A line that is not a call goes to content with a `ParseIssue`.
The model writes the opening `<think>` itself, so `starts_in_think` defaults to False here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from xinzhou.chat.parsers.events import (
    ContentDelta,
    ParseResult,
    ThinkingStream,
    collect,
)
from xinzhou.chat.types import ToolCall, parse_arguments

M1_EOS = "<end_of_sentence>"
M1_CALLS_OPEN, M1_CALLS_CLOSE = "<tool_calls>", "</tool_calls>"


def parse_m1_line(line: str) -> ToolCall | None:
    """One JSON line `{"name": …, "arguments": …}` as a ToolCall, or None when it is not one."""
    s = line.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return None
    while True:
        try:
            obj = json.loads(s)
            break
        except (ValueError, RecursionError):
            if not s.endswith("}}"):
                return None
            s = s[:-1]  # models sometimes double the closing brace
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    try:
        return ToolCall(obj["name"], parse_arguments(obj.get("arguments"), obj["name"]))
    except ValueError:
        return None


class M1StreamParser(ThinkingStream):
    """`feed(chunk) -> events`, then `finish() -> events`; calls are emitted when their block closes."""

    EOS = M1_EOS
    BLOCK_OPEN = M1_CALLS_OPEN

    def __init__(self, tools: Iterable[Any] | None = None, *, starts_in_think: bool = False) -> None:
        super().__init__(tools, starts_in_think=starts_in_think)
        self._pending = ""

    def _open_block(self, raw: str) -> None:
        self._pending = raw
        self._state = "calls"

    def _block(self, final: bool) -> bool:
        i = self._buf.find(M1_CALLS_CLOSE)
        if i < 0:
            if not final:
                return False
            self._issue("truncated_tool_call", f"the output ended inside {M1_CALLS_OPEN}")
            self._emit(ContentDelta(self._pending + self._take(len(self._buf))))
            self._state = "end"
            return True
        body = self._take(i)
        self._take(len(M1_CALLS_CLOSE))
        for line in body.split("\n"):
            if not line.strip():
                continue
            call = parse_m1_line(line)
            if call is None:
                self._issue("malformed_tool_call", f"not a JSON tool call: {line.strip()[:60]!r}")
                self._emit(ContentDelta(line))
            else:
                self._emit_call(call)
        self._pending, self._state = "", "content"
        return True


def parse_m1(text: str, tools: Iterable[Any] | None = None, *, starts_in_think: bool = False) -> ParseResult:
    """Parse a complete M1 output (non-streaming)."""
    p = M1StreamParser(tools, starts_in_think=starts_in_think)
    return collect(p.feed(text) + p.finish())
