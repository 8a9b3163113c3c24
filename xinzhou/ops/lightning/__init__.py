"""Lightning attention (MiniMax-Text-01 / M1 linear attention with per-head exponential decay).

One entry point, :func:`lightning_attn`, over several implementations that compute the same thing:

=============  =====================================================================================
``naive``      fp32/fp64 oracle (quadratic masked-decay form, or step recurrence) — tests only
``chunk``      Lightning Attention-2 blocked form, vectorised across blocks, differentiable (CPU default)
``recurrent``  step recurrence on a carried state (decode: one or a few new tokens)
``triton``     GPU kernels (when available)
=============  =====================================================================================

``impl="auto"`` picks ``triton`` on CUDA when it is importable (fp16/bf16/fp32, head dim ≤ 256), ``recurrent``
for T ≤ 4 with a carried state, and ``chunk`` otherwise. The environment variable ``XINZHOU_LIGHTNING_IMPL`` overrides the choice, so a test or a
bug report can force a path. See README.md beside this file for the math.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from xinzhou.ops.lightning.chunk import lightning_attn_chunk
from xinzhou.ops.lightning.naive import lightning_attn_naive
from xinzhou.ops.lightning.recurrent import lightning_attn_recurrent

IMPLS = ("auto", "naive", "chunk", "recurrent", "triton")
ENV_VAR = "XINZHOU_LIGHTNING_IMPL"


def _triton_fn():
    from xinzhou.ops.lightning.triton import lightning_attn_triton  # noqa: PLC0415 (optional dependency)

    return lightning_attn_triton


def resolve_impl(impl: str, q: torch.Tensor, has_state: bool) -> str:
    """Name of the implementation that ``impl`` selects for this input (after the env override)."""
    impl = os.environ.get(ENV_VAR, impl) or impl
    if impl not in IMPLS:
        raise ValueError(f"unknown lightning impl {impl!r}; valid options: {', '.join(IMPLS)} (also via ${ENV_VAR})")
    if impl != "auto":
        return impl
    if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and q.shape[-1] <= 256
            and importlib.util.find_spec("triton") is not None and _has_triton_module()):
        return "triton"
    if has_state and q.shape[1] <= 4:
        return "recurrent"
    return "chunk"


def _has_triton_module() -> bool:
    return importlib.util.find_spec("xinzhou.ops.lightning.triton") is not None


def lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lightning attention: ``S_t = exp(-slope) S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t`` per head.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` — already activated (SiLU), no scaling is applied.
        slope: ``[H]`` positive fp32 decay rates (per-step decay ``exp(-slope)``).
        initial_state: ``[B, H, K, V]`` fp32 (``[N, H, K, V]`` with ``cu_seqlens``), or None for zeros.
        output_final_state: return the state after each sequence's last token.
        cu_seqlens: ``[N+1]`` int32/int64 offsets of packed sequences; requires B == 1. The state resets at
            every sequence start, so packed documents never see each other.
        impl: ``"auto" | "naive" | "chunk" | "recurrent" | "triton"``.

    Returns:
        ``(o, final_state)``: o ``[B, T, H, V]`` in q's dtype; final_state ``[B or N, H, K, V]`` fp32, or None.
    """
    name = resolve_impl(impl, q, initial_state is not None)
    kwargs = dict(initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if name == "chunk":
        return lightning_attn_chunk(q, k, v, slope, **kwargs)
    if name == "recurrent":
        return lightning_attn_recurrent(q, k, v, slope, **kwargs)
    if name == "naive":
        return lightning_attn_naive(q, k, v, slope, **kwargs)
    return _triton_fn()(q, k, v, slope, **kwargs)


__all__ = [
    "lightning_attn",
    "lightning_attn_chunk",
    "lightning_attn_naive",
    "lightning_attn_recurrent",
    "resolve_impl",
    "IMPLS",
]
