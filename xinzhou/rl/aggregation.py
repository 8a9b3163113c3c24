"""How per-token losses become one scalar: token-level, sequence-mean, or prompt-level (ScaleRL) aggregation.

Why this is separate from the objectives: the aggregation changes results as much as the surrogate does (ScaleRL
found prompt-level best; TRL's "grpo" is sequence-mean, its "dapo"/"cispo" token-level; M1 normalises by the tokens
of each prompt group), and most reported loss bugs are normaliser bugs under gradient accumulation (TRL #5619,
ms-swift #10117). So each mode is a function that returns a weight per token, computed once over the whole
optimiser-step batch:

    loss = Σ_{b,t} w_bt · loss_bt

Micro-batches then just sum `(w · loss)` over their rows, and any split of the rows gives the same gradient.

Letters: B sequences, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Weights = Callable[[Tensor, "Tensor | None"], Tensor]


def _as_float(mask_BT: Tensor) -> Tensor:
    """A float mask, keeping float64 for float64 input (the weights then keep full precision)."""
    return mask_BT if mask_BT.is_floating_point() else mask_BT.float()


def token_mean_weights(mask_BT: Tensor, group_ids_B: Tensor | None = None) -> Tensor:
    """Token-level (DAPO, TRL "dapo"/"cispo"): `w_bt = M_bt / Σ M` — every token of the batch counts the same."""
    mask = _as_float(mask_BT)
    return mask / mask.sum().clamp(min=1)


def sequence_mean_weights(mask_BT: Tensor, group_ids_B: Tensor | None = None) -> Tensor:
    """Sequence-mean (GRPO, TRL "grpo"): `w_bt = M_bt / (B · Σ_t M_bt)` — mean over each sequence, then over B.

    A sequence with no loss tokens still counts in B, as in TRL (its weights are zero)."""
    mask = _as_float(mask_BT)
    return mask / mask.sum(-1, keepdim=True).clamp(min=1) / mask.shape[0]


def prompt_mean_weights(mask_BT: Tensor, group_ids_B: Tensor | None = None) -> Tensor:
    """Prompt-level (ScaleRL; M1's `1/Σ_i|o_i|` per group): `w_bt = M_bt / (P · Σ_{b' in group(b)} Σ_t M_b't)`.

    Mean over the tokens of each prompt's group of samples, then over the P prompts (groups) in the batch."""
    if group_ids_B is None:
        raise ValueError("aggregation 'prompt' needs group_ids (which prompt each sequence answers)")
    mask = _as_float(mask_BT)
    _, inverse_B = torch.unique(group_ids_B, return_inverse=True)
    n_groups = int(inverse_B.max()) + 1 if inverse_B.numel() else 1
    tokens_G = torch.zeros(n_groups, dtype=mask.dtype, device=mask.device).index_add_(0, inverse_B, mask.sum(-1))
    return mask / tokens_G[inverse_B].clamp(min=1)[:, None] / n_groups


AGGREGATIONS: dict[str, Weights] = {
    "token": token_mean_weights,
    "sequence": sequence_mean_weights,
    "prompt": prompt_mean_weights,
}


def aggregation_weights(mode: str, mask_BT: Tensor, group_ids_B: Tensor | None = None) -> Tensor:
    """Per-token weights `[B, T]` of aggregation `mode` ("token", "sequence" or "prompt"); they sum to ≤ 1."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid aggregations: {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[mode](mask_BT, group_ids_B)


def aggregate(loss_BT: Tensor, weights_BT: Tensor) -> Tensor:
    """`Σ w · loss`, the scalar to minimise."""
    return (loss_BT * weights_BT).sum()
