"""One call from per-token logprobs to (loss, metrics): objective by name, aggregation weights, per-step metrics.

Why: the trainer's `loss_fn(model, batch) -> (loss, metrics)` should be a thin wrapper that runs the model and
calls `policy_loss`, whose metrics already follow the loop's contract (detached sums plus a `"tokens"` count).
Metrics are the ones that explain an RL run (M1 §3, ScaleRL A.12/A.15): the clip fraction,
the mean importance weight, entropy, the approximate KL between behaviour and current policy, and the fraction of
tokens whose gradient is exactly zero (where DAPO and CISPO differ). An optional KL penalty to a reference policy
(`kl_coef`, GRPO's β) is added to the per-token loss here, beside the objective, so every objective can use it
and the objectives stay the papers' formulas. `check_finite` is the NaN guard: a non-finite
loss stops the run with the offending batch saved, never a silent NaN step.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xinzhou.fileio import mkstemp
from xinzhou.rl.aggregation import aggregate, aggregation_weights
from xinzhou.rl.objectives import Objective, PolicyTerms, check_options, get_objective

log = logging.getLogger(__name__)


def policy_metric_sums(
    terms: PolicyTerms,
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    mask_BT: Tensor,
    entropy_BT: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-step metrics as detached sums over the loss tokens, with their count in `"tokens"` (the training loop's
    metric contract: it adds them over micro-batches and processes and reports `sum / tokens`).

    - `clip_frac`: tokens whose ratio was clipped (see `PolicyTerms.clipped_BT`)
    - `is_weight`: the gradient weight w (the capped IS weight for CISPO; r or 0 for PPO-style objectives)
    - `ratio`: the token ratio π_θ/π_old
    - `approx_kl`: k3 estimate of KL(π_old ‖ π_θ), `(r - 1) - log r` per token (Schulman's k3, samples from π_old)
    - `zero_grad_frac`: tokens with exactly zero gradient
    - `entropy`: next-token entropy, when `entropy_BT` is given
    """
    m = mask_BT.detach().double()
    log_r = (logp_BT - logp_old_BT).detach().double()
    per_token = {
        "clip_frac": terms.clipped_BT,
        "is_weight": terms.weight_BT,
        "ratio": log_r.exp(),
        "approx_kl": torch.expm1(log_r) - log_r,
        "zero_grad_frac": terms.zero_grad_BT,
    }
    if entropy_BT is not None:
        per_token["entropy"] = entropy_BT
    sums = {k: (v.detach().double() * m).sum() for k, v in per_token.items()}
    sums["tokens"] = m.sum()
    return sums


def reference_kl(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    r"""Per-token k3 estimate of KL(π_θ ‖ π_ref) on tokens sampled from the rollout policy (DeepSeekMath eq. 4,
    TRL's `beta` term): `exp(ref − logp) − (ref − logp) − 1`, ≥ 0 and 0 exactly where the two logprobs agree. Its
    gradient w.r.t. `logp` is `1 − π_ref/π_θ`: it pulls each sampled token's probability back towards the
    reference's, which keeps what RL does not train on (other problem types, phrasing) where SFT left it."""
    d = ref_logp_BT.detach() - logp_BT
    return torch.exp(d) - d - 1


def mean_metrics(sums: dict[str, Tensor]) -> dict[str, float]:
    """Per-token means of metric sums (`sum / tokens`; nan when there are no tokens), `tokens` as a count."""
    n = float(sums["tokens"])
    return {k: (n if k == "tokens" else float(v) / n if n else float("nan")) for k, v in sums.items()}


def policy_loss(
    objective: str | Objective,
    logp_BT: Tensor,
    logp_old_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    aggregation: str = "token",
    group_ids_B: Tensor | None = None,
    weights_BT: Tensor | None = None,
    entropy_BT: Tensor | None = None,
    ref_logp_BT: Tensor | None = None,
    kl_coef: float = 0.0,
    **options: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`(Σ_bt w_bt · loss_bt, metric sums)` for `objective` (a registered name or a function) with its `options`.

    `w` comes from `aggregation` over this batch, or is given as `weights_BT`. Pass weights computed once over
    the whole optimiser-step batch when this call sees a slice of it, so splitting does not change the gradient.
    Under the shared training loop (which divides the summed loss by the summed `"tokens"`), pass
    `aggregation_weights(mode, step_mask, step_groups)[rows] * step_mask.sum()`. Metrics are detached sums with
    their token count (see `policy_metric_sums`; `mean_metrics` turns them into means).

    `kl_coef` > 0 adds `kl_coef · reference_kl(logp, ref_logp_BT)` to every token's loss before aggregation (as
    TRL's `GRPOTrainer` does with `beta`), and the metric `ref_kl`; it needs `ref_logp_BT`, the reference policy's
    logprobs of the same tokens.
    """
    if isinstance(objective, str):
        check_options(objective, options)
        fn = get_objective(objective)
    else:
        fn = objective
    terms = fn(logp_BT, logp_old_BT, adv, mask_BT, **options)
    if weights_BT is None:
        weights_BT = aggregation_weights(aggregation, mask_BT, group_ids_B)
    loss_BT = terms.loss_BT
    kl_BT = None
    if kl_coef:
        if kl_coef < 0 or ref_logp_BT is None:
            raise ValueError(f"kl_coef must be >= 0 and needs ref_logp_BT (the reference policy's logprobs); got "
                             f"kl_coef={kl_coef}, ref_logp_BT={'given' if ref_logp_BT is not None else None}")
        kl_BT = torch.where(mask_BT > 0, reference_kl(logp_BT, ref_logp_BT), 0.0)  # padding never becomes NaN
        loss_BT = loss_BT + kl_coef * kl_BT
    sums = policy_metric_sums(terms, logp_BT, logp_old_BT, mask_BT, entropy_BT)
    if kl_BT is not None:
        sums["ref_kl"] = kl_BT.detach().double().sum()  # zero off the mask already
    return aggregate(loss_BT, weights_BT), sums


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or inf; `path` is where the offending batch was saved (None if saving failed)."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save` to a temporary file in the same folder, then rename: a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_finite(loss: Tensor | float, batch: Any, *, step: int, save_dir: str | os.PathLike[str]) -> None:
    """Raise NonFiniteLossError, after saving `batch` to `save_dir/nonfinite_step{step}.pt`, if `loss` is not finite.

    `batch` is saved as `batch.to_dict()` when it has one (a RolloutBatch), else as is. Load with
    `torch.load(path, weights_only=False)`.
    """
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    if math.isfinite(value):
        return
    payload = {"step": step, "loss": value, "batch": batch.to_dict() if hasattr(batch, "to_dict") else batch}
    try:
        path: Path | None = save_atomic(payload, Path(save_dir) / f"nonfinite_step{step}.pt")
    except Exception as e:  # noqa: BLE001 (the error about the loss matters more than a failed save)
        log.error("could not save the batch with a non-finite loss: %s", e)
        path = None
    raise NonFiniteLossError(f"non-finite loss {value} at step {step}; batch saved to {path}", path)
