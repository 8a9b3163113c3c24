"""Scoring a prompt: the log-probability of each of its tokens given the ones before (and the most likely
alternatives), the "prompt logprobs" that evaluation harnesses ask for (OpenAI completions with ``echo`` and
``logprobs``, as lm-evaluation-harness scores multiple-choice answers).

Why apart from generation: a scored prompt needs logits at *every* position, while generation needs them only at
the last. The prompt runs through the model in chunks over a private :class:`~xinzhou.model.cache.HybridCache`
(bounded memory: ``chunk x vocabulary`` logits at a time, lightning state carried across chunks), never touching
the engine's slots or prefix cache. The LM head is the model's own (fp32 when ``fp32_lm_head``), as in decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xinzhou.model.model import Model


@dataclass
class PromptScores:
    """Per prompt token ``t``: ``logprobs[t] = log p(token_t | tokens_<t)`` and ``top_logprobs[t]`` the ``k`` most
    likely ``(id, logprob)`` at that position, most likely first; both None for the first token (no context)."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


@torch.inference_mode()
def score_prompt(model: Model, ids: list[int], top_logprobs: int = 0, chunk: int = 512) -> PromptScores:
    """Score ``ids`` (already validated) with ``model``; ``top_logprobs`` alternatives per position (0: none)."""
    device = model.lm_head.weight.device
    cache = model.new_cache(1)
    logprobs: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    x = torch.tensor(ids, device=device)
    for start in range(0, len(ids) - 1, chunk):  # positions start..end-1 predict tokens start+1..end
        end = min(start + chunk, len(ids) - 1)
        logp = torch.log_softmax(model(x[None, start:end], cache=cache).logits[0].float(), dim=-1)
        logprobs += logp.gather(-1, x[start + 1 : end + 1, None])[:, 0].tolist()
        if top_logprobs:
            vals, idx = logp.topk(top_logprobs, dim=-1)
            tops += [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
        else:
            tops += [None] * (end - start)
    return PromptScores(list(ids), logprobs, tops)
