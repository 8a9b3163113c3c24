"""The loop that owns an :class:`~xinzhou.engine.Engine` wherever it runs (a thread of the server, or a process
of its own): take commands, step while anything is unfinished, report what happened.

Why it is written against two plain callables (``receive``, ``emit``) instead of a queue type: the same loop runs
on a thread (tests, notebooks: messages are Python objects in a queue) and in a child process (``xinzhou serve``:
messages are pickled through a pipe, and the engine's Python work no longer competes for the server's GIL).

Messages in: ``("submit", key, prompt, params, strict)``, ``("score", key, prompt, top_logprobs)``,
``("count", key, prompt)``, ``("tokenize", key, text)``, ``("detokenize", key, ids)``, ``("tokenizer_info", key)``,
``("abort", key)``, ``("stop",)``.
Messages out, one list per iteration: ``("admitted", key, prompt_tokens)``, ``("rejected", key, kind, message)``
(``kind`` is ``"ValueError"`` for the caller's mistakes), ``("chunk", key, Chunk)`` (the last chunk of a request has
``finish_reason``), ``("scored", key, entries)`` (one logprob entry per prompt token, the first with ``logprob``
None; scoring runs between two steps; for the other questions their answer), and last ``("slots", free_slots)``.
Keys are the caller's; engine request ids stay inside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xinzhou.engine import Engine

log = logging.getLogger("xinzhou.serve")


@dataclass
class Chunk:
    """Text of one or more new tokens; the last chunk of a stream has ``finish_reason`` set.

    ``finish_reason`` is the engine's: ``"stop"`` (end-of-message token or a stop string), ``"length"``
    (``max_tokens`` or the context), ``"repetition"``, ``"abort"`` or ``"error"`` (see ``error``).
    ``stop_sequence`` names the stop string that ended the text, if one did (the engine's ``stop_reason`` when it
    is a string; a stop token id has no place in the APIs served). ``cached_tokens`` is the number of
    prompt tokens restored from the engine's prefix cache instead of being computed. ``logprobs`` (when the
    request's params ask for them) has one entry per sampled token of the chunk, in OpenAI's shape:
    ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}``, the model's
    end-of-message token included (as vLLM does: one entry per sampled token, which is what evaluation harnesses
    index by).
    """

    text: str
    tokens: int = 0
    finish_reason: str | None = None
    stop_sequence: str | None = None
    cached_tokens: int = 0
    error: str | None = None
    logprobs: list[dict[str, Any]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def check_budget(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """The context-length rule for a client's explicit ``max_tokens`` (every backend applies it)."""
    if prompt_tokens + max_tokens > max_model_len:
        raise ValueError(f"this model's maximum context length is {max_model_len} tokens, but {prompt_tokens + max_tokens} "
                         f"were requested ({prompt_tokens} in the messages, {max_tokens} in the completion); "
                         f"reduce the length of the messages or the completion")


def run_engine(engine: Engine, receive: Callable[[bool], list[tuple]], emit: Callable[[list[tuple]], None]) -> None:
    """Serve ``engine`` until a ``("stop",)`` message. ``receive(block)`` returns the pending messages (waiting a
    while for one when ``block``); ``emit(messages)`` hands one iteration's results back."""
    keys: dict[int, Any] = {}  # engine request id -> caller key
    rids: dict[Any, int] = {}  # caller key -> engine request id
    with_logprobs: set[int] = set()  # engine request ids whose params ask for logprobs
    while True:
        out: list[tuple] = []
        freed = False  # an abort frees a slot without other output: report the slots anyway
        for msg in receive(not engine.has_unfinished()):
            if msg[0] == "stop":
                for rid in list(keys):
                    engine.abort(rid)
                    engine.discard_output(rid)
                return
            if msg[0] == "submit":
                _, key, prompt, params, strict = msg
                try:
                    seq = engine.make_sequence(prompt, params, stream=True)
                    if strict:
                        check_budget(seq.prompt_len, params.max_tokens, engine.max_model_len)
                except Exception as e:  # noqa: BLE001 (reported to the caller; ValueError is the request's fault)
                    out.append(("rejected", key, type(e).__name__, str(e)))
                    continue
                rid = engine.submit(seq)
                keys[rid], rids[key] = key, rid
                if params.logprobs:
                    with_logprobs.add(rid)
                out.append(("admitted", key, seq.prompt_len))
            elif msg[0] == "score":
                _, key, prompt, top = msg
                try:
                    s = engine.score(prompt, top)
                except Exception as e:  # noqa: BLE001 (reported to the caller; ValueError is the request's fault)
                    out.append(("rejected", key, type(e).__name__, str(e)))
                    continue
                out.append(("scored", key, [logprob_entry(engine, t, lp, tp)
                                            for t, lp, tp in zip(s.token_ids, s.logprobs, s.top_logprobs)]))
            elif msg[0] in _QUESTIONS:
                try:
                    out.append(("scored", msg[1], _QUESTIONS[msg[0]](engine, *msg[2:])))
                except Exception as e:  # noqa: BLE001 (reported to the caller; ValueError is the request's fault)
                    out.append(("rejected", msg[1], type(e).__name__, str(e)))
            elif msg[0] == "abort" and msg[1] in rids:
                rid = rids.pop(msg[1])
                del keys[rid]
                with_logprobs.discard(rid)
                engine.abort(rid)
                engine.discard_output(rid)
                freed = True
        if engine.has_unfinished():
            try:
                events = engine.step()
            except Exception as e:  # noqa: BLE001 (a broken step ends the running requests, not the server)
                log.exception("engine step failed")
                for rid, key in list(keys.items()):
                    engine.abort(rid)
                    engine.discard_output(rid)
                    out.append(("chunk", key, Chunk("", finish_reason="error", error=f"{type(e).__name__}: {e}")))
                keys.clear()
                rids.clear()
                events = []
            for ev in events:
                key = keys.get(ev.request_id)
                if key is None:
                    continue
                chunk = Chunk(ev.text, int(ev.token_id is not None))
                if ev.request_id in with_logprobs:
                    chunk.logprobs = [] if ev.token_id is None else \
                        [logprob_entry(engine, ev.token_id, ev.logprob, ev.top_logprobs)]
                if ev.finished:
                    with_logprobs.discard(ev.request_id)
                    del keys[ev.request_id]
                    rids.pop(key)
                    chunk = _last_chunk(engine, chunk, ev.request_id, ev.finish_reason)
                out.append(("chunk", key, chunk))
        if out or freed:
            out.append(("slots", engine.cache.num_free))
            emit(out)


def _detokenize(engine: Engine, ids: list[int]) -> str:
    bad = [t for t in ids if not 0 <= t < engine.vocab_size]
    if bad:
        raise ValueError(f"token ids must be in [0, {engine.vocab_size}) (vocab_size); got {bad[:8]}")
    return engine.tokenizer.decode(ids)


def _tokenizer_info(engine: Engine) -> dict[str, Any]:
    eos = sorted(engine.tokenizer.eos_ids)
    return {"eos_token": engine.tokenizer.decode(eos[:1]) if eos else None, "vocab_size": engine.vocab_size,
            "tokenizer_class": type(engine.tokenizer.tokenizer).__name__}


# one-shot questions answered between two steps: name -> f(engine, *args)
_QUESTIONS: dict[str, Callable[..., Any]] = {
    "count": lambda engine, prompt: len(engine.tokenizer.encode(prompt)),
    "tokenize": lambda engine, text: engine.tokenizer.encode(text),
    "detokenize": _detokenize,
    "tokenizer_info": _tokenizer_info,
}


def logprob_entry(engine: Engine, token_id: int, logprob: float | None,
                  top: list[tuple[int, float]] | None) -> dict[str, Any]:
    """One token's logprobs in OpenAI's shape (``token`` is the token's own text, ``bytes`` its exact bytes)."""
    def one(t: int, lp: float | None) -> dict[str, Any]:
        return {"token": engine.tokenizer.decode([t]), "logprob": lp, "bytes": list(engine.tokenizer.token_bytes(t))}

    return {**one(token_id, logprob), "top_logprobs": [one(t, lp) for t, lp in top or []]}


def _last_chunk(engine: Engine, chunk: Chunk, rid: int, reason: str) -> Chunk:
    out = engine.pop_output(rid)
    chunk.finish_reason, chunk.cached_tokens, chunk.error = reason, out.num_cached_tokens, out.error
    chunk.stop_sequence = out.stop_reason if isinstance(out.stop_reason, str) else None  # the engine's own record
    return chunk


def process_main(conn: Any, model: str, model_id: str | None, threads: int | None, dtype: Any,
                 engine_options: dict[str, Any]) -> None:
    """Entry point of the engine process: load the checkpoint, report ``("ready", max_model_len, free_slots)`` (or
    ``("failed", message)``), then run the loop over the pipe ``conn``."""
    import signal  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from xinzhou.engine import LLM  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then stops this process
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        llm = LLM(model, dtype=dtype, **engine_options)
        if llm.engine.tokenizer is None:
            raise ValueError(f"{model} has no tokenizer.json; the server needs the checkpoint's tokenizer")
    except Exception as e:  # noqa: BLE001 (reported to the parent, which raises it)
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", llm.engine.max_model_len, llm.engine.cache.num_free))

    def receive(block: bool) -> list[tuple]:
        msgs = []
        if conn.poll(0.5 if block else 0):
            msgs.append(conn.recv())
            while conn.poll(0):
                msgs.append(conn.recv())
        return msgs

    try:
        run_engine(llm.engine, receive, conn.send)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the server went away
        pass
