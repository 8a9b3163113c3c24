"""Every lightning-attention implementation against the fp64 oracle: forward, q/k/v gradients, final state,
several block sizes, T not a multiple of the block, packed sequences, a carried initial state, and chunked
prefill of a long input in pieces."""

from __future__ import annotations

import pytest
import torch

from xinzhou.ops.lightning import (
    lightning_attn,
    lightning_attn_chunk,
    lightning_attn_naive,
    lightning_attn_recurrent,
    resolve_impl,
)


def _inputs(B=2, T=45, H=3, K=8, V=6, dtype=torch.float64, state=True, N=None):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    slope = torch.tensor([0.9, 0.1, 0.005][:H], dtype=torch.float32)
    s0 = torch.randn(N or B, H, K, V, generator=g, dtype=torch.float64) if state else None
    return q, k, v, slope, s0


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_naive_forms_agree():
    q, k, v, slope, s0 = _inputs()
    o1, s1 = lightning_attn_naive(q, k, v, slope, initial_state=s0, output_final_state=True)
    o2, s2 = lightning_attn_naive(q, k, v, slope, initial_state=s0, output_final_state=True, form="recurrent")
    assert _rel(o1, o2) < 1e-12 and _rel(s1, s2) < 1e-12


def test_naive_hand_computed():
    # one head, K = V = 1: o_t = Σ_j λ^{t-j} q_t k_j v_j
    q = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    k = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    v = torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    lam = 0.5
    slope = torch.tensor([-torch.log(torch.tensor(lam)).item()])
    o, s = lightning_attn_naive(q, k, v, slope, output_final_state=True)
    expect = [1 * (1), 2 * (lam * 1 + 3), 3 * (lam**2 * 1 + lam * 3 + 2)]
    assert torch.allclose(o.flatten(), torch.tensor(expect, dtype=torch.float64), atol=1e-6)
    assert abs(s.item() - (lam**2 * 1 + lam * 3 + 2)) < 1e-6


@pytest.mark.parametrize("block", [1, 8, 16, 64])
@pytest.mark.parametrize("T", [1, 45, 64])
def test_chunk_forward_and_state(block, T):
    q, k, v, slope, s0 = _inputs(T=T)
    ref_o, ref_s = lightning_attn_naive(q, k, v, slope, initial_state=s0, output_final_state=True)
    o, s = lightning_attn_chunk(q, k, v, slope, initial_state=s0, output_final_state=True, block_size=block)
    assert _rel(o, ref_o) < 1e-12 and _rel(s, ref_s) < 1e-12


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_gradients_match_naive(impl):
    q, k, v, slope, s0 = _inputs(T=37)
    grads = {}
    for name in ("naive", impl):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, s0)]
        o, s = lightning_attn(*leaves[:3], slope, initial_state=leaves[3], output_final_state=True, impl=name)
        w_o, w_s = torch.linspace(-1, 1, o.numel(), dtype=o.dtype), torch.linspace(1, 2, s.numel(), dtype=s.dtype)
        ((o.flatten() * w_o).sum() + (s.flatten() * w_s).sum()).backward()
        grads[name] = [t.grad for t in leaves]
    for g_ref, g in zip(grads["naive"], grads[impl]):
        assert _rel(g, g_ref) < 1e-10


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
@pytest.mark.parametrize("block", [4, 16])
def test_packed_sequences(impl, block):
    cu = torch.tensor([0, 5, 5, 20, 45], dtype=torch.int32)  # includes an empty sequence
    q, k, v, slope, s0 = _inputs(B=1, T=45, N=4)
    ref_o, ref_s = lightning_attn_naive(q, k, v, slope, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    kw = dict(block_size=block) if impl == "chunk" else {}
    fn = lightning_attn_chunk if impl == "chunk" else lightning_attn_recurrent
    o, s = fn(q, k, v, slope, initial_state=s0, output_final_state=True, cu_seqlens=cu, **kw)
    assert _rel(o, ref_o) < 1e-12 and _rel(s, ref_s) < 1e-12
    # each packed sequence equals running it alone: documents never see each other
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        if b > a:
            alone, _ = lightning_attn_naive(q[:, a:b], k[:, a:b], v[:, a:b], slope, initial_state=s0[n : n + 1])
            assert _rel(o[:, a:b], alone) < 1e-12


def test_packed_gradients():
    cu = torch.tensor([0, 7, 30, 33])
    q, k, v, slope, _ = _inputs(B=1, T=33)
    grads = {}
    for name in ("naive", "chunk"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        o, _ = lightning_attn(*leaves, slope, cu_seqlens=cu, impl=name)
        (o * torch.cos(torch.arange(o.numel(), dtype=o.dtype)).view_as(o)).sum().backward()
        grads[name] = [t.grad for t in leaves]
    for a, b in zip(grads["naive"], grads["chunk"]):
        assert _rel(b, a) < 1e-10


@pytest.mark.parametrize("pieces", [[300], [100, 156, 44], [1] * 5 + [295], [256, 44]])
def test_chunked_prefill_equals_one_pass(pieces):
    q, k, v, slope, _ = _inputs(B=1, T=300, dtype=torch.float32, state=False)
    full, s_full = lightning_attn(q, k, v, slope, output_final_state=True, impl="chunk")
    outs, state, t0 = [], None, 0
    for n in pieces:
        o, state = lightning_attn(q[:, t0 : t0 + n], k[:, t0 : t0 + n], v[:, t0 : t0 + n], slope,
                                  initial_state=state, output_final_state=True)
        outs.append(o)
        t0 += n
    assert _rel(torch.cat(outs, 1), full) < 1e-5 and _rel(state, s_full) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [45, 64, 100])
def test_forward_only_pieces_are_bit_identical_to_one_pass(monkeypatch, dtype, T):
    """Without gradients the chunk kernel runs long inputs in pieces of whole blocks (`PIECE_BYTES`): exactly the
    one-pass result, whatever T and the piece length; with gradients it keeps one pass."""
    from xinzhou.ops.lightning import chunk

    q, k, v, slope, s0 = _inputs(T=T, dtype=dtype)
    s0 = s0.to(dtype)
    monkeypatch.setattr(chunk, "PIECE_BYTES", 1 << 40)
    one_o, one_s = lightning_attn_chunk(q, k, v, slope, initial_state=s0, output_final_state=True, block_size=8)
    ref_o, ref_s = lightning_attn_naive(q, k, v, slope, initial_state=s0, output_final_state=True)
    calls = []
    dense = chunk._dense
    monkeypatch.setattr(chunk, "_dense", lambda *a: calls.append(a[0].shape[1]) or dense(*a))
    for blocks in (1, 2, 3):  # pieces of 8, 16, 24 tokens
        monkeypatch.setattr(chunk, "PIECE_BYTES", blocks * 2 * 3 * 8 * 8 * torch.finfo(dtype).bits // 8)
        calls.clear()
        with torch.no_grad():
            o, s = lightning_attn_chunk(q, k, v, slope, initial_state=s0, output_final_state=True, block_size=8)
        assert calls == [min(8 * blocks, T - t0) for t0 in range(0, T, 8 * blocks)]
        assert torch.equal(o, one_o) and torch.equal(s, one_s)
        assert _rel(o, ref_o) < (1e-5 if dtype == torch.float32 else 1e-12) and _rel(s, ref_s) < 1e-5
    calls.clear()
    lightning_attn_chunk(q.requires_grad_(), k, v, slope, initial_state=s0, block_size=8)
    assert calls == [T]


def test_low_precision_inputs_keep_fp32_state():
    q, k, v, slope, _ = _inputs(B=1, T=80, dtype=torch.float32, state=False)
    slope = torch.tensor([0.001, 0.0005, 0.0001])  # λ > 0.998: would round to 1.0 in bf16
    ref, ref_s = lightning_attn_naive(q.double(), k.double(), v.double(), slope, output_final_state=True)
    for impl in ("chunk", "recurrent"):
        o, s = lightning_attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), slope, output_final_state=True, impl=impl)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
        assert _rel(s.double(), ref_s) < 2e-2  # only input rounding, no state drift


def test_impl_selection_and_env_override(monkeypatch):
    q = torch.zeros(1, 1, 1, 4)
    assert resolve_impl("auto", q, has_state=True) == "recurrent"
    assert resolve_impl("auto", torch.zeros(1, 64, 1, 4), has_state=False) == "chunk"
    monkeypatch.setenv("XINZHOU_LIGHTNING_IMPL", "naive")
    assert resolve_impl("auto", q, has_state=True) == "naive"
    monkeypatch.setenv("XINZHOU_LIGHTNING_IMPL", "bogus")
    with pytest.raises(ValueError, match="valid options"):
        resolve_impl("auto", q, has_state=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(slope=torch.ones(2)), "slope must have shape"),
        (dict(initial_state=torch.zeros(2, 3, 8, 8)), "initial_state must have shape"),
        (dict(cu_seqlens=torch.tensor([0, 10, 45])), "requires batch size 1"),
    ],
)
def test_bad_input(kwargs, match):
    q, k, v, slope, _ = _inputs(state=False)
    args = dict(slope=slope)
    args.update(kwargs)
    slope = args.pop("slope")
    with pytest.raises(ValueError, match=match):
        lightning_attn(q, k, v, slope, **args)


def test_bad_cu_seqlens():
    q, k, v, slope, _ = _inputs(B=1, state=False)
    with pytest.raises(ValueError, match="rise from 0"):
        lightning_attn(q, k, v, slope, cu_seqlens=torch.tensor([0, 50, 45]))
