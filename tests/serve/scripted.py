"""A scripted stand-in for the engine: exact canned completions, played in small chunks, with every prompt it
received recorded, so tests can check what the server rendered (e.g. that a second turn's prompt holds the first
turn's thinking) and what it returns for a known model output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from xinzhou.engine import SamplingParams
from xinzhou.serve.backend import Chunk, Stream, check_budget

FAIL = "<<fail>>"  # a reply that makes the sequence fail inside the "engine"


class ScriptedBackend:
    """Replies in order (the last one repeats), or ``reply(prompt)`` when a callable is given. A reply is what the
    model writes after the generation prompt (it starts inside ``<think>``), usually ending with ``[e~[``; a reply
    played to its end finishes with reason ``stop``. Chunks are ``chunk`` characters, one "token" each, ``delay``
    seconds apart. Stop strings and ``max_tokens`` behave as in the engine."""

    def __init__(self, replies: list[str] | Callable[[str], str], *, model_id: str = "scripted", chunk: int = 3,
                 delay: float = 0.0, max_model_len: int = 1_000_000) -> None:
        self.replies, self.model_id, self.chunk, self.delay = replies, model_id, chunk, delay
        self.max_model_len = max_model_len
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []
        self.counts = {"submitted": 0, "finished": 0, "aborted": 0}
        self._tasks: dict[Stream, asyncio.Task] = {}

    def start(self) -> None: ...

    def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()

    def stats(self) -> dict[str, int]:
        return {"running": len(self._tasks), **self.counts}

    def _reply(self, prompt: str) -> str:
        if callable(self.replies):
            return self.replies(prompt)
        return self.replies[min(len(self.prompts) - 1, len(self.replies) - 1)]

    async def submit(self, prompt: str, params: SamplingParams, *, strict_max_tokens: bool = False) -> Stream:
        if not prompt:
            raise ValueError("the prompt is empty")
        n_prompt = len(prompt) // 4 + 1
        if n_prompt >= self.max_model_len:
            raise ValueError(f"the prompt has {n_prompt} tokens but the model's context is {self.max_model_len}")
        if strict_max_tokens:
            check_budget(n_prompt, params.max_tokens, self.max_model_len)
        self.prompts.append(prompt)
        self.params.append(params)
        self.counts["submitted"] += 1
        stream = Stream(self._abort)
        stream.prompt_tokens = n_prompt
        self._tasks[stream] = asyncio.create_task(self._play(stream, self._reply(prompt), params))
        return stream

    async def score(self, prompt: str | list[int], top_logprobs: int = 0) -> list[dict[str, Any]]:
        """Scripted prompt scores: one "token" per ``chunk`` characters (or per id), logprob -1 (none first)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        pieces = ([prompt[i : i + self.chunk] for i in range(0, len(prompt), self.chunk)] if isinstance(prompt, str)
                  else [f"<{t}>" for t in prompt])
        alt = [{"token": f"alt{k}", "logprob": -2.0 - k, "bytes": list(f"alt{k}".encode())}
               for k in range(top_logprobs)]
        return [{"token": p, "logprob": None if i == 0 else -1.0, "bytes": list(p.encode()), "top_logprobs": alt}
                for i, p in enumerate(pieces)]

    async def count_tokens(self, prompt: str) -> int:
        return len(prompt) // 4 + 1  # as submit counts

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, ids: list[int]) -> str:
        if any(not 0 <= t < 0x110000 for t in ids):
            raise ValueError("token ids must be code points")
        return "".join(map(chr, ids))

    async def tokenizer_info(self) -> dict[str, Any]:
        return {"eos_token": "[e~[", "vocab_size": 0x110000, "tokenizer_class": "Scripted"}

    def _abort(self, stream: Stream) -> None:
        task = self._tasks.pop(stream, None)
        if task is not None:
            task.cancel()
            self.counts["aborted"] += 1

    async def _play(self, stream: Stream, reply: str, params: SamplingParams) -> None:
        await asyncio.sleep(0)
        if reply == FAIL:
            self._finish(stream, Chunk("", finish_reason="error", error="RuntimeError: scripted failure"))
            return
        reason, stop = "stop", None
        hits = [(reply.find(s), s) for s in params.stop_strings if s in reply]
        if hits:
            at, stop = min(hits)
            reply = reply[:at]
        pieces = [reply[i : i + self.chunk] for i in range(0, len(reply), self.chunk)] or [""]
        if len(pieces) > params.max_tokens:
            pieces, reason, stop = pieces[: params.max_tokens], "length", None
        for piece in pieces[:-1]:
            stream.push(Chunk(piece, 1))
            if self.delay:
                await asyncio.sleep(self.delay)
        self._finish(stream, Chunk(pieces[-1], 1, finish_reason=reason, stop_sequence=stop))

    def _finish(self, stream: Stream, chunk: Chunk) -> None:
        if self._tasks.pop(stream, None) is not None:
            self.counts["finished"] += 1
            stream.push(chunk)


def completion(reasoning: str, content: str = "", calls: list[tuple[str, dict[str, Any]]] = ()) -> str:
    """The text M2 writes for a turn (after the generation prompt), as ``render_completion`` does."""
    from xinzhou.chat import AssistantMessage, ToolCall, render_completion  # noqa: PLC0415

    msg = AssistantMessage(content, reasoning, [ToolCall(n, a) for n, a in calls])
    return render_completion(msg)
