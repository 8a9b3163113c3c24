"""Advantages from rewards: group-relative, batch-normalised, zero-variance filtering, dynamic sampling, length penalty.

Why: the reward-to-advantage step is where GRPO, M1 and ScaleRL differ besides the loss. M1 (eq. 2) uses
`(R - mean_group) / std_group`; ScaleRL centres per group and divides by the std of all advantages in the batch;
Dr.GRPO only centres. Groups whose samples all score the same carry no signal: ScaleRL drops them, DAPO samples
more until the batch is full. DAPO also adds a soft penalty for overlong responses. Each is a pure function here
so the rollout loop only chains them.

Letters: B samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from xinzhou.rl.rollout import RolloutBatch

log = logging.getLogger(__name__)

SCALES = ("group", "batch", "none")


def _groups(rewards_B: Tensor, group_ids_B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(inverse_B, count_G, mean_G) with validation: finite rewards, every group of size ≥ 2."""
    if rewards_B.dim() != 1 or group_ids_B.shape != rewards_B.shape:
        raise ValueError(f"rewards and group_ids must both be [B]; got {tuple(rewards_B.shape)}, "
                         f"{tuple(group_ids_B.shape)}")
    bad = (~torch.isfinite(rewards_B)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"rewards must be finite; samples {bad[:10]} are {rewards_B[bad[:10]].tolist()}")
    _, inverse_B, count_G = torch.unique(group_ids_B, return_inverse=True, return_counts=True)
    if (count_G < 2).any():
        raise ValueError(
            "every group needs at least 2 samples (group size 1 has no baseline: its advantage is always 0); "
            f"group sizes found: {sorted(set(count_G.tolist()))}"
        )
    r = rewards_B.double()
    mean_G = torch.zeros(len(count_G), dtype=r.dtype).index_add_(0, inverse_B, r) / count_G
    return inverse_B, count_G, mean_G


def zero_variance_groups(rewards_B: Tensor, group_ids_B: Tensor, atol: float = 1e-6) -> Tensor:
    """Bool [B]: the sample belongs to a group whose rewards all agree within `atol` (no learning signal).

    Uses max - min rather than std, so float noise (0.1 + 0.1 + 0.1) cannot make a flat group look informative."""
    _, inverse_B, _ = torch.unique(group_ids_B, return_inverse=True, return_counts=True)
    n = int(inverse_B.max()) + 1 if inverse_B.numel() else 0
    r = rewards_B.double()
    hi = torch.full((n,), -torch.inf, dtype=r.dtype).scatter_reduce(0, inverse_B, r, "amax")
    lo = torch.full((n,), torch.inf, dtype=r.dtype).scatter_reduce(0, inverse_B, r, "amin")
    return ((hi - lo) <= atol)[inverse_B]


def group_advantages(
    rewards_B: Tensor,
    group_ids_B: Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-6,
) -> Tensor:
    r"""Group-relative advantages, one per sample (float32).

        Â_i = R_i - mean_{j in group(i)} R_j                              (centred per prompt group)
        scale="group":  Â_i / (std_{group(i)}(R) + eps)                   (GRPO, M1 eq. 2)
        scale="batch":  Â_i / (std_{all samples}(Â) + eps)                (ScaleRL batch-level normalisation)
        scale="none":   Â_i                                                (Dr.GRPO)

    std is the unbiased (Bessel) estimate, as in TRL and verl. Samples in zero-variance groups get exactly 0.
    Raises ValueError for a group of size 1, non-finite rewards, or an unknown `scale`.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(SCALES)}")
    inverse_B, count_G, mean_G = _groups(rewards_B, group_ids_B)
    r = rewards_B.double()
    adv = r - mean_G[inverse_B]
    flat = zero_variance_groups(rewards_B, group_ids_B)
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    if scale == "group":
        var_G = torch.zeros_like(mean_G).index_add_(0, inverse_B, adv.square()) / (count_G - 1)
        std = var_G.sqrt()[inverse_B]
    elif scale == "batch":
        std = adv.std().expand_as(adv)
    else:
        return adv.float()
    return (adv / torch.where(std > 0, std + eps, torch.ones_like(std))).float()  # 0/0 stays 0, never NaN


def overlong_penalty(lengths_B: Tensor, max_len: int, cache_len: int) -> Tensor:
    r"""DAPO's soft overlong punishment (eq. 13), added to the reward:

        0                                   if |y| ≤ L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| ≤ L_max
        -1                                  if |y| > L_max
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    start = max_len - cache_len
    n = lengths_B.double()
    pen = torch.where(n <= start, torch.zeros_like(n), (start - n) / cache_len)
    return torch.where(n > max_len, -torch.ones_like(n), pen).float()


def dynamic_sampling(
    draw: Callable[[], RolloutBatch],
    target_groups: int,
    *,
    max_draws: int = 8,
) -> RolloutBatch:
    """DAPO dynamic sampling: call `draw()` until `target_groups` groups with non-zero reward variance are collected.

    Zero-variance groups are dropped from every draw; the result holds the first `target_groups` informative groups
    (group ids relabelled 0..n-1). After `max_draws` draws it returns what it has, with a warning; a batch with no
    informative group is a RuntimeError (nothing to learn from).
    """
    from xinzhou.rl.rollout import RolloutBatch

    if target_groups < 1 or max_draws < 1:
        raise ValueError(f"target_groups and max_draws must be >= 1, got {target_groups}, {max_draws}")
    kept: list[RolloutBatch] = []
    n_groups = 0
    for _ in range(max_draws):
        batch = draw()
        batch = batch.select(~zero_variance_groups(batch.rewards_B, batch.group_ids_B))
        kept.append(batch)
        n_groups += batch.num_groups
        if n_groups >= target_groups:
            break
    else:
        log.warning("dynamic sampling: %d of %d informative groups after %d draws", n_groups, target_groups,
                    max_draws)
    if n_groups == 0:
        raise RuntimeError(f"dynamic sampling found no group with reward variance in {max_draws} draws")
    merged = RolloutBatch.cat(kept)
    return merged.select(merged.group_ids_B < target_groups)
