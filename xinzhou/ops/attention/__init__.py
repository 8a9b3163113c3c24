"""Softmax attention with GQA and bottom-right causal alignment (the query block sits at the end of the keys).

``attention(q, k, v, *, causal, cu_seqlens, kv_lengths, scale, impl)``: ``naive`` is the explicit-softmax fp32
reference; ``sdpa`` uses ``torch.nn.functional.scaled_dot_product_attention`` (the default). RoPE and QK-norm
are applied by the model before calling this op.
"""

from __future__ import annotations

import os

import torch

from xinzhou.ops.attention.naive import attention_naive
from xinzhou.ops.attention.sdpa import attention_sdpa

IMPLS = ("auto", "naive", "sdpa")
ENV_VAR = "XINZHOU_ATTENTION_IMPL"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: ``[B, Tq, H, D]``; k, v: ``[B, Tk, Hkv, D]`` with ``H % Hkv == 0`` (grouped-query attention).
        causal: query i (of Tq) sees keys ``≤ Tk - Tq + i`` (bottom-right alignment, as in a KV cache).
        cu_seqlens: ``[N+1]`` offsets of packed sequences (B == 1, Tq == Tk): block-diagonal causal mask.
        kv_lengths: ``[B]`` valid keys per row of a right-padded cache; row b's queries are its last Tq
            valid positions. Keys past the length are masked.
        scale: defaults to ``1/sqrt(D)``.

    Returns:
        ``o [B, Tq, H, D]`` in q's dtype.
    """
    name = os.environ.get(ENV_VAR, impl) or impl
    if name not in IMPLS:
        raise ValueError(f"unknown attention impl {name!r}; valid options: {', '.join(IMPLS)} (also via ${ENV_VAR})")
    fn = attention_naive if name == "naive" else attention_sdpa
    return fn(q, k, v, causal=causal, cu_seqlens=cu_seqlens, kv_lengths=kv_lengths, scale=scale)


__all__ = ["attention", "attention_naive", "attention_sdpa", "IMPLS"]
