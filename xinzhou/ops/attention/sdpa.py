"""Softmax attention through PyTorch's fused ``scaled_dot_product_attention`` (flash / memory-efficient kernels
where the backend has them). Masks come from the same builder as the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xinzhou.ops.attention.mask import build_mask, check_qkv


def attention_sdpa(q, k, v, *, causal=True, cu_seqlens=None, kv_lengths=None, scale=None) -> torch.Tensor:
    """Same contract as :func:`xinzhou.ops.attention.attention`."""
    check_qkv(q, k, v)
    B, Tq, H, D = q.shape
    Tk, G = k.shape[1], k.shape[2]
    q_BHTD, k_BGTD, v_BGTD = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = G != H
    if causal and kv_lengths is None and Tq == Tk:
        if cu_seqlens is None:
            o = F.scaled_dot_product_attention(q_BHTD, k_BGTD, v_BGTD, is_causal=True, scale=scale, enable_gqa=gqa)
        else:  # packed documents: one causal call per document costs Σ L² instead of a dense T² mask
            bounds = cu_seqlens.tolist()
            o = torch.cat([F.scaled_dot_product_attention(q_BHTD[:, :, a:b], k_BGTD[:, :, a:b], v_BGTD[:, :, a:b],
                                                          is_causal=True, scale=scale, enable_gqa=gqa)
                           for a, b in zip(bounds, bounds[1:]) if b > a] or [q_BHTD[:, :, :0]], dim=2)
    else:
        mask = build_mask(Tq, Tk, causal=causal, cu_seqlens=cu_seqlens, kv_lengths=kv_lengths, device=q.device)
        o = F.scaled_dot_product_attention(q_BHTD, k_BGTD, v_BGTD, attn_mask=mask, scale=scale, enable_gqa=gqa)
        if kv_lengths is not None:  # rows with no valid key (pure padding) would be NaN: zero them
            o = o.nan_to_num(0.0)
    return o.transpose(1, 2)
