"""Triton lightning attention: the GPU path behind ``impl="triton"`` (and ``impl="auto"`` on CUDA tensors).

Why it exists: the chunked torch path (``chunk.py``) materialises per-block decay masks and loops over blocks in
Python; on a GPU the same Lightning-Attention-2 algorithm runs as four Triton kernels (``triton_kernels.py``):

* forward: a sequential state scan (fp32 state, one program per sequence × head × V tile) that stores the state
  before every chunk, then a chunk-parallel output pass;
* backward (``torch.autograd.Function``): recompute those states, the same scan in reverse for the state
  gradients (which also yields the gradient of ``initial_state``, so training can carry state across segments),
  then one chunk-parallel pass for dq, dk, dv;
* decode: one token per sequence over a batch (or a slot-indexed pool) of fp32 states, updated in place.

Packed sequences (``cu_seqlens``) are handled inside the kernels through a host-built table of (sequence, chunk)
pairs; nothing is padded. The slope gets no gradient (it is a fixed buffer). Numerics: decays, the carried state
and the final state are fp32; the per-chunk state snapshots that feed the output and gradient matmuls are stored
in bf16 for bf16 inputs (like flash-linear-attention; halves their memory traffic) and in fp32 otherwise; fp32
inputs use 3-pass TF32 (``tf32x3``) matmuls, close to fp32 accuracy.

This module imports without triton; calling it then raises a ``RuntimeError`` naming ``pip install triton``. On
a machine without a GPU the kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (tests; about 1000× slower).

Letters: B batch, T time, H heads, K key dim, V value dim, N sequences, S state slots, C chunks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from types import ModuleType
from typing import NamedTuple

import torch

from xinzhou.ops.lightning.common import check_inputs, state_dtype

DEFAULT_CHUNK = 64
CHUNK_SIZES = (16, 32, 64, 128)
MAX_K = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Tensor = torch.Tensor


def _kernels(*tensors: torch.Tensor) -> ModuleType:
    """The kernel module, after checking that triton is installed and the tensors can run on it."""
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("lightning impl='triton' needs triton: pip install triton (or use impl='chunk')")
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not interpret and not all(t.is_cuda for t in tensors):
        raise RuntimeError(
            "lightning impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on CPU); "
            "use impl='chunk' on CPU"
        )
    from xinzhou.ops.lightning import triton_kernels  # noqa: PLC0415 (optional dependency, decorated lazily)

    if triton_kernels.INTERPRET != interpret:
        raise RuntimeError("TRITON_INTERPRET changed after the kernels were compiled; set it before the first call")
    return triton_kernels


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU (triton launches on the current device, which may be another one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _Spans(NamedTuple):
    """Where each sequence and chunk lives in the flattened ``[B·T, H, D]`` tensors."""

    cu_N1: torch.Tensor  # int64 [N+1] sequence starts
    chunk_offsets_N1: torch.Tensor  # int64 [N+1] index of each sequence's first chunk in the snapshot tensors
    chunk_indices_C2: torch.Tensor  # int64 [C, 2] (sequence, chunk within the sequence) per global chunk
    n_seq: int
    n_chunks: int


def _spans(cu_seqlens: torch.Tensor | None, B: int, T: int, BT: int, device: torch.device) -> _Spans:
    if cu_seqlens is None:
        nt = -(-T // BT)
        cu = torch.arange(B + 1, device=device, dtype=torch.int64) * T
        offsets = torch.arange(B + 1, device=device, dtype=torch.int64) * nt
        c = torch.arange(B * nt, device=device, dtype=torch.int64)
        return _Spans(cu, offsets, torch.stack([c // nt, c % nt], 1).contiguous(), B, B * nt)
    cu = cu_seqlens.to(device=device, dtype=torch.int64).contiguous()
    nts = (cu[1:] - cu[:-1] + BT - 1) // BT
    offsets = torch.cat([nts.new_zeros(1), nts.cumsum(0)])
    n_chunks = int(offsets[-1])
    seq = torch.repeat_interleave(torch.arange(nts.numel(), device=device), nts, output_size=n_chunks)
    local = torch.arange(n_chunks, device=device) - offsets[seq]
    return _Spans(cu, offsets, torch.stack([seq, local], 1).contiguous(), nts.numel(), n_chunks)


def _snapshot_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _common_meta(q: torch.Tensor, v: torch.Tensor, BT: int) -> dict:
    K, V = q.shape[-1], v.shape[-1]
    return {
        "H": q.shape[2], "K": K, "V": V, "BT": BT, "BK": max(16, 1 << (K - 1).bit_length()),
        "PREC": "tf32x3" if q.dtype == torch.float32 else "tf32",
    }


def _scan(kern: ModuleType, a: torch.Tensor, b: torch.Tensor, slope: torch.Tensor, s_in: torch.Tensor | None,
          sp: _Spans, meta: dict, reverse: bool, store_out: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-chunk snapshots ``[C, H, K, V]`` of the carried state and the fp32 state at the end of the scan.

    Forward (a, b = k, v; s_in = initial state): the state before each chunk, and the final state. Reverse
    (a, b = q, do; s_in = gradient of the final state): the gradient of the state after each chunk, and the
    gradient of the initial state.
    """
    H, K, V = meta["H"], meta["K"], meta["V"]
    snaps_CHKV = a.new_empty(sp.n_chunks, H, K, V, dtype=_snapshot_dtype(a.dtype))
    out_NHKV = a.new_empty(sp.n_seq, H, K, V, dtype=torch.float32) if store_out else None
    kern._scan_kernel[lambda m: (sp.n_seq * H, -(-V // m["BV"]))](
        a, b, snaps_CHKV, s_in, out_NHKV, slope, sp.cu_N1, sp.chunk_offsets_N1,
        min(1 << (sp.n_seq * H - 1).bit_length(), 1024), REVERSE=reverse, USE_S_IN=s_in is not None, STORE_S_OUT=store_out, **meta,
    )
    return snaps_CHKV, out_NHKV


def _forward(q: Tensor, k: Tensor, v: Tensor, slope: Tensor, h0: Tensor | None, sp: _Spans, BT: int,
             store_final: bool) -> tuple[Tensor, Tensor | None]:
    kern = _kernels(q)
    meta = _common_meta(q, v, BT)
    h_CHKV, ht_NHKV = _scan(kern, k, v, slope, h0, sp, meta, reverse=False, store_out=store_final)
    o = torch.empty_like(v)
    kern._fwd_o_kernel[lambda m: (sp.n_chunks * meta["H"], -(-meta["V"] // m["BV"]))](
        q, k, v, h_CHKV, o, slope, sp.cu_N1, sp.chunk_indices_C2, **meta,
    )
    return o, ht_NHKV


def _backward(q: Tensor, k: Tensor, v: Tensor, slope: Tensor, h0: Tensor | None, do: Tensor, dht: Tensor | None,
              sp: _Spans, BT: int, need_dh0: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    kern = _kernels(q)
    meta = _common_meta(q, v, BT)
    h_CHKV, _ = _scan(kern, k, v, slope, h0, sp, meta, reverse=False, store_out=False)
    dh_CHKV, dh0_NHKV = _scan(kern, q, do, slope, dht, sp, meta, reverse=True, store_out=need_dh0)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kern._bwd_dqkv_kernel[(sp.n_chunks * meta["H"],)](
        q, k, v, h_CHKV, do, dh_CHKV, dq, dk, dv, slope, sp.cu_N1, sp.chunk_indices_C2, **meta,
    )
    return dq, dk, dv, dh0_NHKV


class _LightningChunkFn(torch.autograd.Function):
    """Chunked lightning attention with gradients for q, k, v and the initial state (not the slope)."""

    @staticmethod
    def forward(ctx, q, k, v, slope, h0, cu_seqlens, output_final_state: bool, chunk_size: int):
        B, T = q.shape[:2]
        sp = _spans(cu_seqlens, B, T, chunk_size, q.device)
        with _on_device(q):
            o, ht = _forward(q, k, v, slope, h0, sp, chunk_size, output_final_state)
        ctx.save_for_backward(q, k, v, slope, h0)
        ctx.spans, ctx.chunk_size = sp, chunk_size
        return o, ht

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dht):
        q, k, v, slope, h0 = ctx.saved_tensors
        with _on_device(q):
            dq, dk, dv, dh0 = _backward(
                q, k, v, slope, h0, do.contiguous(), None if dht is None else dht.float().contiguous(),
                ctx.spans, ctx.chunk_size, need_dh0=h0 is not None and ctx.needs_input_grad[4],
            )
        return dq, dk, dv, None, dh0, None, None, None


@torch.compiler.disable  # host-side chunk tables and autotuned launches; compiled graphs call it as a black box
def lightning_attn_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton lightning attention; same contract as :func:`xinzhou.ops.lightning_attn`, differentiable.

    Args:
        q, k: ``[B, T, H, K]`` (K ≤ 256); v: ``[B, T, H, V]``; fp16, bf16 or fp32 (k, v are cast to q's dtype).
        slope: ``[H]`` positive decay rates (decay ``exp(-slope)``); no gradient flows to it.
        initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``), fp32 math, differentiable.
        output_final_state: also return the fp32 state after each sequence's last token (differentiable).
        cu_seqlens: ``[N+1]`` offsets of packed sequences (B must be 1); the state resets at each start.
        chunk_size: tokens per chunk, one of 16, 32, 64, 128; changes speed and rounding, never the result.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [B or N, H, K, V] fp32 or None)``.
    """
    n_seq = check_inputs(q, k, v, slope, initial_state, cu_seqlens)
    if q.dtype not in _DTYPES:
        raise TypeError(f"impl='triton' takes fp16, bf16 or fp32 inputs, got {q.dtype} (use impl='naive' for fp64)")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    if q.shape[-1] > MAX_K:
        raise ValueError(f"impl='triton' supports key dims up to {MAX_K}, got {q.shape[-1]}")
    _kernels(q)
    B, T, H, K = q.shape
    sdt = state_dtype(q.dtype)  # fp32 for every dtype this path takes; the kernels hard-wire it
    slope = slope.detach().to(device=q.device, dtype=sdt).contiguous()
    h0 = None if initial_state is None else initial_state.to(sdt).contiguous()
    if T == 0:
        s = h0 if h0 is not None else q.new_zeros(n_seq, H, K, v.shape[-1], dtype=sdt)
        return v.new_zeros(v.shape, dtype=q.dtype), (s if output_final_state else None)
    q, k, v = q.contiguous(), k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, h0))
    if T == 1 and cu_seqlens is None and not needs_grad:  # decode step: no chunk machinery
        state = h0.clone() if h0 is not None else q.new_zeros(B, H, K, v.shape[-1], dtype=sdt)
        o = lightning_decode_triton(q[:, 0], k[:, 0], v[:, 0], slope, state)
        return o.unsqueeze(1), (state if output_final_state else None)
    return _LightningChunkFn.apply(q, k, v, slope, h0, cu_seqlens, output_final_state, chunk_size)


@torch.compiler.disable
def lightning_decode_triton(
    q_BHK: torch.Tensor,
    k_BHK: torch.Tensor,
    v_BHV: torch.Tensor,
    slope_H: torch.Tensor,
    state_SHKV: torch.Tensor,
    slots_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step for a batch: ``S = exp(-slope) S + kᵀ v``, ``o = q S``, updating ``state`` in place.

    Args:
        q_BHK, k_BHK: ``[B, H, K]``; v_BHV: ``[B, H, V]`` (one new token per sequence, any float dtype).
        slope_H: ``[H]`` decay rates.
        state_SHKV: fp32 ``[S, H, K, V]`` state pool (S = B without ``slots_B``), contiguous, updated in place.
        slots_B: optional int ``[B]``: row b reads and writes ``state[slots_B[b]]``; a negative slot is padding
            (its state is untouched and its output row is 0).

    Returns:
        o ``[B, H, V]`` in q's dtype.
    """
    B, H, K = q_BHK.shape
    V = v_BHV.shape[-1]
    if k_BHK.shape != q_BHK.shape or v_BHV.shape[:2] != (B, H) or slope_H.shape != (H,):
        raise ValueError(
            f"expected q, k [B, H, K], v [B, H, V], slope [H]; got q {tuple(q_BHK.shape)}, "
            f"k {tuple(k_BHK.shape)}, v {tuple(v_BHV.shape)}, slope {tuple(slope_H.shape)}"
        )
    if state_SHKV.dtype != torch.float32 or not state_SHKV.is_contiguous() or state_SHKV.shape[1:] != (H, K, V):
        raise ValueError(f"state must be a contiguous fp32 [S, H, {K}, {V}] tensor, got "
                         f"{state_SHKV.dtype} {tuple(state_SHKV.shape)}")
    if slots_B is None and state_SHKV.shape[0] != B:
        raise ValueError(f"without slots the state needs B={B} rows, got {state_SHKV.shape[0]}")
    if slots_B is not None and slots_B.shape != (B,):
        raise ValueError(f"slots must have shape [B] = [{B}], got {tuple(slots_B.shape)}")
    if K > MAX_K:
        raise ValueError(f"impl='triton' supports key dims up to {MAX_K}, got {K}")
    kern = _kernels(q_BHK, state_SHKV)
    o_BHV = v_BHV.new_empty(B, H, V, dtype=q_BHK.dtype)
    BV = min(32, max(16, 1 << (V - 1).bit_length()))
    with _on_device(q_BHK):
        kern._decode_kernel[(B * H, -(-V // BV))](
            q_BHK.contiguous(), k_BHK.contiguous(), v_BHV.contiguous(), state_SHKV,
            None if slots_B is None else slots_B.to(torch.int64).contiguous(),
            slope_H.detach().to(device=q_BHK.device, dtype=torch.float32).contiguous(), o_BHV,
            H=H, K=K, V=V, BK=max(16, 1 << (K - 1).bit_length()), BV=BV, HAS_SLOTS=slots_B is not None,
            num_warps=4,
        )
    return o_BHV
