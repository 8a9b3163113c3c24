"""Reference MoE expert compute: for every token and every chosen expert, run that expert's SwiGLU
``w2(silu(w1 x) * w3 x)`` and add it with the router weight. A plain double loop, for tests only.

Letters: N tokens, D hidden, F expert FFN width, E experts, K experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_naive(
    x_ND: torch.Tensor, w_NK: torch.Tensor, idx_NK: torch.Tensor, gate_up_E2FD: torch.Tensor, down_EDF: torch.Tensor
) -> torch.Tensor:
    """Same contract as :func:`xinzhou.ops.moe.moe_experts`."""
    Fw = down_EDF.shape[-1]
    out = torch.zeros_like(x_ND)
    for n in range(x_ND.shape[0]):
        for j in range(idx_NK.shape[1]):
            e = int(idx_NK[n, j])
            gate_up = gate_up_E2FD[e] @ x_ND[n]
            h = F.silu(gate_up[:Fw]) * gate_up[Fw:]
            out[n] += (w_NK[n, j] * (down_EDF[e] @ h)).to(out.dtype)
    return out
