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
