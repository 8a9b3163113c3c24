"""The offline generation API: ``LLM(model_or_path).generate(prompts, SamplingParams(...))``.

Why a class that outlives calls: the engine keeps finished sequences' states in its prefix cache, so the next
call whose prompt extends an earlier one (the next turn of a chat, an agent step after a tool result) prefills
only the new tokens. ``stream`` yields tokens as they are produced; ``continue_`` appends forced tokens (tool
output, mask 0) to earlier outputs and samples on, the form agent and RL loops need.

Every prompt of a call is validated before any is queued, so a bad one raises ``ValueError`` (naming its index)
and leaves the engine untouched.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from xinzhou.engine.engine import Engine, Prompt
from xinzhou.engine.params import EngineConfig, SamplingParams
from xinzhou.engine.scoring import PromptScores
from xinzhou.engine.sequence import RequestOutput, StreamOutput
from xinzhou.model.model import Model

Prompts = Prompt | Sequence[Prompt]
Params = SamplingParams | Sequence[SamplingParams] | None


class LLM:
    """Generate with a :class:`~xinzhou.Model` (or a checkpoint directory, whose ``tokenizer.json`` is loaded when
    present). Engine settings come from ``config`` or keyword arguments (see :class:`EngineConfig`)."""

    def __init__(self, model: Model | str | os.PathLike, tokenizer: Any = None, *,
                 config: EngineConfig | None = None, dtype: torch.dtype | None = None, **engine_kwargs: Any) -> None:
        if isinstance(model, (str, os.PathLike)):
            from xinzhou.model.hf import from_pretrained

            path = Path(model)
            model = from_pretrained(path, dtype=dtype)
            if tokenizer is None and (path / "tokenizer.json").is_file():
                from xinzhou.data.tokenizer import Tokenizer

                tokenizer = Tokenizer.from_dir(path)
        elif not isinstance(model, Model):
            raise TypeError(f"model must be a xinzhou Model or a checkpoint directory, got {type(model).__name__}")
        if engine_kwargs:
            fields = {f.name for f in dataclasses.fields(EngineConfig)}
            unknown = sorted(set(engine_kwargs) - fields)
            if unknown:
                raise ValueError(f"unknown engine option(s) {unknown}; valid options: {sorted(fields)}")
            config = dataclasses.replace(config or EngineConfig(), **engine_kwargs)
        self.engine = Engine(model, tokenizer, config)
        self._backlog: dict[int, deque[StreamOutput]] = defaultdict(deque)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer.tokenizer if self.engine.tokenizer is not None else None

    def cache_bytes(self) -> dict[str, int]:
        return self.engine.cache_bytes()

    # --------------------------------------------------------------------------------------------- API
    def generate(self, prompts: Prompts, params: Params = None) -> list[RequestOutput]:
        """One output per prompt, in order. A prompt is a string (needs a tokenizer), a list of token ids or a 1-D
        tensor; ``params`` is one :class:`SamplingParams` for all or one per prompt."""
        seqs = self._prepare(_as_list(prompts), params, stream=False)
        ids = [self.engine.submit(s, i) for i, s in enumerate(seqs)]
        for _ in self._events(ids):
            pass
        return [self.engine.pop_output(r) for r in ids]

    def stream(self, prompts: Prompts, params: Params = None) -> Iterator[StreamOutput]:
        """Yield each token as it is sampled: ``StreamOutput(index, request_id, token_id, text, logprob, finished,
        finish_reason, stop_reason)``, ``index`` being the prompt's position. Closing the iterator early aborts the
        rest."""
        seqs = self._prepare(_as_list(prompts), params, stream=True)
        ids = [self.engine.submit(s, i) for i, s in enumerate(seqs)]
        try:
            yield from self._events(ids)
        finally:
            for r in ids:
                self.engine.discard_output(r)

    def score(self, prompt: Prompt, top_logprobs: int = 0) -> PromptScores:
        """Log-probability of each prompt token given the ones before (``None`` for the first) and, with
        ``top_logprobs``, the most likely alternatives at each position: what evaluation harnesses call prompt
        logprobs (``xinzhou/engine/scoring.py``)."""
        return self.engine.score(prompt, top_logprobs)

    def continue_(self, outputs: RequestOutput | Sequence[RequestOutput], forced: Prompts | None = None,
                  params: Params = None) -> list[RequestOutput]:
        """Continue earlier outputs: append ``forced`` tokens (a string or ids, one per output or one for all;
        mask 0, no logprob), then sample as ``generate`` does. The result holds the whole completion so far
        (earlier sampled tokens, forced tokens, new samples). The earlier state is reused from the prefix cache,
        so only the forced tokens are prefilled."""
        outs = [outputs] if isinstance(outputs, RequestOutput) else list(outputs)
        if forced is None or isinstance(forced, (str, torch.Tensor)) or (
                isinstance(forced, Sequence) and all(isinstance(t, int) for t in forced)):
            forced = [forced] * len(outs)
        forced = list(forced)
        if len(forced) != len(outs):
            raise ValueError(f"got {len(forced)} forced segments for {len(outs)} outputs")
        plist = self._params(params, len(outs))
        seqs = []
        for i, (o, f, p) in enumerate(zip(outs, forced, plist)):
            try:
                seqs.append(self.engine.make_sequence(None, p, history=o, forced=f))
            except ValueError as e:
                raise ValueError(f"output {i}: {e}") from e
        ids = [self.engine.submit(s, i) for i, s in enumerate(seqs)]
        for _ in self._events(ids):
            pass
        return [self.engine.pop_output(r) for r in ids]

    # ------------------------------------------------------------------------------------------ helpers
    def _prepare(self, prompts: list[Prompt], params: Params, stream: bool) -> list:
        plist = self._params(params, len(prompts))
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            try:
                seqs.append(self.engine.make_sequence(prompt, p, stream=stream))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from e
        return seqs

    @staticmethod
    def _params(params: Params, n: int) -> list[SamplingParams | None]:
        if params is None or isinstance(params, SamplingParams):
            return [params] * n
        plist = list(params)
        if len(plist) != n:
            raise ValueError(f"got {len(plist)} SamplingParams for {n} prompts (give one, or one per prompt)")
        return plist

    def _events(self, ids: list[int]) -> Iterator[StreamOutput]:
        """Step the engine until the requests ``ids`` finish, yielding their events; events of other callers'
        requests are kept for them."""
        pending = set(ids)
        try:
            while pending:
                for r in list(pending):
                    while self._backlog.get(r):
                        ev = self._backlog[r].popleft()
                        if ev.finished:
                            pending.discard(r)
                        yield ev
                if not pending:
                    break
                if not self.engine.has_unfinished():
                    raise RuntimeError(f"requests {sorted(pending)} vanished from the engine")
                for ev in self.engine.step():
                    self._backlog[ev.request_id].append(ev)
        finally:
            for r in ids:
                self._backlog.pop(r, None)
            for r in pending:
                self.engine.abort(r)
                self.engine.discard_output(r)


def _as_list(prompts: Prompts) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return [prompts] if prompts.dim() == 1 else list(prompts)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [prompts]  # one prompt of token ids
    return prompts
