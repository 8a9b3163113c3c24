"""Step-by-step lightning attention for decoding: a few new tokens on top of a carried fp32 state.

For one new token per sequence this is one fused update ``S = λ S + kᵀ v``, ``o = q S`` over the whole batch,
with no block padding or decay masks, so it is the cheapest path for the engine's decode step. For longer inputs
use the chunked form.

Letters: B batch, T time, H heads, K key dim, V value dim, N packed sequences.
"""

from __future__ import annotations

import torch

from xinzhou.ops.lightning.common import check_inputs, state_dtype


def _steps(q_BTHK, k_BTHK, v_BTHV, decay_1H11, s_BHKV, valid_BT=None):
    outs = []
    for t in range(q_BTHK.shape[1]):
        kv_BHKV = k_BTHK[:, t, :, :, None] * v_BTHV[:, t, :, None, :]
        if valid_BT is None:
            s_BHKV = decay_1H11 * s_BHKV + kv_BHKV
        else:  # padded steps leave the state untouched
            m = valid_BT[:, t].view(-1, 1, 1, 1)
            s_BHKV = torch.where(m, decay_1H11 * s_BHKV + kv_BHKV, s_BHKV)
        outs.append((q_BTHK[:, t, :, :, None] * s_BHKV).sum(-2))
    return torch.stack(outs, dim=1), s_BHKV


def lightning_attn_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent lightning attention; same contract as :func:`xinzhou.ops.lightning_attn`.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; slope: ``[H]``.
        initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``) or None.
        cu_seqlens: ``[N+1]`` offsets of packed sequences (B must be 1).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state fp32 or None)``.
    """
    n_seq = check_inputs(q, k, v, slope, initial_state, cu_seqlens)
    dt = state_dtype(q.dtype)
    B, T, H, K = q.shape
    V = v.shape[-1]
    decay_1H11 = torch.exp(-slope.to(dt)).view(1, H, 1, 1)
    s0 = initial_state.to(dt) if initial_state is not None else q.new_zeros(n_seq, H, K, V, dtype=dt)
    if cu_seqlens is None:
        o, s = _steps(q.to(dt), k.to(dt), v.to(dt), decay_1H11, s0)
        return o.to(q.dtype), (s if output_final_state else None)
    # packed: pad to [N, Tmax] with a validity mask, step all sequences together
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    Tmax = max(lens) if lens else 0
    valid = torch.zeros(n_seq, Tmax, dtype=torch.bool, device=q.device)
    for n, L in enumerate(lens):
        valid[n, :L] = True
    def pad(x):
        out = x.new_zeros(n_seq, Tmax, H, x.shape[-1], dtype=dt)
        out[valid] = x[0].to(dt)
        return out
    o_pad, s = _steps(pad(q), pad(k), pad(v), decay_1H11, s0, valid)
    return o_pad[valid].unsqueeze(0).to(q.dtype), (s if output_final_state else None)
