"""Terminal rendering of agent events, for `xinzhou chat`: thinking dimmed, tool calls and results marked.

It is a plain callable, so it plugs into `Agent(on_event=ConsolePrinter())` and, later, into a streaming engine
loop; it writes ANSI colours only to a terminal (or when asked).
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from xinzhou.chat.agent import AgentEvent, ToolResultEvent
from xinzhou.chat.parsers.events import (
    ContentDelta,
    ParseIssue,
    ReasoningDelta,
    ToolCallEvent,
)

DIM, CYAN, YELLOW, RED, RESET = "\x1b[2m", "\x1b[36m", "\x1b[33m", "\x1b[31m", "\x1b[0m"


class ConsolePrinter:
    """Print events as they arrive. Tool results longer than `max_result_chars` are shortened."""

    def __init__(self, out: TextIO | None = None, *, color: bool | None = None, max_result_chars: int = 2000):
        self.out = out if out is not None else sys.stdout
        self.color = self.out.isatty() if color is None else color
        self.max_result_chars = max_result_chars
        self._mode = ""  # "reasoning" | "content" | "" (at the start of a line)

    def _write(self, text: str, style: str = "") -> None:
        self.out.write(f"{style}{text}{RESET}" if self.color and style else text)
        self.out.flush()

    def _switch(self, mode: str) -> None:
        if self._mode and self._mode != mode:
            self._write("\n")
        self._mode = mode

    def __call__(self, event: AgentEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self._switch("reasoning")
            self._write(event.text, DIM)
        elif isinstance(event, ContentDelta):
            self._switch("content")
            self._write(event.text)
        elif isinstance(event, ToolCallEvent):
            self._switch("")
            args = json.dumps(event.call.arguments, ensure_ascii=False)
            self._write(f"→ {event.call.name}({args})\n", CYAN)
        elif isinstance(event, ToolResultEvent):
            self._switch("")
            text = event.result.content
            if len(text) > self.max_result_chars:
                text = text[: self.max_result_chars] + f"… [{len(event.result.content)} chars]"
            self._write(f"← {text}\n", RED if event.result.is_error else YELLOW)
        elif isinstance(event, ParseIssue):
            self._switch("")
            self._write(f"[{event.kind}: {event.detail}]\n", RED)
