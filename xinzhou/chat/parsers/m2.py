"""Streaming parser for MiniMax-M2 model output: reasoning, content and typed tool calls.

The output starts inside `<think>` (the generation prompt ends with `<think>\\n`):

    {reasoning}\\n</think>\\n\\n{content}\\n<minimax:tool_call>\\n<invoke name="f">\\n
    <parameter name="k">v</parameter>\\n</invoke>\\n</minimax:tool_call>[e~[

Peers break on chunk boundaries, on a tag split across chunks, on `</parameter>` inside a string, on typed
values; this parser is one state machine that only decides what more input cannot change:
- reasoning and content stream as deltas; one newline before `</think>` / `<minimax:tool_call>` and up to two after
  `</think>` are format, not text (so `render_completion` output parses back exactly);
- a tool call is emitted whole at its `</invoke>`, its values typed by the tool's schema (`values.py`);
- a `</parameter>` ends a value only when the next non-space text is `<parameter` or `</invoke>`, so a string
  value may contain `</parameter>` or `<invoke` literally. The one thing M2's unescaped format cannot carry is a
  value containing `</parameter>` followed by optional whitespace and `<parameter` or `</invoke>`;
- malformed or truncated tool-call text never raises: it goes to content verbatim with a `ParseIssue`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from xinzhou.chat.parsers.events import (
    ContentDelta,
    ParseResult,
    ThinkingStream,
    collect,
)
from xinzhou.chat.parsers.values import convert_value, parameter_schema
from xinzhou.chat.template import EOS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from xinzhou.chat.types import ToolCall

_NAME = r"""\s*=\s*(?:"([^"<>\n]*)"|'([^'<>\n]*)'|([^\s"'<>]+))\s*>"""
_INVOKE_RE = re.compile(r"<invoke\s+name" + _NAME)
_PARAM_RE = re.compile(r"<parameter\s+name" + _NAME)
_PARAM_CLOSE, _INVOKE_CLOSE = "</parameter>", "</invoke>"
_MAX_TAG = 512  # a tag header longer than this is malformed, not incomplete
_CLOSED = object()
_WS_RE = re.compile(r"\s*")


class M2StreamParser(ThinkingStream):
    """`feed(chunk) -> events`, then `finish() -> events`. Events: ReasoningDelta, ContentDelta, ToolCallEvent,
    ParseIssue. With `tools`, values are typed by their schemas and unknown tool names are reported."""

    EOS = EOS
    BLOCK_OPEN = TOOL_CALL_OPEN

    def __init__(self, tools: Iterable[Any] | None = None, *, starts_in_think: bool = True) -> None:
        super().__init__(tools, starts_in_think=starts_in_think)
        self._pending = ""  # raw text of the tool-call block since the last complete call
        self._name = ""
        self._args: dict[str, Any] = {}
        self._param = ""
        self._scan = 0  # where to resume looking for </parameter> in the buffer

    def _open_block(self, raw: str) -> None:
        self._pending = raw
        self._state = "block"

    def _degrade(self, kind: str, detail: str) -> bool:
        """Give up on the current tool-call text: it goes to content, verbatim; parsing resumes as content."""
        self._issue(kind, detail)
        self._emit(ContentDelta(self._pending))
        self._pending, self._scan, self._state = "", 0, "content"
        return True

    def _tag(self, final: bool, expected: Sequence[str], where: str) -> str | None:
        """Skip whitespace, then return which of `expected` the buffer starts with; None = wait or degraded."""
        ws = len(self._buf) - len(self._buf.lstrip())
        self._pending += self._take(ws)
        buf = self._buf
        for tag in expected:
            if buf.startswith(tag):
                return tag
        if not final and any(tag.startswith(buf[: len(tag)]) for tag in expected):
            return None  # empty, or a prefix of an expected tag
        what = "the output ended" if not buf else f"unexpected {buf[0]!r}"  # (no more: chunking must not show)
        self._degrade("truncated_tool_call" if not buf else "malformed_tool_call", f"{what} {where}")
        return None

    def _header(self, final: bool, regex: re.Pattern[str], where: str) -> str | None:
        """Match `<invoke name="…">` / `<parameter name="…">` at the buffer start; None = wait or degraded."""
        m = regex.match(self._buf)
        if m is None:
            head = self._buf[:_MAX_TAG]
            if not final and ">" not in head and len(head) < _MAX_TAG:
                return None
            tag = head[: head.find(">") + 1] if ">" in head else head
            self._degrade("truncated_tool_call" if final and ">" not in head else "malformed_tool_call",
                          f"bad tag {tag[:40]!r} {where}")
            return None
        self._pending += self._take(m.end())
        return next(g for g in m.groups() if g is not None)

    def _child(self, final: bool, open_tag: str, regex: re.Pattern[str], close_tag: str, where: str) -> Any:
        """Between the children of an element: `_CLOSED` when `close_tag` was consumed, the name when a child's
        header was, None when waiting or degraded."""
        tag = self._tag(final, (open_tag, close_tag), where)
        if tag == close_tag:
            self._take(len(tag))
            return _CLOSED
        if tag is None:
            return None
        return self._header(final, regex, f'(expected {open_tag} name="…">)')

    def _block(self, final: bool) -> bool:
        s = self._state
        if s == "block":  # between invokes
            got = self._child(final, "<invoke", _INVOKE_RE, TOOL_CALL_CLOSE, f"inside {TOOL_CALL_OPEN}")
            if got is _CLOSED:
                self._pending, self._state = "", "content"
            elif got is not None:
                self._name, self._args, self._state = got, {}, "invoke"
        elif s == "invoke":  # between parameters
            got = self._child(final, "<parameter", _PARAM_RE, _INVOKE_CLOSE, f"inside <invoke name={self._name!r}>")
            if got is _CLOSED:
                self._finish_call()
            elif got is not None:
                self._param, self._scan, self._state = got, 0, "value"
        else:
            return self._value(final)
        return got is not None or self._state != s

    def _value(self, final: bool) -> bool:
        buf = self._buf
        e = buf.find(EOS, self._scan)  # once: the buffer does not change inside this loop
        while True:
            i = buf.find(_PARAM_CLOSE, self._scan)
            if e >= 0 and (i < 0 or e < i):
                return self._degrade("truncated_tool_call", f"end marker inside parameter {self._param!r}")
            if i < 0:
                if final:
                    return self._degrade("truncated_tool_call", f"the output ended inside parameter {self._param!r}")
                self._scan = max(0, len(buf) - len(_PARAM_CLOSE) + 1)
                return False
            ws = _WS_RE.match(buf, i + len(_PARAM_CLOSE)).end()  # type: ignore[union-attr]
            after = buf[ws : ws + len("<parameter")]  # enough to decide; slicing the rest would be quadratic
            if after.startswith("<parameter") or after.startswith(_INVOKE_CLOSE):
                break
            if not final and any(t.startswith(after) for t in ("<parameter", _INVOKE_CLOSE)):
                self._scan = i  # cannot tell yet whether this </parameter> closes the value
                return False
            if final and not after:
                break
            self._scan = i + 1  # a literal </parameter> inside the value
        raw = self._take(i)
        self._pending += raw + self._take(len(_PARAM_CLOSE))
        schema = parameter_schema((self._schemas or {}).get(self._name), self._param)
        value, problem = convert_value(raw, schema)
        if problem:
            self._issue("invalid_value", f"{self._name}.{self._param}: {problem}")
        if self._param in self._args:
            self._issue("duplicate_parameter", f"{self._name}.{self._param} given twice; the last value is kept")
        self._args[self._param] = value
        self._scan, self._state = 0, "invoke"
        return True

    def _finish_call(self) -> None:
        self._emit_call(ToolCall(self._name, self._args))
        self._pending, self._args, self._state = "", {}, "block"


def parse_m2(text: str, tools: Iterable[Any] | None = None, *, starts_in_think: bool = True) -> ParseResult:
    """Parse a complete M2 output (non-streaming); same result as streaming it in any chunks."""
    p = M2StreamParser(tools, starts_in_think=starts_in_think)
    return collect(p.feed(text) + p.finish())
