"""Turning a batch of fp32 logits into tokens, one row per sequence, each row with its own settings and its own
random generator.

Why per-row generators: a request's samples must not depend on what else is in the batch (reproducible RL
rollouts, ``seed=`` in the API). Each sampled row draws exactly one uniform number per step from its own
``torch.Generator`` and picks a token by inverse CDF over the filtered distribution; greedy rows draw nothing.

:func:`sampling_probs` is the whole filtering rule (temperature → top-k → top-p) as one pure function, so tests
check it against hand-computed distributions and the sampler uses exactly what was tested.

Letters: B rows, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


def sampling_probs(
    logits_BV: torch.Tensor, temperature_B: torch.Tensor, top_k_B: torch.Tensor, top_p_B: torch.Tensor
) -> torch.Tensor:
    """The distribution each row samples from, fp32 ``[B, V]`` in vocabulary order.

    * ``temperature == 0``: one-hot at the argmax (ties: lowest id).
    * ``top_k > 0``: keep the ``top_k`` largest logits (ties: lower id first).
    * ``top_p < 1``: after top-k, keep the shortest prefix of the tokens sorted by probability whose mass reaches
      ``top_p`` (a token is kept when the mass *before* it is below ``top_p``; the most likely token always is).
    Kept probabilities are renormalised to sum to 1.
    """
    logits_BV = logits_BV.float()
    V = logits_BV.shape[-1]
    greedy_B = temperature_B <= 0
    scaled_BV = logits_BV / torch.where(greedy_B, 1.0, temperature_B.float())[:, None]
    sorted_BV, order_BV = torch.sort(scaled_BV, dim=-1, descending=True, stable=True)
    rank_V = torch.arange(V, device=logits_BV.device)
    k_B = torch.where(top_k_B > 0, top_k_B, V).clamp(max=V)
    k_B = torch.where(greedy_B, 1, k_B)
    keep_BV = rank_V[None] < k_B[:, None]
    probs_BV = torch.softmax(sorted_BV.masked_fill(~keep_BV, float("-inf")), dim=-1)
    mass_before_BV = probs_BV.cumsum(-1) - probs_BV
    keep_BV &= (mass_before_BV < top_p_B.float()[:, None]) | (rank_V[None] == 0)
    probs_BV = torch.where(keep_BV, probs_BV, 0.0)
    probs_BV = probs_BV / probs_BV.sum(-1, keepdim=True)
    return torch.zeros_like(probs_BV).scatter_(-1, order_BV, probs_BV)


def sample_from_probs(probs_BV: torch.Tensor, uniform_B: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first token whose cumulative probability exceeds ``u``; int64 ``[B]``.
    Zero-probability tokens are never chosen."""
    cdf_BV = probs_BV.cumsum(-1)
    target_B1 = (uniform_B.to(cdf_BV.dtype) * cdf_BV[:, -1])[:, None]
    idx_B = torch.searchsorted(cdf_BV, target_B1, right=True)[:, 0]
    return idx_B.clamp_(max=probs_BV.shape[-1] - 1)


def token_logprobs(logits_BV: torch.Tensor, tokens_B: torch.Tensor) -> torch.Tensor:
    """Raw-model log-probability of each chosen token: ``log_softmax`` of the fp32 logits at temperature 1."""
    return torch.log_softmax(logits_BV.float(), dim=-1).gather(-1, tokens_B[:, None])[:, 0]


@dataclass
class SampleRow:
    """One row's sampling settings (taken from its request's :class:`SamplingParams`)."""

    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator
    processed_logprobs: bool = False  # also report log q(token), q the distribution the row sampled from


class Sampled(NamedTuple):
    """One step's draw: ``tokens`` [B] int64; ``logprobs`` [B] fp32 raw-model logprobs (None unless asked);
    ``processed`` [B] fp32 when a row asks for ``processed_logprobs``: every row's token's log-probability under
    the distribution that row sampled from (temperature, top-k, top-p applied and renormalised; 0 for greedy rows,
    whose distribution is one-hot), the behaviour policy an RL trainer must divide by (TRL #4159, vLLM
    ``processed_logprobs``); None otherwise."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    processed: torch.Tensor | None = None


class Sampler:
    """Batched sampling with per-row settings. Greedy-only batches cost one ``argmax``; rows that need no
    filtering skip the sort (a plain softmax and an inverse-CDF draw)."""

    def __call__(self, logits_BV: torch.Tensor, rows: list[SampleRow], need_logprobs: bool) -> Sampled:
        """Draw one token per row (see :class:`Sampled`).

        A row's path depends only on its own settings (never on the other rows), so its result does not
        depend on the batch it is in."""
        tokens_B = logits_BV.argmax(-1)
        want_processed = any(r.processed_logprobs for r in rows)
        processed_B = torch.zeros(len(rows), dtype=torch.float32, device=logits_BV.device) if want_processed else None
        plain = [i for i, r in enumerate(rows) if r.temperature > 0 and r.top_k == 0 and r.top_p >= 1]
        filtered = [i for i, r in enumerate(rows) if r.temperature > 0 and (r.top_k > 0 or r.top_p < 1)]
        for idx in (plain, filtered):
            if not idx:
                continue
            dev = logits_BV.device
            sub_BV = logits_BV if len(idx) == len(rows) else logits_BV[idx]
            sub_rows = [rows[i] for i in idx]
            u_B = torch.cat([torch.rand(1, generator=r.generator) for r in sub_rows]).to(dev)
            temp_B = torch.tensor([r.temperature for r in sub_rows], device=dev)
            if idx is plain:
                probs_BV = torch.softmax(sub_BV.float() / temp_B[:, None], dim=-1)
            else:
                top_k_B = torch.tensor([r.top_k for r in sub_rows], device=dev)
                top_p_B = torch.tensor([r.top_p for r in sub_rows], device=dev)
                probs_BV = sampling_probs(sub_BV, temp_B, top_k_B, top_p_B)
            chosen_B = sample_from_probs(probs_BV, u_B)
            tokens_B[idx] = chosen_B
            if processed_B is not None:
                if idx is plain:  # exact log-softmax rather than the log of a rounded probability
                    lp_B = token_logprobs(sub_BV.float() / temp_B[:, None], chosen_B)
                else:
                    lp_B = probs_BV.gather(-1, chosen_B[:, None])[:, 0].log()
                processed_B[idx] = lp_B
        logprobs_B = token_logprobs(logits_BV, tokens_B) if need_logprobs else None
        return Sampled(tokens_B, logprobs_B, processed_B)
