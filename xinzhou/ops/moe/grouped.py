"""Fast MoE expert compute by sorted dispatch.

Token slots are sorted by expert once, gathered into one contiguous ``[N·K, D]`` buffer, and each expert
multiplies its own contiguous slice (one fused gate+up GEMM and one down GEMM). Outputs are weighted and
scattered back with one ``index_add``. With a grouped GEMM (CUDA bf16: ``torch._grouped_mm``; CPU fp32:
``F.grouped_mm``) all experts run in one call. Compared with a per-expert ``where``/one-hot loop (transformers'
eager path), this does the routing bookkeeping once instead of once per expert.

Letters: N tokens, D hidden, F expert FFN width, E experts, K experts per token, S = N·K routed slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _grouped_mm(x: torch.Tensor, *dims: int):
    """The grouped GEMM this device and dtype can use, else None (then a per-expert loop runs).

    CUDA: ``torch._grouped_mm`` in bf16 (one launch for all experts). CPU: ``F.grouped_mm`` in fp32 (PyTorch ≥
    2.9), bit-identical to the loop and, measured with 32 experts top-2 (N 1024, D 512, F 384, one thread),
    1.4x faster forward + backward: it does in C++ the per-expert slicing and autograd bookkeeping that the
    loop does in Python. The kernels need every row stride a multiple of 16 bytes, so ``dims`` (D and F) must
    be multiples of 16 / element size."""
    if any(d * x.element_size() % 16 for d in dims):
        return None
    if x.is_cuda:
        return torch._grouped_mm if hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16 else None
    return F.grouped_mm if x.device.type == "cpu" and hasattr(F, "grouped_mm") and x.dtype == torch.float32 else None


def moe_grouped(
    x_ND: torch.Tensor, w_NK: torch.Tensor, idx_NK: torch.Tensor, gate_up_E2FD: torch.Tensor, down_EDF: torch.Tensor
) -> torch.Tensor:
    """Same contract as :func:`xinzhou.ops.moe.moe_experts`."""
    N, D = x_ND.shape
    E, Fw = down_EDF.shape[0], down_EDF.shape[-1]
    K = idx_NK.shape[1]
    flat_S = idx_NK.reshape(-1)
    order_S = torch.argsort(flat_S, stable=True)
    token_S = order_S // K  # token each sorted slot belongs to
    counts_E = torch.bincount(flat_S, minlength=E)
    xs_SD = x_ND.index_select(0, token_S)
    gmm = _grouped_mm(x_ND, D, Fw)
    if gmm is not None and xs_SD.shape[0] > 0:
        offs = counts_E.cumsum(0).to(torch.int32)
        h_S2F = gmm(xs_SD, gate_up_E2FD.transpose(1, 2), offs=offs)
        h_SF = F.silu(h_S2F[:, :Fw]) * h_S2F[:, Fw:]
        y_SD = gmm(h_SF, down_EDF.transpose(1, 2), offs=offs)
    else:
        y_SD = torch.empty_like(xs_SD)
        # unbind once: indexing w[e] per expert would make backward build a full-size zero gradient per expert
        gate_up, down = gate_up_E2FD.unbind(0), down_EDF.unbind(0)
        start = 0
        for e, c in enumerate(counts_E.tolist()):
            if c == 0:
                continue
            end = start + c
            h_c2F = xs_SD[start:end] @ gate_up[e].t()
            h_cF = F.silu(h_c2F[:, :Fw]) * h_c2F[:, Fw:]
            y_SD[start:end] = h_cF @ down[e].t()
            start = end
    w_S1 = w_NK.reshape(-1)[order_S].unsqueeze(-1).to(y_SD.dtype)
    out = torch.zeros_like(x_ND)
    return out.index_add(0, token_S, y_SD * w_S1)
