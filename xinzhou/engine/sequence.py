"""One request's life in the engine (:class:`Sequence`) and what callers get back (:class:`RequestOutput` at the
end, :class:`StreamOutput` per token).

Why a mask and not just ids: agent and RL loops put tokens into a sequence that the model did not sample (tool
results). They must be prefilled like any prompt, but they have no sampling logprob and RL must leave them out of
the loss. Every completion token therefore carries ``mask`` 1 (sampled) or 0 (forced) and a logprob (``None`` for
forced tokens).

A sequence computes its tokens in order; ``num_computed`` of its ``token_ids`` are in its cache slot. More than one
uncomputed token means a prefill (chunked); exactly one is the last sampled token, fed by the next decode step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from xinzhou.engine.detokenizer import IncrementalText
from xinzhou.engine.params import SamplingParams
from xinzhou.engine.prefix_cache import Checkpoint

FINISH_REASONS = ("stop", "length", "repetition", "abort", "error")


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    """A finished request.

    Attributes:
        request_id: the engine's id for the request.
        prompt_token_ids: the prompt as given (for a continuation: the first request's prompt).
        token_ids: the completion: sampled tokens and forced tokens, in order (stop tokens included).
        mask: per completion token, 1 = sampled by the model, 0 = forced into the sequence.
        logprobs: per completion token, the logprob of a sampled token when ``SamplingParams.logprobs`` is set
            (raw model at temperature 1, or the sampling distribution with ``logprobs_mode="processed"``); None
            for forced tokens (and when not asked).
        top_logprobs: per completion token, ``SamplingParams.top_logprobs`` pairs ``(token id, raw logprob)``,
            most likely first, for a sampled token when asked; None for forced tokens (and when not asked).
        text: the completion decoded (special tokens kept), cut before a matched stop string; "" without tokenizer.
        finish_reason: ``"stop"`` (stop token or string), ``"length"`` (``max_tokens`` or the model's context),
            ``"repetition"`` (``repetition_stop``), ``"abort"`` or ``"error"`` (see ``error``).
        num_cached_tokens: tokens of the prompt restored from the prefix cache instead of being prefilled.
        error: what went wrong, for ``finish_reason == "error"``.
        stop_reason: what ended a ``"stop"``: the stop string that matched (``str``; ``text`` ends just before it)
            or the stop token id from ``SamplingParams.stop`` that was sampled (``int``); None when the model's
            end-of-sequence token ended it, and for every other finish reason (vLLM's field and meaning).
    """

    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float | None]
    text: str
    finish_reason: str
    num_cached_tokens: int = 0
    error: str | None = None
    stop_reason: str | int | None = None
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.token_ids


@dataclass
class StreamOutput:
    """One sampled token of request ``index`` (its position in the call), or its end (``finished``, with
    ``finish_reason`` and ``stop_reason`` as in :class:`RequestOutput`)."""

    index: int
    request_id: int
    token_id: int | None
    text: str
    logprob: float | None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    top_logprobs: list[tuple[int, float]] | None = None  # SamplingParams.top_logprobs (id, raw logprob) pairs


@dataclass(eq=False)
class Sequence:
    request_id: int
    params: SamplingParams
    token_ids: list[int]
    prompt_len: int
    generator: torch.Generator
    stop_ids: frozenset[int]
    mask: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    text: IncrementalText | None = None
    status: Status = Status.WAITING
    slot: int = -1
    num_computed: int = 0
    num_sampled: int = 0
    num_cached_tokens: int = 0
    confident_run: int = 0  # consecutive sampled tokens above the repetition_stop probability
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # see RequestOutput
    error: str | None = None
    pending_logits: torch.Tensor | None = None  # restored from a checkpoint: sample without a forward
    last_logits: torch.Tensor | None = None  # the logits the last token was sampled from
    checkpoints: list[Checkpoint] = field(default_factory=list)
    index: int = 0  # position in the caller's batch (for streaming)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    def to_output(self) -> RequestOutput:
        text = self.text.final_text() if self.text is not None else ""
        return RequestOutput(self.request_id, self.token_ids[: self.prompt_len], self.completion_ids, self.mask,
                             self.logprobs, text, self.finish_reason or "abort", self.num_cached_tokens, self.error,
                             self.stop_reason, self.top_logprobs)
