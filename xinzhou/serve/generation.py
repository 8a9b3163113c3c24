"""One chat request, from messages to parsed choice events, shared by the OpenAI and Anthropic endpoints.

The protocols differ only in their shapes; everything that decides *what* is generated lives here, once:
rendering with the M2 template (``keep="chain"``, so the current tool chain's thinking is in the prompt and the
prompt stays append-only for the engine's state reuse), ``n`` sequences with distinct seeds, ``tool_choice``, and
streaming each sequence's text through :class:`~xinzhou.chat.M2StreamParser` (the output starts inside
``<think>``) into :class:`TextDelta` / :class:`ToolCallDelta` / :class:`ChoiceEnd` events.

``tool_choice``:

- ``"auto"``: tools are offered; the model decides.
- ``"none"``: tools are not offered; if the model writes a call anyway it is returned as text, never as a call.
- ``"required"`` / a tool name: enforced. The model thinks freely until ``</think>``; then the server writes
  ``<minimax:tool_call>\\n<invoke name="`` (required) or the whole ``<invoke name="NAME">`` header (named) as if the
  model had, and the model continues from there (a second engine request whose prompt extends the first, so the
  engine's prefix cache makes it cheap). If the model ends before closing its thinking, what it produced is
  returned as it is (no call).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from xinzhou.chat import ContentDelta, M2StreamParser, ReasoningDelta, ToolCallEvent, render
from xinzhou.chat.template import THINK_CLOSE, TOOL_CALL_OPEN, render_tool_calls
from xinzhou.chat.types import Message, ToolCall, ToolSpec
from xinzhou.engine import SamplingParams
from xinzhou.serve.backend import Backend, Chunk, Stream

ToolChoice = Literal["auto", "none", "required"] | str  # or the name of a tool


@dataclass
class ChatJob:
    """A chat request in protocol-neutral form (built by the protocol modules)."""

    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    strict_max_tokens: bool = False  # the client chose max_tokens: prompt + max_tokens must fit the context
    parallel_tool_calls: bool = True

    def __post_init__(self) -> None:
        for t in self.tools:
            check_schema(t.parameters, f"tool {t.name!r}: parameters")
        names = [t.name for t in self.tools]
        if self.tool_choice not in ("auto", "none"):
            if not self.tools:
                raise ValueError(f"tool_choice {self.tool_choice!r} needs at least one tool in 'tools'")
            if self.tool_choice != "required" and self.tool_choice not in names:
                raise ValueError(f"tool_choice names the tool {self.tool_choice!r}, which is not in 'tools' "
                                 f"(tools: {names})")

    def prompt(self) -> str:
        """The M2 prompt (raises ``ValueError`` for conversations the template rejects)."""
        offered = [] if self.tool_choice == "none" else self.tools
        return render(self.messages, offered or None, add_generation_prompt=True, keep="chain")

    def forced_call_prefix(self) -> str | None:
        """What the server writes after ``</think>`` to enforce ``tool_choice`` (None: nothing)."""
        if self.tool_choice in ("auto", "none"):
            return None
        invoke = '<invoke name="' if self.tool_choice == "required" else f'<invoke name="{self.tool_choice}">\n'
        return f"{THINK_CLOSE}\n\n\n{TOOL_CALL_OPEN}\n{invoke}"


def check_schema(schema: object, where: str) -> None:
    """Reject JSON schemas whose structure is malformed (the argument parser reads ``type``, ``enum``,
    ``properties`` and the combinators); ``ValueError`` names the place."""
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a JSON schema must be an object, got {type(schema).__name__}")
    kinds = schema.get("type")
    if kinds is not None and not (isinstance(kinds, str) or (isinstance(kinds, list)
                                                             and all(isinstance(k, str) for k in kinds))):
        raise ValueError(f"{where}.type: must be a string or a list of strings")
    for key in ("enum", "required"):
        if key in schema and not isinstance(schema[key], list):
            raise ValueError(f"{where}.{key}: must be an array")
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                raise ValueError(f"{where}.{key}: must be an object of schemas")
            for name, sub in schema[key].items():
                check_schema(sub, f"{where}.{key}.{name}")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in schema:
            if not isinstance(schema[key], list):
                raise ValueError(f"{where}.{key}: must be an array of schemas")
            for i, sub in enumerate(schema[key]):
                check_schema(sub, f"{where}.{key}.{i}")
    for key in ("items", "not", "additionalProperties", "if", "then", "else"):
        if isinstance(schema.get(key), dict):
            check_schema(schema[key], f"{where}.{key}")


@dataclass
class TextDelta:
    index: int
    kind: Literal["reasoning", "content"]
    text: str


@dataclass
class ToolCallDelta:
    index: int
    call: ToolCall  # arguments typed by the tool's schema; the protocol assigns the id


@dataclass
class LogprobsDelta:
    """Logprobs of newly sampled tokens (requests with ``params.logprobs``), in OpenAI's ``logprobs.content``
    shape; they come before the text events of the same tokens."""

    index: int
    content: list[dict]


@dataclass
class ChoiceEnd:
    index: int
    finish_reason: Literal["stop", "length", "tool_calls"]
    stop_sequence: str | None
    completion_tokens: int
    cached_tokens: int


ChoiceEvent = TextDelta | ToolCallDelta | LogprobsDelta | ChoiceEnd


class GenerationError(RuntimeError):
    """A sequence failed inside the engine (an internal error of that request only)."""


_DONE = object()


class Generation:
    """The running choices of one request: ``prompt_tokens`` and ``events()``. ``aclose()`` aborts them."""

    def __init__(self, backend: Backend, job: ChatJob, prompt: str, streams: list[Stream]) -> None:
        self.backend, self.job, self.prompt, self.streams = backend, job, prompt, streams
        self.prompt_tokens = streams[0].prompt_tokens
        self._tasks: list[asyncio.Task] = []

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Events of all choices, interleaved as they are generated; each choice ends with a ChoiceEnd.
        Raises :class:`GenerationError` when a sequence fails."""
        if self.job.n == 1:
            async for e in self._choice(0):
                yield e
            return
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for e in self._choice(i):
                    q.put_nowait(e)
            except Exception as e:  # noqa: BLE001 (handed to the consumer)
                q.put_nowait(e)
            finally:
                q.put_nowait(_DONE)

        self._tasks = [asyncio.create_task(pump(i)) for i in range(self.job.n)]
        try:
            remaining = len(self._tasks)
            while remaining:
                item = await q.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        for s in self.streams:  # first, without awaiting: a cancelled caller may not get past its next await
            s.abort()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _chunks(self, i: int) -> AsyncIterator[Chunk]:
        """The text of choice ``i``: the first request, and for an enforced tool_choice the forced call header
        and the continuation after it."""
        forced = self.job.forced_call_prefix()
        text, used, first = [], 0, None
        async for chunk in self.streams[i]:
            used += chunk.tokens
            if forced is not None:
                text.append(chunk.text)
            if chunk.finished:
                first = chunk
                if forced is None or chunk.finish_reason != "stop" or chunk.stop_sequence != THINK_CLOSE:
                    yield _user_stop(chunk, self.job.params)
                    return
                yield dataclasses.replace(chunk, finish_reason=None)
            else:
                yield chunk
        assert first is not None and forced is not None
        yield Chunk(forced)
        params = self.job.params
        left = params.max_tokens - used
        if left <= 0:
            yield Chunk("", finish_reason="length", cached_tokens=first.cached_tokens)
            return
        cont = dataclasses.replace(params, max_tokens=left, stop=params.stop,
                                   seed=None if params.seed is None else params.seed + 7919 * (i + 1))
        try:
            stream = await self.backend.submit(self.prompt + "".join(text) + forced, cont)
        except ValueError:  # the continuation no longer fits the context
            yield Chunk("", finish_reason="length", cached_tokens=first.cached_tokens)
            return
        self.streams.append(stream)
        async for chunk in stream:
            yield dataclasses.replace(chunk, cached_tokens=first.cached_tokens) if chunk.finished else chunk

    async def _choice(self, i: int) -> AsyncIterator[ChoiceEvent]:
        job = self.job
        parser = M2StreamParser(job.tools or None, starts_in_think=True)
        calls = tokens = 0
        async for chunk in self._chunks(i):
            tokens += chunk.tokens
            if chunk.finish_reason == "error":
                raise GenerationError(chunk.error or "the sequence failed")
            if chunk.logprobs:
                yield LogprobsDelta(i, chunk.logprobs)
            try:
                events = parser.feed(chunk.text) if chunk.text else []
                if chunk.finished:
                    events += parser.finish()
            except Exception as e:  # noqa: BLE001 (the parser should never raise; if it does, this request ends)
                raise GenerationError(f"parsing the output failed: {type(e).__name__}: {e}") from e
            for e in events:
                if isinstance(e, ReasoningDelta) and e.text:
                    yield TextDelta(i, "reasoning", e.text)
                elif isinstance(e, ContentDelta) and e.text:
                    yield TextDelta(i, "content", e.text)
                elif isinstance(e, ToolCallEvent):
                    if job.tool_choice == "none":
                        yield TextDelta(i, "content", render_tool_calls([e.call]).lstrip("\n"))
                    elif job.parallel_tool_calls or calls == 0:
                        calls += 1
                        yield ToolCallDelta(i, e.call)
            if chunk.finished:
                reason = "length" if chunk.finish_reason in ("length", "repetition") else "stop"
                yield ChoiceEnd(i, "tool_calls" if calls and reason == "stop" else reason, chunk.stop_sequence,
                                tokens, chunk.cached_tokens)


def _user_stop(chunk: Chunk, params: SamplingParams) -> Chunk:
    """The server's own ``</think>`` stop string is not the client's: hide it."""
    if chunk.stop_sequence is not None and chunk.stop_sequence not in params.stop_strings:
        return dataclasses.replace(chunk, stop_sequence=None)
    return chunk


async def start(backend: Backend, job: ChatJob) -> Generation:
    """Render and submit the job's ``n`` sequences (distinct seeds). Raises ``ValueError`` for a request that
    cannot run, before anything was generated."""
    prompt = job.prompt()
    params = job.params
    if job.forced_call_prefix() is not None:
        params = dataclasses.replace(params, stop=[*params.stop_strings, *params.stop_token_ids, THINK_CLOSE])
    streams: list[Stream] = []
    try:
        for i in range(job.n):
            seed = None if params.seed is None else params.seed + i
            p = params if i == 0 else dataclasses.replace(params, seed=seed)
            streams.append(await backend.submit(prompt, p, strict_max_tokens=job.strict_max_tokens))
    except BaseException:
        for s in streams:
            s.abort()
        raise
    return Generation(backend, job, prompt, streams)


@dataclass
class ChoiceResult:
    """One choice added up (non-streaming responses)."""

    index: int
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    end: ChoiceEnd | None = None
    logprobs: list[dict] | None = None  # with params.logprobs: one entry per sampled token


async def collect(gen: Generation) -> list[ChoiceResult]:
    """Run a generation to the end and add up each choice's events."""
    results = [ChoiceResult(i, logprobs=[] if gen.job.params.logprobs else None) for i in range(gen.job.n)]
    async for e in gen.events():
        r = results[e.index]
        if isinstance(e, LogprobsDelta):
            r.logprobs += e.content
        elif isinstance(e, TextDelta):
            if e.kind == "reasoning":
                r.reasoning += e.text
            else:
                r.content += e.text
        elif isinstance(e, ToolCallDelta):
            r.tool_calls.append(e.call)
        else:
            r.end = e
    return results
