"""MoE routing and expert compute: the sorted-dispatch path against the per-token loop, routers against
hand-computed values, and the load-balance loss's fixed points."""

from __future__ import annotations

import pytest
import torch

from xinzhou.ops.moe import load_balance_loss, moe_experts, moe_grouped, moe_naive, route


def _weights(E=5, D=8, Fw=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(E, 2 * Fw, D, generator=g, dtype=torch.float64), torch.randn(E, D, Fw, generator=g,
                                                                                  dtype=torch.float64)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_grouped_matches_naive_forward_and_backward(kind):
    gu, dn = _weights()
    x = torch.randn(23, 8, dtype=torch.float64)
    w, idx, _ = route(torch.randn(23, 5), 2, kind, torch.randn(5) if kind == "sigmoid" else None)
    w = w.double()
    grads = []
    for fn in (moe_naive, moe_grouped):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, gu, dn)]
        y = fn(leaves[0], leaves[1], idx, leaves[2], leaves[3])
        y.pow(2).sum().backward()
        grads.append((y.detach(), [t.grad for t in leaves]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-10)


def test_unused_experts_and_empty_input():
    gu, dn = _weights()
    x = torch.randn(4, 8, dtype=torch.float64)
    idx = torch.tensor([[0, 1]] * 4)
    w = torch.full((4, 2), 0.5, dtype=torch.float64)
    assert torch.allclose(moe_experts(x, w, idx, gu, dn), moe_naive(x, w, idx, gu, dn))
    assert moe_experts(x[:0], w[:0], idx[:0], gu, dn).shape == (0, 8)


@pytest.mark.skipif(not hasattr(torch.nn.functional, "grouped_mm"), reason="needs F.grouped_mm (PyTorch >= 2.9)")
def test_cpu_fp32_grouped_gemm_matches_the_per_expert_loop(monkeypatch):
    """fp32 on CPU runs all experts through F.grouped_mm; it must equal the loop (forward and every gradient),
    also with experts that get no token."""
    from xinzhou.ops.moe import grouped

    gu, dn = (t.float() for t in _weights(E=6, Fw=12))
    x = torch.randn(17, 8)
    idx = torch.randint(0, 4, (17, 2))  # experts 4 and 5 unused
    w = torch.rand(17, 2)
    assert grouped._grouped_mm(x, 8, 12) is torch.nn.functional.grouped_mm
    assert grouped._grouped_mm(x, 8, 6) is None  # a 24-byte row stride: the loop runs
    outs = []
    for use_gemm in (True, False):
        if not use_gemm:
            monkeypatch.setattr(grouped, "_grouped_mm", lambda *a: None)
        leaves = [t.clone().requires_grad_(True) for t in (x, w, gu, dn)]
        y = moe_grouped(leaves[0], leaves[1], idx, leaves[2], leaves[3])
        y.pow(2).sum().backward()
        outs.append([y.detach()] + [t.grad for t in leaves])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert moe_grouped(x[:0], w[:0], idx[:0], gu, dn).shape == (0, 8)


def test_softmax_router_hand_computed():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    w, idx, probs = route(logits, 2, "softmax")
    p = torch.softmax(logits, -1)[0]
    assert idx.tolist() == [[2, 1]]
    assert torch.allclose(w[0], torch.stack([p[2], p[1]]) / (p[2] + p[1]))


def test_sigmoid_router_bias_selects_but_does_not_weight():
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    bias = torch.tensor([0.0, 5.0, 0.0])  # pushes expert 1 into the top-2
    w, idx, _ = route(logits, 2, "sigmoid", bias)
    assert sorted(idx[0].tolist()) == [0, 1]
    s = torch.sigmoid(logits[0])
    order = idx[0].tolist()
    assert torch.allclose(w[0], s[order] / s[order].sum())  # weights from unbiased scores


def test_load_balance_loss_uniform_is_one_and_collapse_is_large():
    E, N = 4, 64
    probs = torch.full((N, E), 1 / E)
    idx = torch.arange(N).remainder(E).view(N, 1)
    assert torch.isclose(load_balance_loss(probs, idx, E), torch.tensor(1.0))
    collapsed = torch.zeros(N, E)
    collapsed[:, 0] = 1
    assert torch.isclose(load_balance_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), E), torch.tensor(4.0))


def test_unknown_impl_and_router():
    with pytest.raises(ValueError, match="valid options"):
        route(torch.zeros(1, 3), 1, "relu")
    gu, dn = _weights()
    with pytest.raises(ValueError, match="valid options"):
        moe_experts(torch.zeros(1, 8), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), gu, dn, impl="x")
