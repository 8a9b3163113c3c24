"""Mixture-of-experts ops: routers (:mod:`routing`), a per-token loop reference (:mod:`naive`) and the sorted
dispatch fast path (:mod:`grouped`) behind one signature, ``moe_experts(..., impl=)``."""

from __future__ import annotations

import os

import torch

from xinzhou.ops.moe.grouped import moe_grouped
from xinzhou.ops.moe.naive import moe_naive
from xinzhou.ops.moe.routing import ROUTERS, expert_counts, load_balance_loss, route

IMPLS = ("auto", "naive", "grouped")
ENV_VAR = "XINZHOU_MOE_IMPL"


def moe_experts(
    x_ND: torch.Tensor,
    w_NK: torch.Tensor,
    idx_NK: torch.Tensor,
    gate_up_E2FD: torch.Tensor,
    down_EDF: torch.Tensor,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Weighted sum of each token's chosen SwiGLU experts.

    Args:
        x_ND: ``[N, D]`` tokens. w_NK: ``[N, K]`` router weights. idx_NK: ``[N, K]`` expert ids.
        gate_up_E2FD: ``[E, 2F, D]`` — rows ``[:F]`` are w1 (gate, through SiLU), ``[F:]`` are w3 (up).
        down_EDF: ``[E, D, F]`` — w2.
        impl: ``"auto" | "naive" | "grouped"`` (env ``XINZHOU_MOE_IMPL`` overrides).

    Returns:
        ``[N, D]`` in x's dtype: ``Σ_k w[n,k] · w2_e(silu(w1_e x) * w3_e x)`` with ``e = idx[n,k]``.
    """
    name = os.environ.get(ENV_VAR, impl) or impl
    if name not in IMPLS:
        raise ValueError(f"unknown MoE impl {name!r}; valid options: {', '.join(IMPLS)} (also via ${ENV_VAR})")
    fn = moe_naive if name == "naive" else moe_grouped
    return fn(x_ND, w_NK, idx_NK, gate_up_E2FD, down_EDF)


__all__ = ["moe_experts", "moe_naive", "moe_grouped", "route", "load_balance_loss", "expert_counts", "ROUTERS"]
