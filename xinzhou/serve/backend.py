"""What the HTTP server generates with: the :class:`Backend` protocol, and two ways to drive a continuous-batching
:class:`~xinzhou.engine.Engine` behind it.

Why the engine runs apart from the event loop: the engine is not thread-safe, and every running request must
advance in the same ``engine.step()`` (that is continuous batching). So one loop owns it (``engine_loop.py``),
takes submit/abort commands between steps and reports each step's tokens; this side routes them to the asyncio
queue of the request they belong to, with one ``call_soon_threadsafe`` per batch and event loop.

- :class:`ProcessEngineBackend` (what ``xinzhou serve`` uses) runs the loop in a child process: the engine's
  Python work then never waits for the GIL held by HTTP parsing, JSON and SSE (measured: a thread kept 20 % busy
  in the same process costs the engine about a quarter of its tokens/s).
- :class:`EngineBackend` runs it on a thread over an :class:`Engine` object you already have (tests, notebooks).

A request's validation (tokenising, context length) happens inside the loop, so ``submit`` raises ``ValueError``
for a bad request before any response starts, and a bad request never touches the running batch. A client that
goes away aborts its request (:meth:`Stream.abort`); the engine frees its slot before its next step. The backend
knows nothing about chat: prompt text in, text :class:`Chunk` s out. Tests plug a scripted stand-in into the same
protocol (``tests/serve/scripted.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from xinzhou.engine import Engine, SamplingParams
from xinzhou.serve.engine_loop import Chunk, check_budget, process_main, run_engine

__all__ = ["Backend", "Chunk", "EngineBackend", "ProcessEngineBackend", "Stream", "check_budget"]


class Stream:
    """The chunks of one submitted request, consumed with ``async for``. Chunks that queued up while the consumer
    was busy arrive merged (fewer, larger SSE events under load). Leaving the loop early (break, an exception,
    cancellation) aborts the request."""

    def __init__(self, on_abort: Callable[[Stream], None]) -> None:
        self.prompt_tokens = 0
        self.finished = False
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self._on_abort = on_abort

    def push(self, chunk: Chunk) -> None:
        """Deliver a chunk (on the stream's event loop)."""
        self._queue.put_nowait(chunk)

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        try:
            while not self.finished:
                chunk = await self._queue.get()
                while not chunk.finished and not self._queue.empty():
                    more = self._queue.get_nowait()
                    more.text, more.tokens = chunk.text + more.text, chunk.tokens + more.tokens
                    if chunk.logprobs is not None:
                        more.logprobs = chunk.logprobs + (more.logprobs or [])
                    chunk = more
                self.finished = chunk.finished
                yield chunk
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop generating (idempotent; a no-op once the last chunk was read)."""
        if not self.finished:
            self.finished = True
            self._on_abort(self)


class Backend(Protocol):
    """What the server needs from a generator of text."""

    model_id: str
    max_model_len: int

    def start(self) -> None: ...

    def close(self) -> None: ...

    async def submit(self, prompt: str, params: SamplingParams, *, strict_max_tokens: bool = False) -> Stream:
        """Queue one request. Raises ``ValueError`` for a request that cannot run (empty prompt, longer than the
        context, or, with ``strict_max_tokens``, prompt + ``max_tokens`` over the context)."""
        ...

    def stats(self) -> dict[str, int]: ...

    async def score(self, prompt: str, top_logprobs: int = 0) -> list[dict[str, Any]]:
        """Logprob entries of the prompt's own tokens (``/v1/completions`` with ``echo``); ``ValueError`` for a bad
        prompt."""
        ...

    async def count_tokens(self, prompt: str) -> int:
        """Tokens in ``prompt`` (``/v1/messages/count_tokens``)."""
        ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def detokenize(self, ids: list[int]) -> str: ...

    async def tokenizer_info(self) -> dict[str, Any]: ...


class _EngineClient:
    """The event-loop side shared by both engine backends: keys, futures, streams, and routing of the loop's
    messages (``engine_loop.py``). Subclasses provide ``_send(message)`` and call ``_dispatch(messages)``."""

    model_id: str
    max_model_len: int

    def __init__(self) -> None:
        self._keys = itertools.count()
        self._requests: dict[int, tuple[Stream, asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._free_slots = 0
        self.counts = {"submitted": 0, "finished": 0, "aborted": 0, "errors": 0}

    def _send(self, message: tuple) -> None:
        raise NotImplementedError

    async def submit(self, prompt: str, params: SamplingParams, *, strict_max_tokens: bool = False) -> Stream:
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        stream = Stream(lambda s: self._abort(key))
        future = loop.create_future()
        self._requests[key] = (stream, loop, future)
        self._send(("submit", key, prompt, params, strict_max_tokens))
        try:
            await future
        except asyncio.CancelledError:
            stream.abort()  # sent after the submit, so the loop aborts what it just admitted
            raise
        except BaseException:
            self._requests.pop(key, None)
            raise
        stream.prompt_tokens = future.result()
        self.counts["submitted"] += 1
        return stream

    async def score(self, prompt: str, top_logprobs: int = 0) -> list[dict[str, Any]]:
        """The logprob entries (OpenAI's shape) of the prompt's own tokens; raises ``ValueError`` for a prompt
        that cannot run. Scoring runs in the engine's loop between two steps."""
        return await self._ask("score", prompt, top_logprobs)

    async def count_tokens(self, prompt: str) -> int:
        """How many tokens the engine's tokenizer makes of ``prompt`` (no length limit applies)."""
        return await self._ask("count", prompt)

    async def tokenize(self, text: str) -> list[int]:
        return await self._ask("tokenize", text)

    async def detokenize(self, ids: list[int]) -> str:
        """The text of ``ids`` (``ValueError`` for ids outside the vocabulary)."""
        return await self._ask("detokenize", ids)

    async def tokenizer_info(self) -> dict[str, Any]:
        """``eos_token``, ``vocab_size``, ``tokenizer_class``."""
        return await self._ask("tokenizer_info")

    async def _ask(self, kind: str, *args: Any) -> Any:
        """A one-shot question to the engine loop, answered by a ``("scored", key, result)`` message."""
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        future = loop.create_future()
        self._requests[key] = (Stream(lambda s: None), loop, future)
        self._send((kind, key, *args))
        try:
            return await future
        finally:
            self._requests.pop(key, None)

    def _abort(self, key: int) -> None:
        if self._requests.pop(key, None) is not None:
            self.counts["aborted"] += 1
            self._send(("abort", key))

    def stats(self) -> dict[str, int]:
        """Requests in flight and counts since start (for monitoring and tests)."""
        return {"running": len(self._requests), "free_slots": self._free_slots, **self.counts}

    def _dispatch(self, messages: list[tuple]) -> None:
        """Route one batch of the loop's messages to their event loops (called off the event loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple]] = {}
        for msg in messages:
            if msg[0] == "slots":
                self._free_slots = msg[1]
                continue
            entry = self._requests.get(msg[1])
            if entry is not None:
                by_loop.setdefault(entry[1], []).append(msg)
        for loop, msgs in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._apply, msgs)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _apply(self, messages: list[tuple]) -> None:
        for msg in messages:
            entry = self._requests.get(msg[1])
            if entry is None:
                continue
            stream, _, future = entry
            if msg[0] == "chunk":
                chunk: Chunk = msg[2]
                if chunk.finished:
                    del self._requests[msg[1]]
                    self.counts["errors" if chunk.finish_reason == "error" else "finished"] += 1
                if future.done():
                    stream.push(chunk)
                else:  # failed before it was admitted (the engine went away)
                    future.set_exception(RuntimeError(chunk.error or "the request failed"))
            elif not future.done():
                if msg[0] in ("admitted", "scored"):
                    future.set_result(msg[2])
                else:
                    kind, text = msg[2], msg[3]
                    future.set_exception(ValueError(text) if kind == "ValueError" else RuntimeError(f"{kind}: {text}"))

    def _fail_all(self, message: str) -> None:
        self._dispatch([("chunk", key, Chunk("", finish_reason="error", error=message)) for key in list(self._requests)])


class EngineBackend(_EngineClient):
    """Serve an :class:`Engine` object from a thread of this process (``start()`` / ``close()``)."""

    def __init__(self, engine: Engine, model_id: str) -> None:
        super().__init__()
        if engine.tokenizer is None:
            raise ValueError("the server renders chats to text, so the engine needs a tokenizer (a checkpoint with "
                             "tokenizer.json, or tokenizer= when building the Engine/LLM)")
        self.engine, self.model_id, self.max_model_len = engine, model_id, engine.max_model_len
        self._free_slots = engine.cache.num_free
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _send(self, message: tuple) -> None:
        self._inbox.put(message)

    def _receive(self, block: bool) -> list[tuple]:
        msgs = []
        try:
            msgs.append(self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait())
            while True:
                msgs.append(self._inbox.get_nowait())
        except queue.Empty:
            return msgs

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=run_engine, args=(self.engine, self._receive, self._dispatch),
                                            name="xinzhou-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._send(("stop",))
            self._thread.join(timeout=30)
            self._thread = None
            self._fail_all("the server is shutting down")


class ProcessEngineBackend(_EngineClient):
    """Load a checkpoint in a child process and serve it from there (see the module docstring). ``start()`` waits
    until the model is loaded (raising ``ValueError`` if it cannot be); ``engine_options`` are
    :class:`~xinzhou.engine.EngineConfig` fields."""

    def __init__(self, model: str | Path, model_id: str | None = None, *, threads: int | None = None,
                 dtype: Any = None, **engine_options: Any) -> None:
        super().__init__()
        self.model, self.model_id = str(model), model_id or Path(model).resolve().name
        self.threads, self.dtype, self.engine_options = threads, dtype, engine_options
        self.max_model_len = 0
        self._conn: Any = None
        self._process: Any = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._process is not None:
            return
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=process_main, name="xinzhou-engine", daemon=True, args=(
            child, self.model, self.model_id, self.threads, self.dtype, self.engine_options))
        self._process.start()
        child.close()
        try:
            status = self._conn.recv()
        except EOFError:
            status = ("failed", f"the engine process exited with {self._process.exitcode} while loading")
        if status[0] != "ready":
            self._process.join(timeout=10)
            self._process = None
            raise ValueError(f"cannot serve {self.model}: {status[1]}")
        self.max_model_len, self._free_slots = status[1], status[2]
        self._reader = threading.Thread(target=self._read, name="xinzhou-engine-reader", daemon=True)
        self._reader.start()

    def _send(self, message: tuple) -> None:
        with self._lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError) as e:  # the engine process is gone
                raise RuntimeError("the engine process is not running") from e

    def _read(self) -> None:
        try:
            while True:
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):
            self._fail_all("the engine process exited")

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._send(("stop",))
        except RuntimeError:
            pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._process = None
