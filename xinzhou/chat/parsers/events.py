"""Events that streaming parsers emit, the parse result they add up to, and the scanning base they share.

Every parser is a state machine over a text buffer that consumes a prefix only when the decision cannot change
with more input, and otherwise waits (`finish()` resolves what is left). That is why feeding any split of an
output yields the same events as feeding it whole, up to how text deltas are cut: `coalesce(events)` is equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xinzhou.chat.types import AssistantMessage, ToolCall, to_tool_spec


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallEvent:
    call: ToolCall


@dataclass
class ParseIssue:
    """Something incomplete or malformed; the text involved went to content. `kind` is one of ISSUE_KINDS."""

    kind: str
    detail: str


ISSUE_KINDS = (
    "unclosed_reasoning",  # the output ended (or hit the end marker) inside <think>
    "truncated_tool_call",  # the output ended inside a tool-call block
    "malformed_tool_call",  # unexpected text inside a tool-call block
    "unknown_tool",  # a call names a tool that is not in the tool list
    "invalid_value",  # a parameter value does not fit its schema (kept as parsed JSON or raw text)
    "duplicate_parameter",  # a parameter given twice (the last wins)
    "trailing_text",  # non-whitespace text after the end-of-message marker (ignored)
)

Event = ReasoningDelta | ContentDelta | ToolCallEvent | ParseIssue


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent deltas of one kind: the chunking-independent form of an event stream."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, (ReasoningDelta, ContentDelta)) and out and type(out[-1]) is type(e):
            out[-1] = type(e)(out[-1].text + e.text)  # type: ignore[union-attr]
        else:
            out.append(e)
    return out


@dataclass
class ParseResult:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    issues: list[ParseIssue] = field(default_factory=list)

    @property
    def message(self) -> AssistantMessage:
        return AssistantMessage(
            content=self.content, reasoning_content=self.reasoning or None, tool_calls=list(self.tool_calls)
        )


def collect(events: Iterable[Event]) -> ParseResult:
    """Add an event stream up into a ParseResult."""
    r = ParseResult()
    for e in events:
        if isinstance(e, ReasoningDelta):
            r.reasoning += e.text
        elif isinstance(e, ContentDelta):
            r.content += e.text
        elif isinstance(e, ToolCallEvent):
            r.tool_calls.append(e.call)
        else:
            r.issues.append(e)
    return r


def tool_schemas(tools: Iterable[Any] | None) -> dict[str, Any] | None:
    """name -> parameters schema, from ToolSpecs, OpenAI tool dicts or registry Tools (None: no tool list).

    A tool dict whose `parameters` is not an object is kept with that schema as it is (values are then typed best
    effort, see `values.py`) rather than rejected: a sloppy schema must not stop the output from being parsed."""
    if tools is None:
        return None
    schemas: dict[str, Any] = {}
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str) and not isinstance(
                fn.get("parameters") or {}, Mapping):
            schemas[fn["name"]] = fn["parameters"]
        else:
            spec = to_tool_spec(tool)
            schemas[spec.name] = spec.parameters
    return schemas


def held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers` (text to hold back)."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class ThinkingStream:
    """Base of the streaming parsers: reasoning, then content, until a tool-call block or the end marker.

    States: "start" (an optional re-emitted `<think>`), "reasoning", "after_think" (the blank line after
    `</think>`), "content", "end"; subclasses add the states of their tool-call block and implement `_block`.
    """

    EOS = ""  # the end-of-message marker
    BLOCK_OPEN = ""  # the tool-call block opener

    def __init__(self, tools: Iterable[Any] | None = None, *, starts_in_think: bool = True) -> None:
        self._schemas = tool_schemas(tools)
        self._buf = ""
        self._state = "start"
        self._starts_in_think = starts_in_think
        self._events: list[Event] = []
        self._finished = False
        self._trailing_reported = False

    # -- public API
    def feed(self, chunk: str) -> list[Event]:
        """Consume more model output; returns the events it completes."""
        if self._finished:
            raise ValueError("feed() after finish(): create a new parser for a new output")
        if not isinstance(chunk, str):
            raise TypeError(f"feed() takes text, got {type(chunk).__name__}")
        self._buf += chunk
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """The output is complete: flush held text and report anything left incomplete."""
        if self._finished:
            return []
        events = self._run(final=True)
        self._finished = True
        return events

    # -- machinery
    def _emit(self, event: Event) -> None:
        if not isinstance(event, (ReasoningDelta, ContentDelta)) or event.text:
            self._events.append(event)

    def _issue(self, kind: str, detail: str) -> None:
        assert kind in ISSUE_KINDS, kind
        self._emit(ParseIssue(kind, detail))

    def _emit_call(self, call: ToolCall) -> None:
        if self._schemas is not None and call.name not in self._schemas:
            known = ", ".join(sorted(self._schemas)) or "none"
            self._issue("unknown_tool", f"{call.name!r} is not a known tool (known: {known})")
        self._emit(ToolCallEvent(call))

    def _take(self, n: int) -> str:
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _run(self, *, final: bool) -> list[Event]:
        while self._step(final):
            pass
        events, self._events = self._events, []
        return events

    def _step(self, final: bool) -> bool:
        """Advance once; False when nothing more can be decided without more input."""
        s, buf = self._state, self._buf
        if s == "start":
            if not final and len(buf) <= len("<think>") and "<think>".startswith(buf):
                return False  # might be a re-emitted opener (or "<think>" waiting for its newline)
            if buf.startswith("<think>"):
                self._take(len("<think>\n") if buf.startswith("<think>\n") else len("<think>"))
                self._state = "reasoning"
            else:
                self._state = "reasoning" if self._starts_in_think else "content"
            return True
        if s == "reasoning":
            return self._text_state(final, ReasoningDelta, ("</think>",), "unclosed_reasoning")
        if s == "after_think":
            if not final and buf in ("", "\n"):
                return False
            self._take(2 if buf.startswith("\n\n") else 1 if buf.startswith("\n") else 0)
            self._state = "content"
            return True
        if s == "content":
            return self._text_state(final, ContentDelta, (self.BLOCK_OPEN,), None)
        if s == "end":
            if buf.strip() and not self._trailing_reported:
                self._trailing_reported = True
                self._issue("trailing_text", f"text after the end-of-message marker {self.EOS} was ignored")
            self._buf = ""
            return False
        return self._block(final)

    def _text_state(self, final: bool, kind: type, openers: tuple[str, ...], unclosed: str | None) -> bool:
        """Emit text up to the first opener (one newline before it is format, not text) or the end marker."""
        buf = self._buf
        hits = [(i, m) for m in (*openers, self.EOS) if (i := buf.find(m)) >= 0]
        if hits:
            i, marker = min(hits)
            text = self._take(i)
            self._take(len(marker))
            stripped = marker != self.EOS and text.endswith("\n")
            self._emit(kind(text[:-1] if stripped else text))
            if marker == self.EOS:
                if unclosed:
                    self._issue(unclosed, f"the end marker {self.EOS} came before {openers[0]}")
                self._state = "end"
            else:
                self._on_open(marker, "\n" if stripped else "")
            return True
        hold = 0 if final else held_suffix(buf, tuple(f"\n{m}" for m in openers) + openers + (self.EOS,))
        self._emit(kind(self._take(len(buf) - hold)))
        if final:
            if unclosed:
                self._issue(unclosed, f"the output ended before {openers[0]}")
            self._state = "end"
        return final

    def _on_open(self, marker: str, newline: str) -> None:
        """An opener was consumed in a text state (`newline` is the newline stripped before it)."""
        if marker == "</think>":
            self._state = "after_think"
        else:
            self._open_block(newline + marker)

    def _open_block(self, raw: str) -> None:
        raise NotImplementedError

    def _block(self, final: bool) -> bool:
        raise NotImplementedError
