"""Per-token log-probabilities and entropy from logits in fp32, and the rollout-vs-trainer probability check.

Why: M1 found that bf16 LM-head logits made the trainer's probabilities disagree with the sampler's (correlation
about 0.9x) and that computing the head in fp32 fixed it (0.99x); ScaleRL's fp32-logits fix raised its asymptote
from 0.52 to 0.61. The importance ratio is only meaningful if both sides use the same numerics, so every logprob
the RL code computes goes through `token_logprobs`, which upcasts to fp32, and `probability_correlation` is the
metric M1 reports every step to catch a mismatch.

Letters: B sequences, T tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits_BTV: Tensor, ids_BT: Tensor) -> Tensor:
    """log π(ids[:, t] | ids[:, <t]) in fp32, aligned with `ids`: position t holds the logprob of token t.

    `logits_BTV[:, t]` predicts token t+1 (a causal LM's output for `ids`), so position 0 (no context) is 0.
    Computed as `gather - logsumexp`, which does not materialise a second [B, T, V] log-softmax.
    """
    if logits_BTV.dim() != 3 or logits_BTV.shape[:2] != ids_BT.shape:
        raise ValueError(f"logits must be [B, T, V] matching ids [B, T]; got {tuple(logits_BTV.shape)}, "
                         f"{tuple(ids_BT.shape)}")
    logits = logits_BTV[:, :-1].float()
    picked = logits.gather(-1, ids_BT[:, 1:, None]).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(logp, (1, 0))


def token_entropy(logits_BTV: Tensor) -> Tensor:
    """Entropy (nats) of the next-token distribution, in fp32, aligned like `token_logprobs` (position 0 is 0)."""
    logp = torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
    return torch.nn.functional.pad(-(logp.exp() * logp).sum(-1), (1, 0))


def probability_correlation(logp_a_BT: Tensor, logp_b_BT: Tensor, mask_BT: Tensor) -> float:
    """Pearson correlation of the token probabilities `exp(logp)` of two policies over the masked tokens.

    M1 Fig. 3 compares rollout-engine and trainer probabilities this way (0.987 -> 0.997 with the fp32 head).
    Returns nan when fewer than two tokens are masked in or one side is constant.
    """
    m = mask_BT.bool()
    a = logp_a_BT.detach()[m].double().exp()
    b = logp_b_BT.detach()[m].double().exp()
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
