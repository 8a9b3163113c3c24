"""The "fork-token" softmax bandit: M1's argument for CISPO in miniature, deterministic and CPU-seconds cheap.

Why: M1 (§3.1) moved off PPO/DAPO because rare, low-probability "fork" tokens (Wait, Recheck, ...) reach the upper
clip bound after the first update of a rollout batch and then get no gradient in the remaining off-policy updates,
while CISPO keeps pushing them with a capped weight. Here one action of a softmax policy is the rare correct one;
each rollout batch is followed by `k` minibatch updates. With k = 1 every objective is on-policy and they coincide;
with k = 16 CISPO reaches the target probability in far fewer rollout batches. The run goes through the same
advantage, objective and aggregation code as real training, so it is also an end-to-end check of those pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from xinzhou.rl.advantages import group_advantages
from xinzhou.rl.loss import mean_metrics, policy_loss


@dataclass
class BanditResult:
    objective: str
    batches: int | None  # rollout batches until p(correct) >= target; None if never within max_batches
    p_history: list[float] = field(default_factory=list)  # p(correct) after each rollout batch
    zero_grad_frac: list[float] = field(default_factory=list)  # mean over the k updates of each batch


def run_bandit(
    objective: str,
    *,
    k: int = 16,
    lr: float = 0.5,
    n_actions: int = 10,
    p0: float = 0.02,
    group_size: int = 64,
    target: float = 0.9,
    max_batches: int = 100,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> BanditResult:
    """Train a softmax policy over `n_actions` where action 0 (initial probability `p0`) has reward 1, others 0.

    Per rollout batch: sample `group_size` actions (one group, group-normalised advantages), split them into `k`
    shuffled minibatches and take one SGD step on each (the later ones off-policy), token-level aggregation.
    The sampling stream depends only on `seed`, so objectives are compared on the same first batch.
    """
    if not 0 < p0 < 1 or n_actions < 2:
        raise ValueError(f"need 0 < p0 < 1 and n_actions >= 2, got p0={p0}, n_actions={n_actions}")
    gen = torch.Generator().manual_seed(seed)
    rest = math.log((1 - p0) / (n_actions - 1))
    theta = torch.tensor([math.log(p0)] + [rest] * (n_actions - 1), dtype=torch.float64, requires_grad=True)
    result = BanditResult(objective, None)
    groups = torch.zeros(group_size, dtype=torch.long)
    for batch in range(1, max_batches + 1):
        with torch.no_grad():
            actions = torch.multinomial(torch.softmax(theta, -1), group_size, replacement=True, generator=gen)
            logp_old = torch.log_softmax(theta, -1)[actions]
        adv = group_advantages((actions == 0).double(), groups).double()
        fracs = []
        if adv.abs().sum() > 0:  # a group where every sample agrees carries no signal
            for idx in torch.tensor_split(torch.randperm(group_size, generator=gen), k):
                logp = torch.log_softmax(theta, -1)[actions[idx]]
                loss, metrics = policy_loss(objective, logp[:, None], logp_old[idx, None], adv[idx],
                                            torch.ones(len(idx), 1, dtype=torch.float64), **(options or {}))
                (grad,) = torch.autograd.grad(loss, theta)
                with torch.no_grad():
                    theta -= lr * grad
                fracs.append(mean_metrics(metrics)["zero_grad_frac"])
        p = float(torch.softmax(theta.detach(), -1)[0])
        result.p_history.append(p)
        result.zero_grad_frac.append(sum(fracs) / len(fracs) if fracs else float("nan"))
        if p >= target:
            result.batches = batch
            return result
    return result
