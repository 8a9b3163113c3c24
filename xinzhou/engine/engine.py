"""The engine loop: requests in, one scheduled step at a time, tokens out.

:class:`Engine` ties the parts together: requests are validated into :class:`Sequence` objects (a bad request
raises ``ValueError`` here, before it can touch a running batch), the :class:`Scheduler` plans each step, the
:class:`ModelRunner` computes logits, the :class:`Sampler` picks tokens, and finished sequences leave their state
in the :class:`PrefixCache` for the next turn. ``step()`` returns one :class:`StreamOutput` per new token, so
``LLM.generate`` and ``LLM.stream`` are thin loops over it. A failure while post-processing one sequence
(detokenising, stop checks) finishes that sequence with reason ``"error"``; the others carry on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from typing import Any

import torch

from xinzhou.engine.cache_manager import CacheManager
from xinzhou.engine.detokenizer import IncrementalText, TokenizerAdapter
from xinzhou.engine.params import MAX_TOP_LOGPROBS, EngineConfig, SamplingParams
from xinzhou.engine.prefix_cache import Checkpoint, PrefixCache
from xinzhou.engine.runner import ModelRunner
from xinzhou.engine.scoring import PromptScores, score_prompt
from xinzhou.engine.sampler import Sampler, SampleRow
from xinzhou.engine.scheduler import Scheduler
from xinzhou.engine.sequence import RequestOutput, Sequence, Status, StreamOutput
from xinzhou.model.model import Model

Prompt = str | Seq[int] | torch.Tensor


class Engine:
    """Continuous-batching generation over one model. Use :class:`xinzhou.engine.LLM` for the offline API."""

    def __init__(self, model: Model, tokenizer: Any = None, config: EngineConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config or EngineConfig()
        cfg = model.config
        self.max_model_len = self.config.max_model_len or cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        weight = model.embed_tokens.weight
        self.cache = CacheManager(cfg, max_slots=self.config.max_num_seqs, dtype=weight.dtype, device=weight.device)
        self.prefix = PrefixCache(self.config.prefix_cache_bytes, self.config.prefix_cache_checkpoints)
        input_major = self.config.input_major_weights
        if input_major is None:
            input_major = weight.device.type == "cpu"
        self.runner = ModelRunner(model, self.cache, self.config.decode_impl, input_major)
        self.scheduler = Scheduler(self.cache, self.prefix, self.config)
        self.sampler = Sampler()
        self.tokenizer = TokenizerAdapter(tokenizer) if tokenizer is not None else None
        eos = cfg.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer is not None:
            self.eos_ids |= self.tokenizer.eos_ids
        self._seqs: dict[int, Sequence] = {}
        self._outputs: dict[int, RequestOutput] = {}
        self._next_id = 0

    # ----------------------------------------------------------------------------------------- requests
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (text needs a tokenizer), validated: non-empty, in the vocabulary, shorter than
        the model's context."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer: pass tokenizer= to LLM/Engine, load a checkpoint "
                                 "that has tokenizer.json, or give token ids")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.is_floating_point():
                raise ValueError(f"a tensor prompt must be 1-D token ids, got {prompt.dtype} {tuple(prompt.shape)}")
            ids = prompt.tolist()
        else:
            try:
                ids = list(prompt)
            except TypeError:
                raise ValueError(f"a prompt must be a str or a sequence of token ids, got "
                                 f"{type(prompt).__name__}") from None
            bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int)), None)
            if bad is not None:
                raise ValueError(f"token ids must be ints, got {type(bad).__name__} ({bad!r})")
        if not ids:
            raise ValueError("the prompt is empty: give at least one token (no BOS is added automatically)")
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}) (vocab_size); got range [{lo}, {hi}]")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is {self.max_model_len} "
                             f"(max_model_len), so at most {self.max_model_len - 1} prompt tokens fit")
        return ids

    def score(self, prompt: Prompt, top_logprobs: int = 0) -> PromptScores:
        """Log-probabilities of the prompt's own tokens (``scoring.py``); runs at once, outside the batch."""
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) \
                or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be an int in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs!r}")
        return score_prompt(self.runner.model, self.encode(prompt), top_logprobs)

    def make_sequence(self, prompt: Prompt, params: SamplingParams | None = None, *, stream: bool = False,
                      history: RequestOutput | None = None, forced: Prompt | None = None) -> Sequence:
        """Validate one request into a :class:`Sequence` without touching the engine (raises ``ValueError``).
        With ``history`` (an earlier output), the sequence continues it after the ``forced`` tokens."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams or None, got {type(params).__name__}")
        if params.stop_strings and self.tokenizer is None:
            raise ValueError(f"stop strings {list(params.stop_strings)} need a tokenizer; give stop token ids")
        bad = [t for t in params.stop_token_ids if t >= self.vocab_size]
        if bad:
            raise ValueError(f"stop token ids {bad} are outside the vocabulary [0, {self.vocab_size})")
        if history is None:
            ids, prompt_len, mask, logprobs, top = self.encode(prompt), None, [], [], []
        else:
            forced_ids = self.encode(forced) if forced is not None and len(forced) else []
            ids = list(history.all_token_ids) + forced_ids
            if len(ids) >= self.max_model_len:
                raise ValueError(f"the continued sequence has {len(ids)} tokens; the model's context is "
                                 f"{self.max_model_len} (max_model_len)")
            prompt_len = len(history.prompt_token_ids)
            mask = list(history.mask) + [0] * len(forced_ids)
            logprobs = list(history.logprobs) + [None] * len(forced_ids)
            top = list(history.top_logprobs or [None] * len(history.token_ids)) + [None] * len(forced_ids)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        seq = Sequence(-1, params, ids, len(ids) if prompt_len is None else prompt_len,
                       torch.Generator().manual_seed(seed), frozenset(stop_ids), mask, logprobs, top)
        if self.tokenizer is not None:
            seq.text = IncrementalText(self.tokenizer, params.stop_strings, seq.completion_ids,
                                       incremental=stream or bool(params.stop_strings))
        return seq

    def submit(self, seq: Sequence, index: int = 0) -> int:
        """Queue a sequence from :meth:`make_sequence`; returns its request id."""
        seq.request_id, seq.index = self._next_id, index
        self._next_id += 1
        self._seqs[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq.request_id

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, **kwargs) -> int:
        """Validate and queue one request (``stream``, ``history``, ``forced`` as in :meth:`make_sequence`)."""
        return self.submit(self.make_sequence(prompt, params, **kwargs))

    @torch.inference_mode()
    def abort(self, request_id: int) -> None:
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def pop_output(self, request_id: int) -> RequestOutput:
        """The output of a finished request (once)."""
        return self._outputs.pop(request_id)

    def discard_output(self, request_id: int) -> None:
        self._outputs.pop(request_id, None)

    def cache_bytes(self) -> dict[str, int]:
        """Bytes of live sequences' state (``lightning_state``, ``kv``, ``total``), the slot buffers' allocation,
        and the prefix cache."""
        return {**self.cache.nbytes(), "prefix_cache": self.prefix.nbytes}

    # ------------------------------------------------------------------------------------------- a step
    @torch.inference_mode()
    def step(self) -> list[StreamOutput]:
        """Run one scheduled step; one event per sampled token (the last one of a request has ``finished``)."""
        plan = self.scheduler.schedule()
        rows: list[Sequence] = list(plan.ready)
        logits: list[torch.Tensor] = [s.pending_logits[None] for s in plan.ready]
        for s in plan.ready:
            s.pending_logits = None
        if plan.prefill:
            T = plan.chunk
            self.cache.reserve(max(s.num_computed for s in plan.prefill) + T)
            ids = torch.tensor([s.token_ids[s.num_computed : s.num_computed + T] for s in plan.prefill],
                               device=self.cache.device)
            out = self.runner.prefill(ids, [s.slot for s in plan.prefill])
            done = []
            for i, s in enumerate(plan.prefill):
                s.num_computed += T
                if s.num_uncomputed == 0:
                    done.append(i)
            if done:
                rows += [plan.prefill[i] for i in done]
                logits.append(out if len(done) == len(plan.prefill) else out[done])
        if plan.decode:
            self.cache.reserve(max(s.num_computed for s in plan.decode) + 1)
            ids = torch.tensor([s.token_ids[-1] for s in plan.decode], device=self.cache.device)
            logits.append(self.runner.decode(ids))
            for s in plan.decode:
                s.num_computed += 1
            rows += plan.decode
        if not rows:
            return []
        logits_BV = logits[0] if len(logits) == 1 else torch.cat(logits)
        need_lp = any(s.params.logprobs or s.params.repetition_stop for s in rows)
        sample_rows = [SampleRow(s.params.temperature, s.params.top_k, s.params.top_p, s.generator,
                                 s.params.logprobs and s.params.logprobs_mode == "processed") for s in rows]
        drawn = self.sampler(logits_BV, sample_rows, need_lp)
        tokens = drawn.tokens.tolist()
        lps = drawn.logprobs.tolist() if drawn.logprobs is not None else [None] * len(rows)
        processed = drawn.processed.tolist() if drawn.processed is not None else None
        top = _top_logprobs(logits_BV, [s.params.top_logprobs for s in rows])
        events = []
        for i, s in enumerate(rows):
            try:
                events.append(self._accept(s, tokens[i], lps[i], logits_BV[i],
                                           processed[i] if sample_rows[i].processed_logprobs else None, top[i]))
            except Exception as e:  # noqa: BLE001 (one request's failure must not take the batch down)
                s.error = f"{type(e).__name__}: {e}"
                events.append(self._finish(s, "error"))
        return events

    def _accept(self, seq: Sequence, token: int, logprob: float | None, logits_V: torch.Tensor,
                processed: float | None = None, top: list[tuple[int, float]] | None = None) -> StreamOutput:
        """``logprob`` is the raw model's (repetition stop uses it); ``processed`` the sampling distribution's,
        reported instead when the request asked for ``logprobs_mode="processed"``."""
        p = seq.params
        if seq.num_sampled == 0 and self.prefix.max_bytes > 0 and seq.num_cached_tokens != len(seq.token_ids):
            seq.checkpoints.append(Checkpoint(seq.num_computed, self.cache.read_state(seq.slot), logits_V.clone()))
        seq.last_logits = logits_V
        seq.token_ids.append(token)
        seq.mask.append(1)
        reported = processed if processed is not None else logprob
        seq.logprobs.append(reported if p.logprobs else None)
        seq.top_logprobs.append(top)
        seq.num_sampled += 1
        reason = None
        stopped_by_string = seq.text is not None and seq.text.append(token)
        if stopped_by_string:  # the text is cut at the string, so it is what ended the request
            reason, seq.stop_reason = "stop", seq.text.stopped_by
        elif token in seq.stop_ids:
            is_eos = token in self.eos_ids and not p.ignore_eos  # the model's own end: no stop_reason (as vLLM)
            reason, seq.stop_reason = "stop", None if is_eos or token not in p.stop_token_ids else token
        elif p.repetition_stop is not None:
            n, threshold = p.repetition_stop
            seq.confident_run = seq.confident_run + 1 if logprob > _log(threshold) else 0
            if seq.confident_run >= n:
                reason = "repetition"
        if reason is None and (seq.num_sampled >= p.max_tokens or len(seq.token_ids) >= self.max_model_len):
            reason = "length"
        if reason is not None:
            return self._finish(seq, reason, token, reported, top)
        delta = seq.text.stream_delta(False) if seq.text is not None and seq.text.incremental else ""
        return StreamOutput(seq.index, seq.request_id, token, delta, reported, top_logprobs=top)

    def _finish(self, seq: Sequence, reason: str, token: int | None = None,
                logprob: float | None = None, top: list[tuple[int, float]] | None = None) -> StreamOutput:
        if seq.status == Status.RUNNING and reason in ("stop", "length", "repetition"):
            self._save_prefix(seq)
        self.scheduler.remove(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason
        seq.pending_logits = seq.last_logits = None
        delta = ""
        if seq.text is not None:
            try:
                delta = seq.text.stream_delta(True)
            except Exception as e:  # noqa: BLE001 (reported on the sequence, never raised into the batch)
                seq.error, seq.finish_reason, seq.text = f"{type(e).__name__}: {e}", "error", None
        if seq.finish_reason != "stop":
            seq.stop_reason = None
        self._outputs[seq.request_id] = seq.to_output()
        del self._seqs[seq.request_id]
        return StreamOutput(seq.index, seq.request_id, token, delta, logprob, True, seq.finish_reason,
                            seq.stop_reason, top)

    def _save_prefix(self, seq: Sequence) -> None:
        """Leave the finished sequence's state in the prefix cache (the last token was sampled, not computed)."""
        if self.prefix.max_bytes <= 0 or seq.last_logits is None:
            return
        state, kv = self.cache.read(seq.slot)
        n = seq.num_computed
        cps = [c for c in seq.checkpoints if c.pos < n] + [Checkpoint(n, state, seq.last_logits.clone())]
        self.prefix.insert(seq.token_ids[:n], kv, cps)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else float("-inf")


def _top_logprobs(logits_BV: torch.Tensor, ks: list[int]) -> list[list[tuple[int, float]] | None]:
    """Per row, its ``k`` most likely tokens and their raw-model fp32 logprobs (None where ``k`` is 0): one
    ``topk`` over the rows that ask, at the largest ``k``."""
    rows = [i for i, k in enumerate(ks) if k]
    out: list[list[tuple[int, float]] | None] = [None] * len(ks)
    if not rows:
        return out
    sub = logits_BV[rows].float()
    vals, ids = torch.log_softmax(sub, dim=-1).topk(max(ks[i] for i in rows), dim=-1)
    for r, v, t in zip(rows, vals.tolist(), ids.tolist()):
        out[r] = list(zip(t[: ks[r]], v[: ks[r]]))
    return out
