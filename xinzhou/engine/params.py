"""What a caller can ask of one generation request (:class:`SamplingParams`) and of the engine as a whole
(:class:`EngineConfig`), validated on construction so a bad request fails with a ``ValueError`` that names the
valid options before it can reach, and break, a running batch.

Sampling order is the usual one (transformers, vLLM): temperature, then top-k, then top-p, then a draw from the
renormalised distribution with the request's own ``torch.Generator``. ``temperature == 0`` means greedy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

LOGPROBS_MODES = ("raw", "processed")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class SamplingParams:
    """Per-request generation settings.

    Attributes:
        max_tokens: most tokens to sample in this request (>= 1); finish reason ``"length"`` when reached.
        temperature: >= 0; 0 is greedy (argmax, ties to the lowest id).
        top_p: nucleus mass in (0, 1]: keep the fewest most-likely tokens whose mass reaches ``top_p``.
        top_k: keep the ``top_k`` most likely tokens; 0 keeps all.
        stop: stop strings and/or stop token ids (one ``str`` or ``int``, or an iterable of them). A stop token is
            kept in the output (ids and text); a stop string ends the text just before it.
        seed: seeds this request's own generator, so its samples do not depend on what else is in the batch.
            None draws a seed from torch's global RNG (reproducible under ``torch.manual_seed``).
        logprobs: return each sampled token's log-probability under the *raw model* distribution
            (``log_softmax`` of the fp32 logits at temperature 1, before top-k/top-p). That is the sampling
            distribution only when ``temperature == 1`` and no filter is active; see ``logprobs_mode``.
        logprobs_mode: which distribution ``logprobs`` are taken under. ``"raw"`` (default): the model's own, at
            temperature 1. ``"processed"``: the distribution the token was actually drawn from (after temperature,
            top-k and top-p, renormalised; 0.0 for greedy), i.e. the behaviour policy of an RL rollout at
            temperature != 1 (vLLM's ``processed_logprobs``). ``repetition_stop`` always uses raw probabilities.
        top_logprobs: with ``logprobs``, also return the ``top_logprobs`` (0 to 20) most likely tokens of each
            sampled position and their raw-model logprobs (OpenAI's ``top_logprobs``); 0 returns none.
        repetition_stop: ``(n, p)``: stop (reason ``"repetition"``) once ``n`` consecutive sampled tokens each had
            raw-model probability above ``p`` (MiniMax-M1's early truncation: 3000 tokens above 0.99 at scale).
        ignore_eos: do not stop on the model's end-of-sequence token (benchmarks).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: str | int | Iterable[str | int] | None = None
    seed: int | None = None
    logprobs: bool = False
    logprobs_mode: str = "raw"
    top_logprobs: int = 0
    repetition_stop: tuple[int, float] | None = None
    ignore_eos: bool = False
    stop_strings: tuple[str, ...] = field(init=False, repr=False)
    stop_token_ids: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {', '.join(map(repr, LOGPROBS_MODES))}, got "
                             f"{self.logprobs_mode!r}")
        if isinstance(self.top_logprobs, bool) or not isinstance(self.top_logprobs, int) \
                or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be an int in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        if self.top_logprobs and self.logprobs_mode != "raw":
            raise ValueError("top_logprobs are the raw model's; they need logprobs_mode='raw'")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.repetition_stop is not None:
            rs = self.repetition_stop
            ok = (isinstance(rs, (tuple, list)) and len(rs) == 2 and isinstance(rs[0], int)
                  and not isinstance(rs[0], bool) and rs[0] >= 1 and _is_real(rs[1]) and 0 <= rs[1] < 1)
            if not ok:
                raise ValueError(f"repetition_stop must be None or (n >= 1 tokens, probability in [0, 1)), e.g. "
                                 f"(3000, 0.99); got {rs!r}")
            self.repetition_stop = (int(rs[0]), float(rs[1]))
        self.stop_strings, self.stop_token_ids = _split_stop(self.stop)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _split_stop(stop: object) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if stop is None:
        return (), ()
    items = [stop] if isinstance(stop, (str, int)) else stop
    try:
        items = list(items)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"stop must be a str, an int token id, or an iterable of them; got "
                         f"{type(stop).__name__}") from None
    strings, ids = [], []
    for s in items:
        if isinstance(s, str):
            if not s:
                raise ValueError("stop strings must be non-empty")
            strings.append(s)
        elif isinstance(s, int) and not isinstance(s, bool):
            if s < 0:
                raise ValueError(f"stop token ids must be >= 0, got {s}")
            ids.append(s)
        else:  # a ValueError like every other bad request field, so callers catch one type
            raise ValueError(f"unknown stop type {type(s).__name__} ({s!r}); valid options: str (stop string) or "  # noqa: TRY004
                             "int (stop token id)")
    return tuple(strings), tuple(ids)


@dataclass
class EngineConfig:
    """Engine-wide limits.

    Attributes:
        max_num_seqs: sequences held in cache slots at once (the rest wait in the queue).
        prefill_chunk_size: most prompt tokens of one sequence computed in one step.
        max_prefill_tokens: most prompt tokens (all sequences) computed per step, so a long prompt delays the
            running decodes by at most one chunk per step.
        max_model_len: longest sequence (prompt + generated); default: the model's ``max_position_embeddings``.
        prefix_cache_bytes: memory for reusable states of finished sequences (LRU); 0 turns state reuse off.
        prefix_cache_checkpoints: lightning-state checkpoints kept per cached conversation.
        decode_impl: ``"fast"`` (the engine's lean decode step) or ``"model"`` (``Model``'s layers over the cache,
            the reference).
        input_major_weights: re-lay the model's projection, expert and LM-head weights out input-major in place
            (same values and shapes, transposed strides; see ``runner.input_major_``): CPU matrix-vector products,
            which bound decoding, read them 1.3-2x faster. None: on CPU only.
    """

    max_num_seqs: int = 64
    prefill_chunk_size: int = 512
    max_prefill_tokens: int = 512
    max_model_len: int | None = None
    prefix_cache_bytes: int = 1 << 30
    prefix_cache_checkpoints: int = 4
    decode_impl: str = "fast"
    input_major_weights: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "prefill_chunk_size", "max_prefill_tokens", "prefix_cache_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {self.max_model_len!r}")
        if self.prefix_cache_bytes < 0:
            raise ValueError(f"prefix_cache_bytes must be >= 0 (0 disables state reuse), got {self.prefix_cache_bytes}")
        if self.decode_impl not in DECODE_IMPLS:
            raise ValueError(f"unknown decode_impl {self.decode_impl!r}; valid options: {', '.join(DECODE_IMPLS)}")


DECODE_IMPLS = ("fast", "model")
