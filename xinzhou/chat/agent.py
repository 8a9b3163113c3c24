"""The interleaved-thinking agent loop: generate, parse, run the tool calls, append the results, repeat.

The loop keeps the prompt append-only: the prompt of step n+1 is the prompt of step n, the text the model
generated (up to its end marker), the tool results and a new generation prompt. Nothing is re-rendered, so the
current chain's thinking stays in the prompt exactly as generated, and an engine that reuses the state of a
shared prefix prefills only the new tokens. (`keep="none"` drops thinking between steps by definition, so there
the prompt is re-rendered each step and only the common prefix is reused.) The prompt is a `MarkedText` and is
extended with `+`, which keeps its marks: tool results stay plain text for the engine's tokenizer, so a tool that
prints `[e~[` or `]~b]` cannot end or forge a turn; the model's own output is appended as trusted text.

`LLM` is the small interface the loop needs; the engine's `LLM` class and any test stand-in satisfy it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from xinzhou.chat.parsers.events import Event, ParseIssue, collect
from xinzhou.chat.parsers.m2 import M2StreamParser
from xinzhou.chat.template import (
    EOS,
    GENERATION_PROMPT,
    KEEP_MODES,
    Keep,
    render,
    render_tool_results,
)
from xinzhou.chat.tools.registry import Tool, ToolRegistry, ToolResult
from xinzhou.chat.types import (
    AssistantMessage,
    Message,
    MessageLike,
    ToolCall,
    ToolMessage,
    to_messages,
)


class GenerationOutput(Protocol):
    text: str
    finish_reason: str  # "stop" (end marker or stop string), "length" (token limit), ...


class LLM(Protocol):
    """Anything that completes prompts: one output per prompt, in order. `params` is passed through untouched."""

    def generate(self, prompts: list[str], params: Any = None) -> Sequence[GenerationOutput]: ...


@dataclass
class ToolResultEvent:
    """Emitted to `on_event` after a tool ran."""

    call: ToolCall
    result: ToolResult


AgentEvent = Event | ToolResultEvent


@dataclass
class AgentStep:
    prompt: str
    text: str  # what the model generated, cut after the end marker
    finish_reason: str
    message: AssistantMessage
    tool_messages: list[ToolMessage] = field(default_factory=list)
    issues: list[ParseIssue] = field(default_factory=list)


@dataclass
class AgentResult:
    messages: list[Message]  # the whole transcript: the input, then every assistant turn (with reasoning) and result
    steps: list[AgentStep]
    stop_reason: Literal["final", "max_steps", "length"]

    @property
    def answer(self) -> str:
        """The content of the last assistant turn."""
        last = next((m for m in reversed(self.messages) if isinstance(m, AssistantMessage)), None)
        return last.content if last is not None else ""


class Agent:
    """`Agent(llm, tools, keep="chain").run(messages)` -> AgentResult.

    `tools` is a ToolRegistry or an iterable of registry Tools / typed functions. `on_event` receives the parser's
    events for each step (reasoning and content deltas, tool calls, issues) and a ToolResultEvent per tool run.
    """

    def __init__(
        self,
        llm: LLM,
        tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] = (),
        keep: Keep = "chain",
        *,
        max_steps: int = 8,
        params: Any = None,
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> None:
        if keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {', '.join(map(repr, KEEP_MODES))}, got {keep!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.llm = llm
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.keep = keep
        self.max_steps = max_steps
        self.params = params
        self.on_event = on_event

    def _notify(self, event: AgentEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _generate(self, prompt: str) -> tuple[str, str]:
        outputs = self.llm.generate([prompt], self.params)
        if len(outputs) != 1:
            raise ValueError(f"llm.generate returned {len(outputs)} outputs for 1 prompt")
        text, reason = outputs[0].text, outputs[0].finish_reason
        end = text.find(EOS)
        return (text[: end + len(EOS)] if end >= 0 else text), reason

    def run(self, messages: Sequence[MessageLike]) -> AgentResult:
        transcript = to_messages(messages)
        specs = self.tools.specs()
        n_calls = sum(len(m.tool_calls) for m in transcript if isinstance(m, AssistantMessage))
        prompt = render(transcript, specs, add_generation_prompt=True, keep=self.keep)
        steps: list[AgentStep] = []
        for _ in range(self.max_steps):
            text, reason = self._generate(prompt)
            parser = M2StreamParser(specs)
            events = parser.feed(text) + parser.finish()
            for e in events:
                self._notify(e)
            parsed = collect(events)
            calls = []
            for c in parsed.tool_calls:
                calls.append(ToolCall(c.name, c.arguments, id=f"call_{n_calls}"))
                n_calls += 1
            msg = AssistantMessage(parsed.content, parsed.reasoning or None, calls)
            step = AgentStep(prompt, text, reason, msg, issues=parsed.issues)
            steps.append(step)
            transcript.append(msg)
            if reason == "length":
                return AgentResult(transcript, steps, "length")
            if not calls:
                return AgentResult(transcript, steps, "final")
            for call in calls:
                result = self.tools.call(call.name, call.arguments)
                self._notify(ToolResultEvent(call, result))
                step.tool_messages.append(ToolMessage(result.content, tool_call_id=call.id, name=call.name))
            transcript.extend(step.tool_messages)
            if self.keep == "none":
                prompt = render(transcript, specs, add_generation_prompt=True, keep="none")
            else:
                ended = text if text.endswith(EOS) else text + EOS
                prompt = prompt + ended + "\n" + render_tool_results(step.tool_messages) + GENERATION_PROMPT
        return AgentResult(transcript, steps, "max_steps")
