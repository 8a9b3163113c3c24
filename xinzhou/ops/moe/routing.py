"""MoE routers and the load-balance loss, as pure functions.

* Text-01 / M1: ``softmax`` over expert logits (fp32), top-k, weights renormalised to sum 1.
* M2: ``sigmoid`` scores (fp32); experts are *chosen* on ``score + bias`` (aux-loss-free balancing) but
  *weighted* by the unbiased scores, renormalised to sum 1.

Letters: N tokens, E experts, K experts per token.
"""

from __future__ import annotations

import torch

ROUTERS = ("softmax", "sigmoid")


def route(
    logits_NE: torch.Tensor, top_k: int, kind: str, bias_E: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(weights [N, K] fp32, experts [N, K] int64, probs [N, E] fp32)``.

    ``probs`` are the router's full distribution (softmax) or scores (sigmoid), used by the aux loss.
    """
    logits_NE = logits_NE.float()
    if kind == "softmax":
        probs_NE = torch.softmax(logits_NE, dim=-1)
        w_NK, idx_NK = torch.topk(probs_NE, top_k, dim=-1)
    elif kind == "sigmoid":
        probs_NE = torch.sigmoid(logits_NE)
        choice_NE = probs_NE if bias_E is None else probs_NE + bias_E.float()
        idx_NK = torch.topk(choice_NE, top_k, dim=-1).indices
        w_NK = probs_NE.gather(-1, idx_NK)
    else:
        raise ValueError(f"unknown router {kind!r}; valid options: {', '.join(ROUTERS)}")
    w_NK = w_NK / w_NK.sum(-1, keepdim=True)
    return w_NK, idx_NK, probs_NE


def expert_counts(idx_NK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens routed to each expert (``[E]`` int64), counting every top-k slot."""
    return torch.bincount(idx_NK.reshape(-1), minlength=num_experts)


def load_balance_loss(probs_NE: torch.Tensor, idx_NK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard auxiliary loss ``E · Σ_e f_e · P_e``.

    ``f_e`` is the fraction of routed slots that chose expert e and ``P_e`` the mean router probability of e.
    It equals 1 for a perfectly uniform router and grows as routing collapses. Multiply by the config's
    ``router_aux_loss_coef`` before adding to the LM loss (transformers' ``load_balancing_loss_func`` computes
    the same quantity for softmax routers).
    """
    if probs_NE.shape[0] == 0:
        return probs_NE.new_zeros(())
    f_E = expert_counts(idx_NK, num_experts).to(probs_NE.dtype) / idx_NK.numel()
    p_E = probs_NE.mean(0)
    return num_experts * (f_E * p_E).sum()
