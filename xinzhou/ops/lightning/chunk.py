"""Chunked lightning attention (Lightning Attention-2), the CPU default and the differentiable training path.

The sequence is cut into blocks of ``C`` tokens. Inside a block the output is a *left product*
``((Q Kᵀ) ⊙ D) V`` with the decay mask ``D[c, j] = λ^{c-j}`` (c ≥ j); across blocks it is a *right product*
``λ^{c+1} q_c S`` with the state ``S`` carried from the previous blocks. All blocks are computed at once
(batched matmuls); only the O(T/C) state recurrence between blocks is a loop over ``[B, H, K, V]`` tensors.

Decays are written with per-position log-decays ``g_t`` (``-slope`` on real tokens, ``0`` on padding), so one
code path handles T not a multiple of C and packed sequences (padded to a batch, where padding neither decays
nor feeds the state). All decay and state arithmetic runs in fp32 (fp64 for fp64 inputs).

Letters: B batch, T time, H heads, K key dim, V value dim, N packed sequences, C block, M number of blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xinzhou.ops.lightning.common import check_inputs, state_dtype



# Forward-only calls run in pieces of whole blocks of at most this many bytes of intra-block scores, carrying the
# state between pieces: the same operations on the same values in the same order (bit-identical output), with
# temporaries a fraction of the size. In one pass, T = 16K (H 4, D 128) made 8-25 MB temporaries that glibc maps
# and unmaps on every call (page faults) and that spill the caches; 1024-token pieces (2 MB) ran 1.9x faster
# there (458 -> 238 ms, median of 7, 2 threads). Training keeps one pass: autograd holds every piece's
# temporaries for the backward anyway.
PIECE_BYTES = 2 << 20


def default_block(head_dim: int) -> int:
    """Block size where the intra-block left product (∝ C) costs about what the state products (∝ K) cost."""
    return max(64, min(256, head_dim))


def _chunk_core(
    q_BHMCK: torch.Tensor,
    k_BHMCK: torch.Tensor,
    v_BHMCV: torch.Tensor,
    g_GHMC: torch.Tensor,
    s0_BHKV: torch.Tensor | None,
    last_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked lightning attention on block-shaped inputs.

    ``g`` broadcasts over batch and blocks (``[1 or B, H, 1 or M, C]``): with a uniform decay one ``[H, C, C]``
    mask serves every block. ``last_len`` (uniform decay only) is the number of real tokens in the last block
    when T is not a multiple of C: its zero padding is harmless for the outputs, and the final state is
    re-derived for the true end of the sequence.
    """
    B, H, M, C, K = q_BHMCK.shape
    V = v_BHMCV.shape[-1]
    G_GHMC = g_GHMC.cumsum(-1)  # inclusive: log λ^{c+1} within the block for uniform decay
    G_last_GHM1 = G_GHMC[..., -1:]
    # intra-block: λ^{c-j} masked to c >= j
    diff_GHMCC = G_GHMC[..., :, None] - G_GHMC[..., None, :]
    causal_CC = torch.ones(C, C, dtype=torch.bool, device=q_BHMCK.device).tril()
    decay_GHMCC = diff_GHMCC.masked_fill(~causal_CC, float("-inf")).exp()
    # 3-D bmm on [B·H·M, C, *] views: BLAS reads the transposed operands in place (5-D matmul would copy them)
    q_NCK, k_NCK, v_NCV = (t.reshape(-1, C, t.shape[-1]) for t in (q_BHMCK, k_BHMCK, v_BHMCV))
    scores_BHMCC = torch.bmm(q_NCK, k_NCK.transpose(1, 2)).view(B, H, M, C, C) * decay_GHMCC
    o_BHMCV = torch.bmm(scores_BHMCC.view(-1, C, C), v_NCV).view(B, H, M, C, V)
    # each block's own contribution to the state at its end: Σ_j λ^{C-1-j} k_jᵀ v_j
    k_decay_GHMC1 = (G_last_GHM1 - G_GHMC).exp()[..., None]
    kd_NCK = (k_BHMCK * k_decay_GHMC1).reshape(-1, C, K)
    kv_BHMKV = torch.bmm(kd_NCK.transpose(1, 2), v_NCV).view(B, H, M, K, V)
    block_decay_GHM11 = G_last_GHM1.exp()[..., None]
    # state before each block: a short sequential scan over blocks
    s_BHKV = s0_BHKV if s0_BHKV is not None else q_BHMCK.new_zeros(B, H, K, V)
    before = []
    for m in range(M):
        before.append(s_BHKV)
        if m < M - 1 or last_len is None:  # λ^C S + (kᵀv of block m), one fused op
            s_BHKV = torch.addcmul(kv_BHMKV[:, :, m], block_decay_GHM11[:, :, m if g_GHMC.shape[2] > 1 else 0], s_BHKV)
    s_before_BHMKV = torch.stack(before, dim=2)
    q_decay_GHMC1 = G_GHMC.exp()[..., None]
    qd_NCK = (q_BHMCK * q_decay_GHMC1).reshape(-1, C, K)
    # inter-block part accumulated onto the intra-block output in the same GEMM (in place: the intra-block output
    # is a fresh GEMM result that no backward formula reads). Under autocast that GEMM gave a lower-precision
    # output, and an in-place op cannot mix dtypes: add out of place then.
    if o_BHMCV.dtype == qd_NCK.dtype:
        o_BHMCV.view(-1, C, V).baddbmm_(qd_NCK, s_before_BHMKV.view(-1, K, V))
    else:
        o_BHMCV = o_BHMCV + torch.bmm(qd_NCK, s_before_BHMKV.view(-1, K, V)).view(B, H, M, C, V)
    if last_len is not None:  # state after the last real token of a partial last block
        G_last = G_GHMC[:, :, -1, last_len - 1 : last_len]  # [G, H, 1]
        k_decay_GHC1 = (G_last - G_GHMC[:, :, -1, :last_len]).exp()[..., None]
        kv_BHKV = (k_BHMCK[:, :, -1, :last_len] * k_decay_GHC1).transpose(-1, -2) @ v_BHMCV[:, :, -1, :last_len]
        s_BHKV = G_last.exp()[..., None] * s_BHKV + kv_BHKV
    return o_BHMCV, s_BHKV


def _to_blocks(x_BTHD: torch.Tensor, C: int) -> torch.Tensor:
    B, T, H, D = x_BTHD.shape
    pad = (-T) % C
    x_BHTD = x_BTHD.transpose(1, 2)
    if pad:
        x_BHTD = F.pad(x_BHTD, (0, 0, 0, pad))
    return x_BHTD.reshape(B, H, (T + pad) // C, C, D)


def _dense(q, k, v, slope_H, s0, C, dt):
    """Equal-length batch [B, T, H, *]; returns (o [B, T, H, V], final state)."""
    B, T, H, _ = q.shape
    M = -(-T // C)
    g_1H1C = (-slope_H)[None, :, None, None].expand(1, H, 1, C)  # the same decay in every block
    last_len = T - (M - 1) * C
    o, s = _chunk_core(_to_blocks(q.to(dt), C), _to_blocks(k.to(dt), C), _to_blocks(v.to(dt), C), g_1H1C, s0,
                       last_len if last_len < C else None)
    o_BTHV = o.reshape(B, H, M * C, -1)[:, :, :T].transpose(1, 2)
    return o_BTHV, s


def _dense_in_pieces(q, k, v, slope_H, s0, C, dt):
    """:func:`_dense`, in pieces of whole blocks when no gradient is needed (see `PIECE_BYTES`)."""
    B, T, H, _ = q.shape
    piece = max(1, PIECE_BYTES // (B * H * C * C * torch.finfo(dt).bits // 8)) * C
    if T <= piece or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, s0) if t is not None)):
        return _dense(q, k, v, slope_H, s0, C, dt)
    o = v.new_empty(B, T, H, v.shape[-1], dtype=dt)
    s = s0
    for t0 in range(0, T, piece):
        o[:, t0 : t0 + piece], s = _dense(q[:, t0 : t0 + piece], k[:, t0 : t0 + piece], v[:, t0 : t0 + piece],
                                          slope_H, s, C, dt)
    return o, s


def _packed(q, k, v, slope_H, s0, C, dt, cu_seqlens):
    """Packed sequences: scatter into a padded [N, Tmax] batch, run once, gather back."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    N = lens.numel()
    Tmax = max(int(lens.max()), 1)
    M = -(-Tmax // C)
    Tp = M * C
    dev = q.device
    seq_id = torch.repeat_interleave(torch.arange(N, device=dev), lens, output_size=T)
    pos = torch.arange(T, device=dev) - cu_seqlens[:-1].long().repeat_interleave(lens, output_size=T)
    flat = seq_id * Tp + pos  # where each packed token lands in the padded [N * Tp] layout

    def scatter(x_1THD):
        out = x_1THD.new_zeros(N * Tp, H, x_1THD.shape[-1], dtype=dt)
        out = out.index_copy(0, flat, x_1THD[0].to(dt))
        return out.view(N, M, C, H, -1).permute(0, 3, 1, 2, 4)  # [N, H, M, C, D]

    valid = torch.zeros(N * Tp, device=dev, dtype=dt).index_fill(0, flat, 1.0).view(N, 1, M, C)
    g_NHMC = -slope_H.view(1, H, 1, 1) * valid
    o, s = _chunk_core(scatter(q), scatter(k), scatter(v), g_NHMC, s0)
    o_flat = o.permute(0, 2, 3, 1, 4).reshape(N * Tp, H, V)
    return o_flat.index_select(0, flat).unsqueeze(0), s


def lightning_attn_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked lightning attention; same contract as :func:`xinzhou.ops.lightning_attn`.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; slope: ``[H]`` (decay ``exp(-slope)``).
        initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``) or None.
        cu_seqlens: ``[N+1]`` offsets of packed sequences (B must be 1); the state resets at each start.
        block_size: tokens per block (default :func:`default_block`); changes speed and rounding, never the
            result.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [B or N, H, K, V] fp32 or None)``.
    """
    check_inputs(q, k, v, slope, initial_state, cu_seqlens)
    block_size = default_block(q.shape[-1]) if block_size is None else block_size
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    dt = state_dtype(q.dtype)
    slope_H = slope.to(dt)
    s0 = initial_state.to(dt) if initial_state is not None else None
    if q.shape[1] == 0:
        B, _, H, K = q.shape
        n = B if cu_seqlens is None else cu_seqlens.numel() - 1
        s = s0 if s0 is not None else q.new_zeros(n, H, K, v.shape[-1], dtype=dt)
        return v.new_zeros(v.shape), (s if output_final_state else None)
    if cu_seqlens is None:
        o, s = _dense_in_pieces(q, k, v, slope_H, s0, block_size, dt)
    else:
        o, s = _packed(q, k, v, slope_H, s0, block_size, dt, cu_seqlens)
    return o.to(q.dtype), (s if output_final_state else None)
