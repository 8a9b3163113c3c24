"""Boolean attention masks shared by the reference and the SDPA path, so both see exactly the same pattern."""

from __future__ import annotations

import torch


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q [B, Tq, H, D] and k, v [B, Tk, Hkv, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def build_mask(
    Tq: int,
    Tk: int,
    *,
    causal: bool,
    cu_seqlens: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """``[B or 1, 1, Tq, Tk]`` bool mask (True = attend), or None when plain attention needs no mask."""
    mask = None
    if causal:
        qi = torch.arange(Tq, device=device)[:, None]
        kj = torch.arange(Tk, device=device)[None, :]
        if kv_lengths is not None:
            qpos = kv_lengths.to(device)[:, None, None] - Tq + qi[None]  # [B, Tq, 1]
            mask = (kj[None] <= qpos) & (kj[None] < kv_lengths.to(device)[:, None, None])
            return mask[:, None]
        mask = (kj <= qi + (Tk - Tq))[None, None]
    elif kv_lengths is not None:
        kj = torch.arange(Tk, device=device)
        return (kj[None, :] < kv_lengths.to(device)[:, None])[:, None, None, :].expand(-1, 1, Tq, Tk)
    if cu_seqlens is not None:
        if Tq != Tk:
            raise ValueError(f"cu_seqlens needs Tq == Tk (packed self-attention), got {Tq} and {Tk}")
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device)
        doc = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens, output_size=Tq)
        same = (doc[:, None] == doc[None, :])[None, None]
        mask = same if mask is None else mask & same
    return mask
