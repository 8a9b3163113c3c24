"""Triton kernels for lightning attention; imported only when triton is installed (see ``triton.py``).

They live apart from the host code so that ``xinzhou.ops.lightning.triton`` imports on machines without triton,
and so the kernels are decorated only when first used (``TRITON_INTERPRET=1`` must be set by then for the CPU
interpreter). The math, per head with ``λ = exp(-s)``, chunk of ``BT`` tokens, ``L``
valid tokens in the chunk, ``h`` the state before it:

* forward state  ``h' = λ^L h + Σ_j λ^{L-1-j} k_jᵀ v_j``                         (``_scan_kernel``, sequential)
* forward output ``o_c = λ^{c+1} q_c h + Σ_{j≤c} λ^{c-j} (q_c·k_j) v_j``        (``_fwd_o_kernel``, parallel)
* backward state ``dh = λ^L dh' + Σ_c λ^{c+1} q_cᵀ do_c`` (``_scan_kernel`` reversed; ``dh'`` = gradient of
  the state after the chunk)
* backward inputs (``_bwd_dqkv_kernel``, parallel), with ``A = Q Kᵀ ⊙ D``, ``dA = dO Vᵀ ⊙ D``, ``D[c, j] = λ^{c-j}`` (c ≥ j):
  ``dq = λ^{c+1} dO hᵀ + dA K``, ``dk = λ^{L-1-j} V dh'ᵀ + dAᵀ Q``, ``dv = λ^{L-1-j} K dh' + Aᵀ dO``.

Every sequence (a batch row, or a packed document) is a span ``[bos, eos)`` of the flattened ``[B·T, H, D]``
tensors; the state kernels run one program per (sequence, head, V tile) over that sequence's chunks, the chunk
kernels one program per (global chunk, head) with ``(sequence, chunk)`` looked up in a host-built table, so
packed sequences need no padding. Decays are computed from the slope and integer distances (no cancellation),
states are carried in fp32, per-chunk snapshots ``h``/``dh`` are stored in the dtype the host chooses.

Letters: T tokens, H heads, K key dim, V value dim, BT chunk, BK padded K, BV V tile, N sequences.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# XINZHOU_TRITON_AUTOTUNE=0 skips autotuning (first fitting config): tests on a GPU compile once per shape.
AUTOTUNE = not INTERPRET and os.environ.get("XINZHOU_TRITON_AUTOTUNE", "1") != "0"
_INTERP = tl.constexpr(INTERPRET)


def _tuned(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` over the configs whose V tile fits V; without autotuning (and always under the
    interpreter, which cannot benchmark) only the first of them, which skips benchmarking."""

    def prune(cfgs, nargs, **kwargs):
        v_pad = max(16, triton.next_power_of_2({**nargs, **kwargs}["V"]))
        fit = [c for c in cfgs if c.kwargs.get("BV", 0) <= v_pad] or cfgs[-1:]
        return fit if AUTOTUNE else fit[:1]

    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune})


def _configs(bvs: tuple[int, ...], warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    # The first config is the pick when autotuning is off: moderate tiles, 4 warps. (Compiled for sm_90 with the
    # wheel's ptxas, every config fits in registers without spilling; a third pipeline stage changed nothing.)
    return [triton.Config({"BV": bv}, num_warps=w, num_stages=s) for bv in bvs for w in warps for s in stages]


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """``tl.dot`` that also runs in the interpreter (whose bf16 dot is wrong: operands go up to fp32 there)."""
    if _INTERP:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _seq_span(cu_seqlens, i_n):
    bos = tl.load(cu_seqlens + i_n)
    return bos, tl.load(cu_seqlens + i_n + 1) - bos


@triton.jit
def _tile(base, bos, t0, i_h, d0, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Pointers to the ``[BT, BD]`` tile of a ``[tokens, H, D]`` tensor at token ``bos + t0``, head, column d0."""
    o_t = t0 + tl.arange(0, BT)
    return base + ((bos + o_t) * H + i_h)[:, None] * D + (d0 + tl.arange(0, BD))[None, :]


@triton.jit
def _tile_mask(t0, T_n, d0, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    return ((t0 + tl.arange(0, BT)) < T_n)[:, None] & ((d0 + tl.arange(0, BD)) < D)[None, :]


@triton.jit
def _state(base, idx, i_h, v0, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
           BV: tl.constexpr):
    """Pointers to the ``[BK, BV]`` tile at column v0 of state ``idx`` of a ``[*, H, K, V]`` tensor."""
    return base + (idx * H + i_h) * K * V + tl.arange(0, BK)[:, None] * V + (v0 + tl.arange(0, BV))[None, :]


@triton.jit
def _state_mask(v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    return (tl.arange(0, BK) < K)[:, None] & ((v0 + tl.arange(0, BV)) < V)[None, :]


@triton.jit
def _decays(s, n_valid, BT: tl.constexpr):
    """Decays of a chunk with ``n_valid`` real tokens: ``λ^{c+1}`` (queries), ``λ^{L-1-j}`` (keys, 0 on padding)
    and ``λ^L`` (the whole chunk)."""
    o_c = tl.arange(0, BT)
    q_dec = tl.exp(-s * (o_c + 1).to(tl.float32))
    k_dec = tl.exp(tl.where(o_c < n_valid, -s * (n_valid - 1 - o_c).to(tl.float32), float("-inf")))
    return q_dec, k_dec, tl.exp(-s * n_valid.to(tl.float32))


@triton.jit
def _intra_decay(s, BT: tl.constexpr):
    """Causal decay matrix ``D[c, j] = λ^{c-j}`` for c ≥ j, else 0."""
    o_c = tl.arange(0, BT)
    diff = (o_c[:, None] - o_c[None, :]).to(tl.float32)
    return tl.exp(tl.where(diff >= 0, -s * diff, float("-inf")))


@triton.jit
def _chunk_of(chunk_indices, cu_seqlens, slope, H: tl.constexpr, BT: tl.constexpr):
    """Program -> (global chunk, head, sequence start, sequence length, chunk start, valid tokens, slope)."""
    i_ch = tl.program_id(0).to(tl.int64)
    i_c, i_h = i_ch // H, i_ch % H
    i_n = tl.load(chunk_indices + 2 * i_c)
    t0 = tl.load(chunk_indices + 2 * i_c + 1) * BT
    bos, T_n = _seq_span(cu_seqlens, i_n)
    return i_c, i_h, bos, T_n, t0, tl.minimum(T_n - t0, BT), tl.load(slope + i_h)


# NH_BUCKET (N·H rounded up to a power of two, capped) only keys the tuning: few long sequences want narrower
# V tiles (more programs) than many short ones.
@_tuned(_configs((32, 64), (4, 8), (2,)), key=["H", "K", "V", "BT", "REVERSE", "NH_BUCKET"])
@triton.jit(do_not_specialize=["NH_BUCKET"])
def _scan_kernel(a, b, snaps, s_in, s_out, slope, cu_seqlens, chunk_offsets, NH_BUCKET, H: tl.constexpr,
                 K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 REVERSE: tl.constexpr, USE_S_IN: tl.constexpr, STORE_S_OUT: tl.constexpr, PREC: tl.constexpr):
    """Grid (N·H, V/BV): carry an fp32 ``[K, V]`` state through one sequence chunk by chunk, storing it in
    ``snaps`` before each chunk is added.

    * forward (a = k, b = v): ``h' = λ^L h + Σ_j λ^{L-1-j} k_jᵀ v_j``; snaps = state before each chunk,
      s_in / s_out = initial / final state;
    * ``REVERSE`` (a = q, b = do): ``dh = λ^L dh' + Σ_c λ^{c+1} q_cᵀ do_c``; snaps = gradient of the state after
      each chunk, s_in / s_out = gradient of the final / initial state.
    """
    i_nh = tl.program_id(0).to(tl.int64)
    v0 = tl.program_id(1) * BV
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_n = _seq_span(cu_seqlens, i_n)
    boh = tl.load(chunk_offsets + i_n)
    s = tl.load(slope + i_h)
    m_s = _state_mask(v0, K, V, BK, BV)
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_S_IN:
        b_s += tl.load(_state(s_in, i_n, i_h, v0, H, K, V, BK, BV), mask=m_s, other=0.0)
    n_chunks = tl.cdiv(T_n, BT)
    for i in range(n_chunks):
        i_t = i
        if REVERSE:
            i_t = n_chunks - 1 - i
        p_snap = _state(snaps, boh + i_t, i_h, v0, H, K, V, BK, BV)
        tl.store(p_snap, b_s.to(p_snap.dtype.element_ty), mask=m_s)
        b_a = tl.load(_tile(a, bos, i_t * BT, i_h, 0, H, K, BT, BK),
                      mask=_tile_mask(i_t * BT, T_n, 0, K, BT, BK), other=0.0)
        b_b = tl.load(_tile(b, bos, i_t * BT, i_h, v0, H, V, BT, BV),
                      mask=_tile_mask(i_t * BT, T_n, v0, V, BT, BV), other=0.0)
        q_dec, k_dec, chunk_dec = _decays(s, tl.minimum(T_n - i_t * BT, BT), BT)
        a_dec = k_dec
        if REVERSE:
            a_dec = q_dec
        b_ad = (b_a * a_dec[:, None]).to(b_a.dtype)
        b_s = b_s * chunk_dec + _dot(tl.trans(b_ad), b_b.to(b_ad.dtype), PREC)
    if STORE_S_OUT:
        tl.store(_state(s_out, i_n, i_h, v0, H, K, V, BK, BV), b_s, mask=m_s)


@_tuned(_configs((64, 128), (4, 8), (2,)), key=["H", "K", "V", "BT"])
@triton.jit
def _fwd_o_kernel(q, k, v, h, o, slope, cu_seqlens, chunk_indices, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Grid (chunks·H, V/BV): ``o = λ^{c+1} q h + (Q Kᵀ ⊙ D) V`` for one chunk and V tile."""
    i_c, i_h, bos, T_n, t0, n_valid, s = _chunk_of(chunk_indices, cu_seqlens, slope, H, BT)
    v0 = tl.program_id(1) * BV
    m_k = _tile_mask(t0, T_n, 0, K, BT, BK)
    m_v = _tile_mask(t0, T_n, v0, V, BT, BV)
    b_q = tl.load(_tile(q, bos, t0, i_h, 0, H, K, BT, BK), mask=m_k, other=0.0)
    b_k = tl.load(_tile(k, bos, t0, i_h, 0, H, K, BT, BK), mask=m_k, other=0.0)
    b_v = tl.load(_tile(v, bos, t0, i_h, v0, H, V, BT, BV), mask=m_v, other=0.0)
    b_h = tl.load(_state(h, i_c, i_h, v0, H, K, V, BK, BV), mask=_state_mask(v0, K, V, BK, BV), other=0.0)
    q_dec, _k_dec, _chunk_dec = _decays(s, n_valid, BT)
    b_o = _dot(b_q.to(b_h.dtype), b_h, PREC) * q_dec[:, None]
    b_A = _dot(b_q, tl.trans(b_k), PREC) * _intra_decay(s, BT)
    b_o += _dot(b_A.to(b_v.dtype), b_v, PREC)
    p_o = _tile(o, bos, t0, i_h, v0, H, V, BT, BV)
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)


@_tuned(_configs((32, 64), (4, 8), (2,)), key=["H", "K", "V", "BT"])
@triton.jit
def _bwd_dqkv_kernel(q, k, v, h, do, dh, dq, dk, dv, slope, cu_seqlens, chunk_indices, H: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     PREC: tl.constexpr):
    """Grid (chunks·H,): dq, dk (full K) and dv (tile by tile) of one chunk from h, dh' and the chunk's inputs."""
    i_c, i_h, bos, T_n, t0, n_valid, s = _chunk_of(chunk_indices, cu_seqlens, slope, H, BT)
    m_k = _tile_mask(t0, T_n, 0, K, BT, BK)
    b_q = tl.load(_tile(q, bos, t0, i_h, 0, H, K, BT, BK), mask=m_k, other=0.0)
    b_k = tl.load(_tile(k, bos, t0, i_h, 0, H, K, BT, BK), mask=m_k, other=0.0)
    q_dec, k_dec, _chunk_dec = _decays(s, n_valid, BT)
    D = _intra_decay(s, BT)
    b_At = (_dot(b_k, tl.trans(b_q), PREC) * tl.trans(D)).to(b_q.dtype)  # At[j, c] = λ^{c-j} k_j·q_c
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        m_v = _tile_mask(t0, T_n, i_v * BV, V, BT, BV)
        m_h = _state_mask(i_v * BV, K, V, BK, BV)
        b_v = tl.load(_tile(v, bos, t0, i_h, i_v * BV, H, V, BT, BV), mask=m_v, other=0.0)
        b_do = tl.load(_tile(do, bos, t0, i_h, i_v * BV, H, V, BT, BV), mask=m_v, other=0.0).to(b_v.dtype)
        b_h = tl.load(_state(h, i_c, i_h, i_v * BV, H, K, V, BK, BV), mask=m_h, other=0.0)
        b_dh = tl.load(_state(dh, i_c, i_h, i_v * BV, H, K, V, BK, BV), mask=m_h, other=0.0)
        b_dA += _dot(b_do, tl.trans(b_v), PREC)
        b_dq += _dot(b_do.to(b_h.dtype), tl.trans(b_h), PREC)
        b_dk += _dot(b_v.to(b_dh.dtype), tl.trans(b_dh), PREC)
        b_dv = _dot(b_At, b_do, PREC) + _dot(b_k.to(b_dh.dtype), b_dh, PREC) * k_dec[:, None]
        p_dv = _tile(dv, bos, t0, i_h, i_v * BV, H, V, BT, BV)
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
    b_dA = (b_dA * D).to(b_q.dtype)
    b_dq = b_dq * q_dec[:, None] + _dot(b_dA, b_k, PREC)
    b_dk = b_dk * k_dec[:, None] + _dot(tl.trans(b_dA), b_q, PREC)
    p_dq = _tile(dq, bos, t0, i_h, 0, H, K, BT, BK)
    p_dk = _tile(dk, bos, t0, i_h, 0, H, K, BT, BK)
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)


@triton.jit
def _decode_kernel(q, k, v, state, slots, slope, o, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_SLOTS: tl.constexpr):
    """Grid (B·H, V/BV): one token per sequence, ``S = λ S + kᵀ v`` in place (fp32), ``o = q S``. With slots,
    row b uses state ``slots[b]`` of the pool and a negative slot marks padding (state untouched, o = 0)."""
    i_bh = tl.program_id(0).to(tl.int64)
    v0 = tl.program_id(1) * BV
    i_b, i_h = i_bh // H, i_bh % H
    i_s = i_b
    if HAS_SLOTS:
        i_s = tl.load(slots + i_b).to(tl.int64)
    # padding rows get an empty V range, which masks every state access (a scalar & block mask trips the
    # interpreter)
    v_end = tl.where(i_s >= 0, V, 0)
    i_s = tl.maximum(i_s, 0)
    o_k = tl.arange(0, BK)
    o_v = v0 + tl.arange(0, BV)
    m_s = (o_k < K)[:, None] & (o_v < v_end)[None, :]
    p_s = _state(state, i_s, i_h, v0, H, K, V, BK, BV)
    b_s = tl.load(p_s, mask=m_s, other=0.0)
    b_q = tl.load(q + i_bh * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
    b_k = tl.load(k + i_bh * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
    b_v = tl.load(v + i_bh * V + o_v, mask=o_v < v_end, other=0.0).to(tl.float32)
    b_s = b_s * tl.exp(-tl.load(slope + i_h)) + b_k[:, None] * b_v[None, :]
    tl.store(p_s, b_s, mask=m_s)
    b_o = tl.sum(b_q[:, None] * b_s, axis=0)
    tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty), mask=o_v < V)
