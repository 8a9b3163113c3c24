"""Reference lightning attention: the oracle every fast path is tested against.

Two independent forms of the same math (see README.md beside this file):

* ``quadratic``: ``o_t = Σ_{j≤t} λ^{t-j} (q_t·k_j) v_j + λ^{t+1} q_t S_0`` as one masked matrix product;
* ``recurrent``: ``S_t = λ S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t``, one step at a time.

Both run in fp32 (or fp64 when the inputs are fp64) and handle packed sequences by looping over them, so they
share no code with the chunked or Triton kernels they check. They are slow on purpose: O(T²) memory or a Python
loop over T.

Letters: B batch, T time, H heads, K key dim, V value dim, N packed sequences.
"""

from __future__ import annotations

import torch

from xinzhou.ops.lightning.common import check_inputs, state_dtype


def _quadratic_one(q_THK, k_THK, v_THV, slope_H, s0_HKV):
    T = q_THK.shape[0]
    pos = torch.arange(T, device=q_THK.device, dtype=slope_H.dtype)
    diff_TT = pos[:, None] - pos[None, :]
    # λ^{t-j} for j ≤ t, 0 above the diagonal (exp(-inf) = 0 keeps it differentiable)
    log_decay_HTT = -slope_H[:, None, None] * diff_TT
    log_decay_HTT = log_decay_HTT.masked_fill(diff_TT < 0, float("-inf"))
    scores_HTT = torch.einsum("thk,shk->hts", q_THK, k_THK) * log_decay_HTT.exp()
    o_THV = torch.einsum("hts,shv->thv", scores_HTT, v_THV)
    # initial-state term and final state
    q_decay_TH = torch.exp(-slope_H[None, :] * (pos[:, None] + 1))
    o_THV = o_THV + torch.einsum("thk,hkv->thv", q_THK * q_decay_TH[..., None], s0_HKV)
    k_decay_TH = torch.exp(-slope_H[None, :] * (T - 1 - pos[:, None]))
    s_HKV = torch.exp(-slope_H * T)[:, None, None] * s0_HKV
    s_HKV = s_HKV + torch.einsum("thk,thv->hkv", k_THK * k_decay_TH[..., None], v_THV)
    return o_THV, s_HKV


def _recurrent_one(q_THK, k_THK, v_THV, slope_H, s0_HKV):
    decay_H11 = torch.exp(-slope_H)[:, None, None]
    s_HKV = s0_HKV
    outs = []
    for t in range(q_THK.shape[0]):
        s_HKV = decay_H11 * s_HKV + k_THK[t, :, :, None] * v_THV[t, :, None, :]
        outs.append(torch.einsum("hk,hkv->hv", q_THK[t], s_HKV))
    o_THV = torch.stack(outs) if outs else v_THV.new_zeros(0, *v_THV.shape[1:])
    return o_THV, s_HKV


def lightning_attn_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    form: str = "quadratic",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference lightning attention.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (already activated; no scaling is applied).
        slope: ``[H]`` positive decay rates; the per-step decay is ``exp(-slope)``.
        initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``) or None for zeros.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: ``[N+1]`` int offsets of packed sequences (requires B == 1).
        form: ``"quadratic"`` (masked decay matrix) or ``"recurrent"`` (step loop).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [B or N, H, K, V] in fp32/fp64 or None)``.
    """
    if form not in ("quadratic", "recurrent"):
        raise ValueError(f"form must be 'quadratic' or 'recurrent', got {form!r}")
    n_seq = check_inputs(q, k, v, slope, initial_state, cu_seqlens)
    dt = state_dtype(q.dtype)
    fn = _quadratic_one if form == "quadratic" else _recurrent_one
    B, T, H, K = q.shape
    V = v.shape[-1]
    slope_H = slope.to(dt)
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[n], cu[n + 1]) for n in range(n_seq)]
    outs, states = [], []
    for i, (b, start, end) in enumerate(bounds):
        s0 = initial_state[i].to(dt) if initial_state is not None else q.new_zeros(H, K, V, dtype=dt)
        o, s = fn(q[b, start:end].to(dt), k[b, start:end].to(dt), v[b, start:end].to(dt), slope_H, s0)
        outs.append(o)
        states.append(s)
    o = torch.cat(outs, 0).view(1, T, H, V) if cu_seqlens is not None else torch.stack(outs)
    return o.to(q.dtype), (torch.stack(states) if output_final_state else None)
