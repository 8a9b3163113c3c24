"""SDPA attention against the explicit-softmax reference: GQA, bottom-right causal alignment (KV cache),
packed sequences, right-padded caches; and the gradients."""

from __future__ import annotations

import pytest
import torch

from xinzhou.ops.attention import attention, attention_naive, attention_sdpa


def _qkv(B=2, Tq=7, Tk=7, H=4, G=2, D=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, Tq, H, D, generator=g, dtype=torch.float64),
            torch.randn(B, Tk, G, D, generator=g, dtype=torch.float64),
            torch.randn(B, Tk, G, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("Tq,Tk", [(7, 7), (1, 9), (3, 9)])
def test_sdpa_matches_naive(Tq, Tk):
    q, k, v = _qkv(Tq=Tq, Tk=Tk)
    assert torch.allclose(attention_sdpa(q, k, v), attention_naive(q, k, v), atol=1e-12)


def test_naive_hand_computed_single_key():
    q, k, v = _qkv(B=1, Tq=1, Tk=1, H=1, G=1)
    assert torch.allclose(attention_naive(q, k, v), v)  # one key: softmax weight 1


def test_bottom_right_alignment_equals_full_rows():
    q, k, v = _qkv(Tq=9, Tk=9)
    full = attention_naive(q, k, v)
    assert torch.allclose(attention_sdpa(q[:, 6:], k, v), full[:, 6:], atol=1e-12)


def test_packed_equals_separate():
    q, k, v = _qkv(B=1, Tq=10, Tk=10)
    cu = torch.tensor([0, 4, 10])
    o = attention(q, k, v, cu_seqlens=cu)
    assert torch.allclose(o[:, :4], attention_naive(q[:, :4], k[:, :4], v[:, :4]), atol=1e-12)
    assert torch.allclose(o[:, 4:], attention_naive(q[:, 4:], k[:, 4:], v[:, 4:]), atol=1e-12)


def test_kv_lengths_right_padded_cache():
    q, k, v = _qkv(B=2, Tq=1, Tk=9)
    lens = torch.tensor([9, 5])
    o = attention_sdpa(q, k, v, kv_lengths=lens)
    assert torch.allclose(o[1:], attention_naive(q[1:], k[1:, :5], v[1:, :5]), atol=1e-12)
    assert torch.allclose(o, attention_naive(q, k, v, kv_lengths=lens), atol=1e-12)


def test_gradients_match():
    q, k, v = _qkv()
    grads = []
    for fn in (attention_naive, attention_sdpa):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        fn(*leaves).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_bad_heads():
    q, k, v = _qkv(H=3, G=2)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v)
    with pytest.raises(ValueError, match="valid options"):
        attention(*_qkv(), impl="flash9")


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cached_chunk_split_path_matches_naive(G, dtype, tol, monkeypatch):
    """A chunk over a longer cache (Tq ≥ 16, prefix ≥ Tq) takes the two-call prefix + causal path on CPU."""
    import xinzhou.ops.attention.sdpa as sdpa_mod

    calls = []
    real = sdpa_mod._prefix_then_causal
    monkeypatch.setattr(sdpa_mod, "_prefix_then_causal", lambda *a: calls.append(1) or real(*a))
    q, k, v = _qkv(B=2, Tq=20, Tk=53, H=4, G=G, D=16)
    ref = attention_naive(q, k, v)
    got = attention_sdpa(q.to(dtype), k.to(dtype), v.to(dtype))
    assert calls and got.dtype == dtype
    assert (got.double() - ref).abs().max() < tol
    # the same chunk with gradients goes through the masked kernel (the split's log-sum-exp has no gradient)
    calls.clear()
    qg = q.clone().requires_grad_()
    attention_sdpa(qg, k, v).sum().backward()
    qn = q.clone().requires_grad_()
    attention_naive(qn, k, v).sum().backward()
    assert not calls and torch.allclose(qg.grad, qn.grad, atol=1e-10)


def test_chunked_prefill_through_split_path_equals_one_pass():
    q, k, v = _qkv(B=1, Tq=96, Tk=96)
    full = attention_naive(q, k, v)
    pieces = [attention_sdpa(q[:, a : a + 32], k[:, : a + 32], v[:, : a + 32]) for a in (0, 32, 64)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-12)
