"""Shared input checks and dtype policy for every lightning-attention implementation, so all paths accept and
reject exactly the same inputs and keep their state in the same precision."""

from __future__ import annotations

import torch


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and decay arithmetic run in fp32 whatever the activations (fp64 stays fp64 for oracles)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> int:
    """Validate shapes; return the number of independent sequences (B, or N with ``cu_seqlens``)."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k [B, T, H, K] and v [B, T, H, V] with equal B, T, H; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    if slope.shape != (H,):
        raise ValueError(f"slope must have shape [H] = [{H}], got {tuple(slope.shape)}")
    n_seq = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens requires batch size 1 (packed input), got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be a 1-D tensor [N+1], got shape {tuple(cu_seqlens.shape)}")
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"cu_seqlens must rise from 0 to T={T}, got {cu}")
        n_seq = len(cu) - 1
    if initial_state is not None and tuple(initial_state.shape) != (n_seq, H, K, V):
        raise ValueError(
            f"initial_state must have shape [{'N' if cu_seqlens is not None else 'B'}, H, K, V] = "
            f"{[n_seq, H, K, V]}, got {tuple(initial_state.shape)}"
        )
    return n_seq
