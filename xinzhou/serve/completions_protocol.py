"""OpenAI (legacy) Completions: raw text in, raw text out, with ``echo`` and per-token ``logprobs``.

Why besides chat: evaluation harnesses score models through this endpoint. lm-evaluation-harness's
``local-completions`` asks for ``echo: true, logprobs: k, max_tokens: 0`` to read the log-likelihood of a prompt's
own tokens (multiple-choice answers), and plain completions to generate. No chat template is applied; the text
the model writes comes back as it is (special tokens and thinking markup included).

Shapes: ``choices[i].text`` (the prompt first, with ``echo``), ``logprobs`` as ``{"tokens", "token_logprobs",
"top_logprobs" (one ``{token: logprob}`` dict per token), "text_offset"}`` (the first prompt token has no logprob),
``finish_reason`` ``stop`` / ``length``. ``prompt`` may be a string, a list of strings, token ids or a list of
token-id lists; with ``n`` choices each, choice ``i·n + j`` is the ``j``-th of prompt ``i``. Prompt scores come
from the engine's scoring pass (``xinzhou/engine/scoring.py``), generated tokens' from the sampler (raw model,
fp32), exactly as in chat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xinzhou.engine import SamplingParams
from xinzhou.serve.backend import Backend, Chunk, Stream
from xinzhou.serve.errors import APIError, error_body
from xinzhou.serve.limits import ServerConfig
from xinzhou.serve.openai_protocol import SEED_RANGE, StreamOptions, sse

Prompt = str | list[int]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="text or token ids, one or a batch")
    max_tokens: int | None = Field(16, ge=0, description="0 only with echo (scoring)")
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, le=1 << 20, description="extension: 0 or -1 keeps all tokens")
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    logprobs: int | None = Field(None, ge=0, le=20, description="alternatives per token (0: the token's own only)")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="extension: do not stop at the end-of-message token")


def prompts_of(req: CompletionRequest) -> list[Prompt]:
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise APIError(400, "prompt is empty", param="prompt")
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def to_params(req: CompletionRequest, config: ServerConfig, n_prompts: int) -> SamplingParams | None:
    """The sampling params of every choice (None when nothing is generated: ``max_tokens`` 0 with ``echo``)."""
    if req.n * n_prompts > config.max_n:
        raise APIError(400, f"{n_prompts} prompt(s) x n={req.n} choices; this server allows at most {config.max_n} "
                       "choices per request", param="n")
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    if max_tokens > config.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {config.max_tokens_limit}",
                       param="max_tokens")
    if max_tokens == 0:
        if not req.echo:
            raise APIError(400, "max_tokens 0 generates nothing; it is only valid with echo (to score the prompt)",
                           param="max_tokens")
        return None
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    return SamplingParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, top_k=max(0, req.top_k or 0),
                          stop=stop or None, seed=None if req.seed is None else req.seed % SEED_RANGE,
                          ignore_eos=req.ignore_eos, logprobs=req.logprobs is not None,
                          top_logprobs=req.logprobs or 0)


class LegacyLogprobs:
    """Accumulates chat-shaped entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``) into the legacy
    columns; ``text_offset`` counts characters of the choice's text."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.cols: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, entries: list[dict[str, Any]], first_has_none: bool = False) -> dict[str, list]:
        new: dict[str, list] = {k: [] for k in self.cols}
        for i, e in enumerate(entries):
            none = first_has_none and i == 0
            new["tokens"].append(e["token"])
            new["token_logprobs"].append(e["logprob"])
            new["top_logprobs"].append(None if none else {t["token"]: t["logprob"] for t in e["top_logprobs"]})
            new["text_offset"].append(self.offset)
            self.offset += len(e["token"])
        for k, v in new.items():
            self.cols[k] += v
        return new


class CompletionRun:
    """The choices of one request: ``aclose()`` aborts whatever still runs (the app calls it however the
    response ends)."""

    def __init__(self, backend: Backend, req: CompletionRequest, config: ServerConfig) -> None:
        self.backend, self.req = backend, req
        self.prompts = prompts_of(req)
        self.params = to_params(req, config, len(self.prompts))
        self.streams: list[Stream | None] = []
        self.scores: list[list[dict] | None] = []  # per choice, with echo and logprobs: the prompt's entries
        self.echoes: list[str] = []  # per choice, with echo: the prompt's text
        self.prompt_tokens: list[int] = []

    async def _echo(self, prompt: Prompt) -> tuple[str, list[dict] | None, int]:
        """``(text, scored entries or None, token count)`` of an echoed prompt. Only logprobs need the scoring
        forward; otherwise the tokenizer alone answers."""
        if self.req.logprobs is not None:
            scored = await self.backend.score(prompt, self.req.logprobs)
            text = prompt if isinstance(prompt, str) else \
                b"".join(bytes(e["bytes"]) for e in scored).decode("utf-8", "replace")
            return text, scored, len(scored)
        if isinstance(prompt, str):
            return prompt, None, await self.backend.count_tokens(prompt)
        return await self.backend.detokenize(prompt), None, len(prompt)

    async def start(self) -> None:
        """Score (``echo``) and submit every choice; ``ValueError`` before anything is generated."""
        req, p = self.req, self.params
        try:
            for prompt in self.prompts:
                text, scored, n_prompt = await self._echo(prompt) if req.echo else ("", None, 0)
                for j in range(req.n):
                    self.scores.append(scored)
                    self.echoes.append(text)
                    if p is None:
                        self.streams.append(None)
                        self.prompt_tokens.append(n_prompt)
                        continue
                    pj = p if j == 0 or p.seed is None else _with_seed(p, p.seed + j)
                    s = await self.backend.submit(prompt, pj)
                    self.streams.append(s)
                    self.prompt_tokens.append(s.prompt_tokens)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        for s in self.streams:
            if s is not None:
                s.abort()

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = sum(self.prompt_tokens[:: self.req.n])
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens}


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(p, seed=seed % SEED_RANGE)


def _finish(chunk: Chunk) -> str:
    return "stop" if chunk.finish_reason == "stop" else "length"


def _check(chunk: Chunk) -> None:
    if chunk.finish_reason == "error":
        raise APIError(500, f"generation failed: {chunk.error or 'the sequence failed'}")


async def complete(run: CompletionRun) -> dict[str, Any]:
    """The whole response (non-streaming)."""
    async def one(i: int) -> tuple[dict[str, Any], int]:
        req, scored, stream = run.req, run.scores[i], run.streams[i]
        text = run.echoes[i]
        lp = LegacyLogprobs() if req.logprobs is not None else None
        if lp is not None and scored is not None:
            lp.add(scored, first_has_none=True)
        tokens, finish = 0, "length"
        if stream is not None:
            async for chunk in stream:
                _check(chunk)
                text += chunk.text
                tokens += chunk.tokens
                if lp is not None and chunk.logprobs:
                    lp.add(chunk.logprobs)
                if chunk.finished:
                    finish = _finish(chunk)
        return {"text": text, "index": i, "logprobs": lp.cols if lp else None, "finish_reason": finish}, tokens

    results = await asyncio.gather(*(one(i) for i in range(len(run.streams))))
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": run.req.model, "choices": [c for c, _ in results], "usage": run.usage(sum(t for _, t in results))}


async def stream(run: CompletionRun) -> AsyncIterator[str]:
    """The SSE body: with ``echo`` the prompt first, then text chunks as generated, a finish chunk per choice,
    the usage chunk (``stream_options.include_usage``), ``[DONE]``. Choices are interleaved as they progress."""
    req = run.req
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(i: int, text: str, logprobs: dict | None, finish: str | None = None) -> str:
        return sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}]})

    q: asyncio.Queue = asyncio.Queue()
    tokens = [0] * len(run.streams)

    async def pump(i: int) -> None:
        lp = LegacyLogprobs() if req.logprobs is not None else None
        try:
            if req.echo:
                scored = run.scores[i]
                cols = lp.add(scored, first_has_none=True) if lp is not None and scored is not None else None
                q.put_nowait(chunk(i, run.echoes[i], cols))
            s = run.streams[i]
            if s is None:
                q.put_nowait(chunk(i, "", None, "length"))
                return
            async for c in s:
                _check(c)
                tokens[i] += c.tokens
                cols = lp.add(c.logprobs) if lp is not None and c.logprobs else None
                if c.text or cols:
                    q.put_nowait(chunk(i, c.text, cols))
                if c.finished:
                    q.put_nowait(chunk(i, "", None, _finish(c)))
        except APIError as e:
            q.put_nowait(e)
        finally:
            q.put_nowait(None)

    tasks = [asyncio.create_task(pump(i)) for i in range(len(run.streams))]
    try:
        remaining, failed = len(tasks), False
        while remaining:
            item = await q.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, APIError):
                failed = True
                yield sse(error_body("/v1/completions", item.status, item.message))
                break
            else:
                yield item
        if not failed:
            if req.stream_options and req.stream_options.include_usage:
                yield sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                           "choices": [], "usage": run.usage(sum(tokens))})
            yield sse("[DONE]")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.aclose()

