"""Objectives and aggregation against hand-computed values, and the CISPO-vs-DAPO properties M1 claims.

The hand example (used throughout): two sequences, two tokens each, the last token of sequence 1 padded out.

    p_old = 0.5 everywhere;  p = [[0.8, 0.5], [0.2, 0.25]]  ->  r = [[1.6, 1.0], [0.4, 0.5 (masked)]]
    Â = [+1, -1];  3 loss tokens
"""

from __future__ import annotations

import math

import pytest
import torch

from xinzhou.rl import (
    OBJECTIVES,
    aggregation_weights,
    cispo,
    dapo,
    get_objective,
    grpo,
    gspo,
    mean_metrics,
    policy_loss,
)

P = torch.tensor([[0.8, 0.5], [0.2, 0.25]], dtype=torch.float64)
P_OLD = torch.full((2, 2), 0.5, dtype=torch.float64)
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
LN = math.log


def loss_and_grad(name: str, aggregation: str = "token", **options: object) -> tuple[float, torch.Tensor, dict]:
    logp = P.log().requires_grad_()
    loss, sums = policy_loss(name, logp, P_OLD.log(), ADV, MASK, aggregation=aggregation, **options)
    (grad,) = torch.autograd.grad(loss, logp)
    return float(loss.detach()), grad, mean_metrics(sums)


def test_cispo_hand_computed() -> None:
    # cap 1 + 0.5 = 1.5, no lower bound: w = [[1.5, 1], [0.4, -]]; loss_t = -w·Â·log p
    loss, grad, m = loss_and_grad("cispo", eps_high=0.5)
    expected = (-1.5 * LN(0.8) - 1.0 * LN(0.5) + 0.4 * LN(0.2)) / 3
    assert loss == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(grad, torch.tensor([[-1.5, -1.0], [0.4, 0.0]], dtype=torch.float64) / 3)
    assert m["clip_frac"] == pytest.approx(1 / 3)  # only r = 1.6 was capped
    assert m["is_weight"] == pytest.approx((1.5 + 1.0 + 0.4) / 3)
    assert m["zero_grad_frac"] == 0.0
    # k3 KL(π_old‖π) per token: (r - 1) - ln r
    assert m["approx_kl"] == pytest.approx(sum((r - 1) - LN(r) for r in (1.6, 1.0, 0.4)) / 3)


def test_cispo_lower_bound_and_unified_mask() -> None:
    # eps_low=0.5 floors the weight at 0.5: w[1, 0] = 0.5 instead of 0.4
    _, grad, _ = loss_and_grad("cispo", eps_high=0.5, eps_low=0.5)
    assert grad[1, 0] == pytest.approx(0.5 / 3)
    # M1 eq. 7 mask with (0.2, 0.28): r=1.6 with Â>0 and r=0.4 with Â<0 are dropped; only token (0, 1) remains
    loss, grad, m = loss_and_grad("cispo", eps_high=0.5, mask_eps=(0.2, 0.28))
    assert loss == pytest.approx(-LN(0.5) / 3)
    assert torch.allclose(grad, torch.tensor([[0.0, -1.0], [0.0, 0.0]], dtype=torch.float64) / 3)
    assert m["zero_grad_frac"] == pytest.approx(2 / 3)


def test_dapo_hand_computed() -> None:
    # ε = 0.2 / 0.28: (0,0) r=1.6>1.28, Â>0 -> -1.28, flat; (0,1) r=1 -> -1; (1,0) r=0.4<0.8, Â<0 -> +0.8, flat
    loss, grad, m = loss_and_grad("dapo")
    assert loss == pytest.approx((-1.28 - 1.0 + 0.8) / 3)
    assert torch.allclose(grad, torch.tensor([[0.0, -1.0], [0.0, 0.0]], dtype=torch.float64) / 3)
    assert m["clip_frac"] == pytest.approx(2 / 3)
    assert m["zero_grad_frac"] == pytest.approx(2 / 3)
    assert m["is_weight"] == pytest.approx(1 / 3)  # weights 0, 1, 0


def test_grpo_sequence_mean_hand_computed() -> None:
    # ε = 0.2: sequence 0 mean (-1.2 - 1)/2, sequence 1 mean 0.8; batch mean of the two
    loss, grad, _ = loss_and_grad("grpo", aggregation="sequence")
    assert loss == pytest.approx(((-1.2 - 1.0) / 2 + 0.8) / 2)
    assert torch.allclose(grad, torch.tensor([[0.0, -0.25], [0.0, 0.0]], dtype=torch.float64))


def test_gspo_hand_computed() -> None:
    # s_0 = exp((ln 1.6 + ln 1)/2) = sqrt(1.6) inside [0.7, 1.3] -> -s_0; s_1 = 0.4 < 0.7 with Â<0 -> +0.7 (flat)
    loss, grad, m = loss_and_grad("gspo", aggregation="sequence", eps_low=0.3, eps_high=0.3)
    s0 = math.sqrt(1.6)
    assert loss == pytest.approx((-s0 + 0.7) / 2)
    # d(-s_0)/d log p_t = -s_0/2 per token, then the batch mean halves it
    assert torch.allclose(grad, torch.tensor([[-s0 / 4, -s0 / 4], [0.0, 0.0]], dtype=torch.float64))
    assert m["clip_frac"] == pytest.approx(1 / 3)


def test_aggregation_weights_hand_computed() -> None:
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0]])
    groups = torch.tensor([5, 5, 9])
    assert torch.allclose(aggregation_weights("token", mask), mask / 6)
    assert torch.allclose(aggregation_weights("sequence", mask),
                          torch.tensor([[1 / 9] * 3, [1 / 3, 0, 0], [1 / 6, 1 / 6, 0]]))
    # group 5 has 4 tokens, group 9 has 2; 2 prompts
    assert torch.allclose(aggregation_weights("prompt", mask, groups),
                          torch.tensor([[1 / 8] * 3, [1 / 8, 0, 0], [1 / 4, 1 / 4, 0]]))
    for mode in ("token", "sequence", "prompt"):
        assert float(aggregation_weights(mode, mask, groups).sum()) == pytest.approx(1.0)


def random_case(seed: int, b: int = 6, t: int = 7, off_policy: float = 0.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.05
    shift = (torch.rand(b, t, generator=g, dtype=torch.float64) * 2 - 1) * off_policy
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    return logp, (logp - shift), adv, mask


def grad_of(name: str, logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
            aggregation: str = "token", **options: object) -> torch.Tensor:
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(name, x, logp_old, adv, mask, aggregation=aggregation, **options)
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("aggregation", ["token", "sequence", "prompt"])
def test_on_policy_cispo_equals_dapo_and_grpo_exactly(aggregation: str) -> None:
    logp, _, adv, mask = random_case(0)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    weights = aggregation_weights(aggregation, mask, groups)
    g_cispo = grad_of("cispo", logp, logp.detach(), adv, mask, weights_BT=weights)
    g_dapo = grad_of("dapo", logp, logp.detach(), adv, mask, weights_BT=weights)
    g_grpo = grad_of("grpo", logp, logp.detach(), adv, mask, weights_BT=weights)
    assert torch.equal(g_cispo, g_dapo) and torch.equal(g_dapo, g_grpo)
    assert (g_cispo[mask.bool()] != 0).all()


def test_off_policy_cispo_keeps_every_gradient_dapo_zeroes_clipped() -> None:
    logp, logp_old, adv, mask = random_case(1, b=8, t=9, off_policy=1.0)
    m = mask.bool()
    g_cispo = grad_of("cispo", logp, logp_old, adv, mask)
    g_dapo = grad_of("dapo", logp, logp_old, adv, mask)
    terms = dapo(logp, logp_old, adv, mask)
    zero_dapo = int((g_dapo[m] == 0).sum())
    assert zero_dapo > 5  # a good share of tokens are clipped out
    assert zero_dapo == int(terms.zero_grad_BT[m].sum())  # the metric counts exactly the zero-gradient tokens
    assert int((g_cispo[m] == 0).sum()) == 0
    _, sums = policy_loss("cispo", logp, logp_old, adv, mask)
    assert float(sums["zero_grad_frac"]) == 0.0 and float(sums["tokens"]) == float(mask.sum())


def test_padding_does_not_change_loss_or_gradient() -> None:
    logp, logp_old, adv, mask = random_case(2, off_policy=0.5)
    garbage = torch.where(mask.bool(), logp, torch.full_like(logp, -50.0))
    for name in OBJECTIVES:
        for agg in ("token", "sequence"):
            a = grad_of(name, logp, logp_old, adv, mask, agg)
            b = grad_of(name, garbage, logp_old, adv, mask, agg)
            assert torch.allclose(a, b, atol=0, rtol=1e-12), (name, agg)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "prompt"])
def test_micro_batches_sum_to_the_full_batch_gradient(aggregation: str) -> None:
    """Gradient accumulation invariance (the TRL #5619 / ms-swift #10117 class of bug): weights computed once over
    the optimiser-step batch, then any split of the rows sums to the same gradient."""
    logp, logp_old, adv, mask = random_case(3, off_policy=0.5)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    weights = aggregation_weights(aggregation, mask, groups)
    full = grad_of("cispo", logp, logp_old, adv, mask, weights_BT=weights)
    parts = [grad_of("cispo", logp[r], logp_old[r], adv[r], mask[r], weights_BT=weights[r])
             for r in (slice(0, 1), slice(1, 4), slice(4, 6))]
    assert torch.allclose(torch.cat(parts), full, atol=1e-15)


def test_cispo_cap_behaviour() -> None:
    logp = torch.tensor([[0.0]], dtype=torch.float64)
    old = torch.tensor([[-math.log(10)]], dtype=torch.float64)  # r = 10
    one, adv = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    assert float(cispo(logp, old, adv, one, eps_high=4.0).weight_BT) == pytest.approx(5.0)
    assert float(cispo(logp, old, adv, one, eps_high=0.2).weight_BT) == pytest.approx(1.2)
    assert float(cispo(logp, old.exp().mul(1e4).log(), adv, one).weight_BT) == pytest.approx(1e-3)  # no floor


def test_registry_and_bad_input() -> None:
    assert set(OBJECTIVES) == {"cispo", "grpo", "dapo", "gspo"}
    assert get_objective("gspo") is gspo and get_objective("grpo") is grpo
    with pytest.raises(ValueError, match="valid objectives: cispo, dapo, grpo, gspo"):
        get_objective("ppo2")
    logp, logp_old, adv, mask = random_case(4)
    with pytest.raises(ValueError, match="unknown option.*'epsilon'.*eps_high=4.0"):
        policy_loss("cispo", logp, logp_old, adv, mask, epsilon=0.2)
    with pytest.raises(ValueError, match="eps_high must be >= 0"):
        cispo(logp, logp_old, adv, mask, eps_high=-0.8)  # TRL's absolute cap 0.2 written as an offset
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        policy_loss("dapo", logp, logp_old, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="needs group_ids"):
        policy_loss("dapo", logp, logp_old, adv, mask, aggregation="prompt")
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss("dapo", logp, logp_old, adv[:3], mask)
    with pytest.raises(ValueError, match="one advantage per sequence"):
        gspo(logp, logp_old, adv[:, None].expand_as(logp), mask)


def test_entropy_metric_is_reported() -> None:
    logp, logp_old, adv, mask = random_case(5)
    _, sums = policy_loss("cispo", logp, logp_old, adv, mask, entropy_BT=torch.full_like(logp, 2.0))
    assert all(not v.requires_grad for v in sums.values())
    m = mean_metrics(sums)
    assert m["entropy"] == pytest.approx(2.0) and m["tokens"] == float(mask.sum())
    assert set(m) == {"tokens", "clip_frac", "is_weight", "ratio", "approx_kl", "zero_grad_frac", "entropy"}


def test_loop_contract_weights_scaled_by_step_tokens() -> None:
    """Under the training loop, each micro-batch returns a sum and its token count; the loop divides the summed
    loss by the summed tokens. Weights scaled by the step's token count make that equal the aggregated loss."""
    logp, logp_old, adv, mask = random_case(6, off_policy=0.5)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    weights = aggregation_weights("prompt", mask, groups)
    full, _ = policy_loss("cispo", logp, logp_old, adv, mask, weights_BT=weights)
    scaled = weights * mask.sum()
    parts = [policy_loss("cispo", logp[r], logp_old[r], adv[r], mask[r], weights_BT=scaled[r])
             for r in (slice(0, 2), slice(2, 6))]
    loop_loss = sum(p[0] for p in parts) / sum(p[1]["tokens"] for p in parts)
    assert float(loop_loss) == pytest.approx(float(full), rel=1e-12)


# ------------------------------------------------------------------ KL penalty to a reference policy (GRPO's β)
P_REF = torch.full((2, 2), 0.4, dtype=torch.float64)


def test_reference_kl_penalty_matches_hand_values() -> None:
    """k3 = p_ref/p − ln(p_ref/p) − 1 per token, gradient w.r.t. log p = 1 − p_ref/p, added to every objective's
    per-token loss before aggregation (token mean over the 3 loss tokens here)."""
    k3 = [0.4 / 0.8 - LN(0.5) - 1, 0.4 / 0.5 - LN(0.8) - 1, 0.4 / 0.2 - LN(2.0) - 1]  # 0.1931, 0.0231, 0.3069
    beta = 0.3
    for name in ("cispo", "dapo", "grpo"):
        base_loss, base_grad, _ = loss_and_grad(name)
        loss, grad, metrics = loss_and_grad(name, kl_coef=beta, ref_logp_BT=P_REF.log())
        assert loss - base_loss == pytest.approx(beta * sum(k3) / 3, abs=1e-12)
        expected = torch.tensor([[0.5, 0.2], [-1.0, 0.0]], dtype=torch.float64) * beta / 3
        assert torch.allclose(grad - base_grad, expected, atol=1e-12)
        assert metrics["ref_kl"] == pytest.approx(sum(k3) / 3, abs=1e-12)


def test_reference_kl_is_zero_at_the_reference_and_needs_it() -> None:
    base_loss, base_grad, _ = loss_and_grad("cispo")
    loss, grad, metrics = loss_and_grad("cispo", kl_coef=1.0, ref_logp_BT=P.log())
    assert loss == pytest.approx(base_loss, abs=1e-15) and torch.allclose(grad, base_grad, atol=1e-15)
    assert metrics["ref_kl"] == 0
    with pytest.raises(ValueError, match="needs ref_logp_BT"):
        loss_and_grad("cispo", kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        loss_and_grad("cispo", kl_coef=-0.1, ref_logp_BT=P.log())
