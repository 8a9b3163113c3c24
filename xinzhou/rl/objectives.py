"""Policy-gradient objectives as pure per-token functions, and the name -> function registry.

Why this file exists: CISPO, GRPO, DAPO and GSPO differ only in how the importance ratio weights each token's
gradient. Keeping each surrogate a pure function of `(logp, logp_old, advantages, mask)` makes it checkable against
a hand computation and against TRL, keeps `if loss_type == ...` chains out of the trainer (it looks a name up in
`OBJECTIVES`), and leaves the separate question of how tokens are summed into one scalar to `aggregation.py`,
so a comparison of objectives isolates the surrogate.

Conventions (every objective):
- `logp_BT` is log π_θ of the taken tokens (with gradient); `logp_old_BT` the behaviour policy's, always treated
  as a constant (detached). ScaleRL uses the sampler's logprobs here, so one ratio covers staleness and
  sampler/trainer mismatch.
- `r = exp(logp - logp_old)`. Clip bounds are offsets `1 - eps_low`, `1 + eps_high` (M1's notation) for every
  objective. TRL's `loss_type="cispo"` instead caps at `epsilon_high` itself: TRL `epsilon_high=5.0` is
  `eps_high=4.0` here (and ScaleRL's `ε_max = 5`).
- Advantages are `[B]` (one per sequence, broadcast to its tokens) or `[B, T]`.
- The per-token loss is what to *minimise*; masked positions are 0.

Letters: B sequences, T tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PolicyTerms:
    """Per-token result of an objective, before aggregation. All but `loss_BT` are detached.

    `weight_BT`: the coefficient w in the token's gradient `-w · Â · ∇log π_θ` (0 where the token is clipped out).
    `clipped_BT`: the ratio fell outside the objective's clip range (CISPO: the IS weight was truncated; PPO-style:
    the token is in the flat, zero-gradient region, as TRL's `clip_ratio/region_mean` counts).
    `zero_grad_BT`: the token's gradient is exactly zero (clipped out, masked out by M1's unified mask, or Â = 0).
    """

    loss_BT: Tensor
    ratio_BT: Tensor
    weight_BT: Tensor
    clipped_BT: Tensor
    zero_grad_BT: Tensor


Objective = Callable[..., PolicyTerms]


def _check_shapes(logp_BT: Tensor, logp_old_BT: Tensor, adv: Tensor, mask_BT: Tensor) -> Tensor:
    """Validate shapes and return the advantages broadcastable to [B, T]."""
    if logp_BT.dim() != 2 or logp_old_BT.shape != logp_BT.shape or mask_BT.shape != logp_BT.shape:
        raise ValueError(
            f"logp, logp_old and mask must all be [B, T]; got {tuple(logp_BT.shape)}, {tuple(logp_old_BT.shape)}, "
            f"{tuple(mask_BT.shape)}"
        )
    if adv.dim() == 1 and adv.shape[0] == logp_BT.shape[0]:
        return adv[:, None]
    if adv.shape in (logp_BT.shape, (logp_BT.shape[0], 1)):
        return adv
    raise ValueError(f"advantages must be [B] or [B, T] with B, T = {tuple(logp_BT.shape)}; got {tuple(adv.shape)}")


def _check_clip(eps_low: float | None, eps_high: float) -> None:
    if eps_high < 0:
        raise ValueError(f"eps_high must be >= 0 (the upper bound is 1 + eps_high), got {eps_high}")
    if eps_low is not None and eps_low < 0:
        raise ValueError(f"eps_low must be >= 0 (the lower bound is 1 - eps_low), got {eps_low}")


def _ppo_terms(ratio: Tensor, adv: Tensor, mask_BT: Tensor, eps_low: float, eps_high: float) -> PolicyTerms:
    """`-min(r·Â, clip(r, 1-ε_low, 1+ε_high)·Â)` with its flat (zero-gradient) region; r is [B, T] or [B, 1]."""
    _check_clip(eps_low, eps_high)
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    flat = (((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))).expand_as(mask_BT)
    r = ratio.detach().expand_as(mask_BT)
    weight = torch.where(flat, torch.zeros_like(r), r)
    return PolicyTerms(loss * mask_BT, r, weight, flat, flat | (adv == 0).expand_as(mask_BT))


def cispo(
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    eps_high: float = 4.0,
    eps_low: float | None = None,
    mask_eps: tuple[float, float] | None = None,
) -> PolicyTerms:
    r"""CISPO, MiniMax-M1 eq. 4-5 (and eq. 6-7 with `mask_eps`).

        loss_t = -sg(clip(r_t, 1 - ε_low, 1 + ε_high)) · Â_t · log π_θ(o_t) · M_t

    The clip caps the importance weight instead of dropping the token, so every token with Â ≠ 0 keeps a gradient,
    off-policy too. `eps_low=None` is M1's setting: no lower bound. Default ε_high = 4, i.e. a cap of 5 (ScaleRL's
    ε_max = 5; TRL `epsilon_high=5.0`). On-policy (r = 1, cap ≥ 1) the gradient equals PPO/DAPO's exactly.
    `mask_eps=(ε_low, ε_high)` adds M1's unified token mask (eq. 7), which brings PPO's trust region back:

        M_t = 0 if Â_t > 0 and r_t > 1 + ε_high, or Â_t < 0 and r_t < 1 - ε_low;  else M_t = 1
    """
    adv = _check_shapes(logp_BT, logp_old_BT, adv, mask_BT)
    _check_clip(eps_low, eps_high)
    ratio = torch.exp(logp_BT - logp_old_BT).detach()  # sg(·): only log π_θ carries gradient
    lo = None if eps_low is None else 1 - eps_low
    weight = torch.clamp(ratio, min=lo, max=1 + eps_high)
    clipped = weight != ratio
    keep = torch.ones_like(ratio)
    if mask_eps is not None:
        m_low, m_high = mask_eps
        _check_clip(m_low, m_high)
        dropped = ((adv > 0) & (ratio > 1 + m_high)) | ((adv < 0) & (ratio < 1 - m_low))
        keep = (~dropped).to(ratio.dtype)
    loss = -weight * adv * logp_BT * keep * mask_BT
    weight_eff = (weight * keep).expand_as(ratio)
    zero = (weight_eff == 0) | (adv == 0).expand_as(ratio)
    return PolicyTerms(loss, ratio, weight_eff, clipped, zero)


def grpo(
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> PolicyTerms:
    r"""GRPO / PPO-clip (DeepSeekMath; M1 eq. 1-2 without the KL term), symmetric ε = 0.2 by default.

        loss_t = -min(r_t · Â_t, clip(r_t, 1 - ε_low, 1 + ε_high) · Â_t)

    Tokens in the flat region (Â > 0 and r > 1 + ε_high, or Â < 0 and r < 1 - ε_low) get zero gradient: once a rare
    token's ratio passes the upper bound, later off-policy updates stop pushing it (M1 §3.1). GRPO aggregates per
    sequence, then over the batch (`aggregation="sequence"`, TRL `loss_type="grpo"`).
    """
    adv = _check_shapes(logp_BT, logp_old_BT, adv, mask_BT)
    return _ppo_terms(torch.exp(logp_BT - logp_old_BT.detach()), adv, mask_BT, eps_low, eps_high)


def dapo(
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> PolicyTerms:
    r"""DAPO (arXiv 2503.14476): PPO-clip with clip-higher (ε_low = 0.2, ε_high = 0.28), token-level.

        loss_t = -min(r_t · Â_t, clip(r_t, 1 - ε_low, 1 + ε_high) · Â_t)

    DAPO normalises by the tokens of the whole batch (`aggregation="token"`, TRL `loss_type="dapo"`).
    """
    return grpo(logp_BT, logp_old_BT, adv, mask_BT, eps_low=eps_low, eps_high=eps_high)


def gspo(
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> PolicyTerms:
    r"""GSPO (arXiv 2507.18071): PPO-clip on the length-normalised sequence ratio.

        s_i = exp( Σ_t M_it (log π_θ(o_it) - log π_old(o_it)) / Σ_t M_it )
        loss_it = -min(s_i · Â_i, clip(s_i, 1 - ε_low, 1 + ε_high) · Â_i)      for every token t of sequence i

    Advantages must be per sequence. With `aggregation="sequence"` this is the paper's `1/G Σ_i` form and equals
    TRL `importance_sampling_level="sequence"`; the paper's ε are 3e-4 / 4e-4 (ScaleRL found 4e-3 works too).
    `ratio_BT`, `weight_BT`, `clipped_BT` hold the sequence value broadcast to its tokens.
    """
    adv = _check_shapes(logp_BT, logp_old_BT, adv, mask_BT)
    if adv.shape[1] != 1:
        raise ValueError("gspo needs one advantage per sequence ([B] or [B, 1]), got per-token advantages")
    n_B1 = mask_BT.sum(-1, keepdim=True).clamp(min=1)
    seq_ratio_B1 = torch.exp(((logp_BT - logp_old_BT.detach()) * mask_BT).sum(-1, keepdim=True) / n_B1)
    return _ppo_terms(seq_ratio_B1, adv, mask_BT, eps_low, eps_high)


OBJECTIVES: dict[str, Objective] = {"cispo": cispo, "grpo": grpo, "dapo": dapo, "gspo": gspo}


def objective_options(name: str) -> dict[str, object]:
    """The keyword options of objective `name` with their defaults (e.g. `{"eps_high": 4.0, ...}`)."""
    fn = get_objective(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def get_objective(name: str) -> Objective:
    """The objective registered as `name`; a ValueError lists the valid names."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))}") from None


def check_options(name: str, options: dict[str, object]) -> None:
    """Raise a ValueError naming the valid options when `options` has a key objective `name` does not take."""
    valid = objective_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for objective {name!r}; valid: "
            f"{', '.join(f'{k}={v!r}' for k, v in valid.items())}"
        )
