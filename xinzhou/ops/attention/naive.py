"""Reference softmax attention: explicit scores, mask and softmax in fp32 (fp64 for fp64 inputs).

Letters: B batch, Tq/Tk query/key time, H query heads, G key/value heads, D head dim.
"""

from __future__ import annotations

import math

import torch

from xinzhou.ops.attention.mask import build_mask, check_qkv


def attention_naive(q, k, v, *, causal=True, cu_seqlens=None, kv_lengths=None, scale=None) -> torch.Tensor:
    """Same contract as :func:`xinzhou.ops.attention.attention`."""
    check_qkv(q, k, v)
    B, Tq, H, D = q.shape
    Tk, G = k.shape[1], k.shape[2]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k_BTHD = k.to(dt).repeat_interleave(H // G, dim=2)
    v_BTHD = v.to(dt).repeat_interleave(H // G, dim=2)
    s_BHQK = torch.einsum("bqhd,bkhd->bhqk", q.to(dt), k_BTHD) * scale
    mask = build_mask(Tq, Tk, causal=causal, cu_seqlens=cu_seqlens, kv_lengths=kv_lengths, device=q.device)
    if mask is not None:
        s_BHQK = s_BHQK.masked_fill(~mask, float("-inf"))
    p_BHQK = torch.softmax(s_BHQK, dim=-1).nan_to_num(0.0)  # a fully masked row (padding) gives zeros
    return torch.einsum("bhqk,bkhd->bqhd", p_BHQK, v_BTHD).to(q.dtype)
