"""The Triton lightning-attention kernels against the fp64 oracle: forward, q/k/v and initial-state gradients,
final state, packed sequences, several chunk sizes, low-precision inputs, the decode kernel and the dispatcher.

Without CUDA the kernels run on CPU under triton's interpreter (``TRITON_INTERPRET=1``, set here before triton
is imported), at tiny sizes. With CUDA the same tests run the compiled kernels, and the ``gpu`` tests add full-size
bf16 checks against the fp32 chunk path.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' first use (they are decorated lazily)
os.environ.setdefault("XINZHOU_TRITON_AUTOTUNE", "0")  # on a GPU: one compile per shape, no tuning sweeps
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

from xinzhou.ops.lightning import lightning_attn, lightning_attn_chunk, lightning_attn_naive, resolve_impl  # noqa: E402
from xinzhou.ops.lightning.triton import lightning_attn_triton, lightning_decode_triton  # noqa: E402

DEV = "cuda" if HAS_CUDA else "cpu"
TOL32 = 1e-5 if HAS_CUDA else 2e-6  # fp32 inputs: 3-pass TF32 matmuls on a GPU, exact fp32 in the interpreter


def _inputs(B=2, T=100, H=2, K=16, V=32, dtype=torch.float32, N=None, state=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    slope = torch.tensor([0.9, 0.05, 0.005, 0.3][:H])
    s0 = torch.randn(N or B, H, K, V, generator=g) if state else None
    q, k, v = (x.to(DEV, dtype).requires_grad_() for x in (q, k, v))
    return q, k, v, slope.to(DEV), None if s0 is None else s0.to(DEV).requires_grad_()


def _rel(a, b) -> float:
    """Max error relative to the reference's largest entry (a ratio, so one tolerance fits every scale)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _run(fn, q, k, v, slope, s0, cu=None, **kw):
    """Outputs and gradients of a random loss on o and on the final state."""
    o, s = fn(q, k, v, slope, initial_state=s0, output_final_state=True, cu_seqlens=cu, **kw)
    g = torch.Generator().manual_seed(7)
    do = torch.randn(o.shape, generator=g).to(o.device, o.dtype)
    ds = torch.randn(s.shape, generator=g).to(s.device, s.dtype)
    leaves = [x for x in (q, k, v, s0) if x is not None]
    grads = torch.autograd.grad((o * do).float().sum() + (s * ds).sum(), leaves)
    return [o, s, *grads]


def _oracle(q, k, v, slope, s0, cu=None):
    """fp64 naive on the same (possibly rounded) inputs, gradients cast back to each input's dtype."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    s064 = None if s0 is None else s0.detach().double().requires_grad_()
    return _run(lightning_attn_naive, q64, k64, v64, slope, s064, cu)


def _check(got, want, tol):
    names = ["o", "final_state", "dq", "dk", "dv", "dh0"]
    errs = {n: _rel(a, b) for n, a, b in zip(names, got, want)}
    assert all(e < tol for e in errs.values()), errs
    return errs


@pytest.mark.parametrize(
    "B,T,H,K,V,chunk,state",
    [(2, 100, 2, 16, 32, 32, True), (1, 77, 1, 32, 16, 16, False), (1, 64, 2, 16, 16, 64, True)],
)
def test_forward_backward_match_naive(B, T, H, K, V, chunk, state):
    q, k, v, slope, s0 = _inputs(B, T, H, K, V, state=state)
    _check(_run(lightning_attn_triton, q, k, v, slope, s0, chunk_size=chunk), _oracle(q, k, v, slope, s0), TOL32)


def test_packed_sequences_match_naive():
    cu = torch.tensor([0, 5, 70, 70, 150], device=DEV)  # includes an empty sequence and a 1-token chunk tail
    q, k, v, slope, s0 = _inputs(1, 150, 2, 32, 16, N=4)
    _check(_run(lightning_attn_triton, q, k, v, slope, s0, cu, chunk_size=32), _oracle(q, k, v, slope, s0, cu), TOL32)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_low_precision_forward_keeps_fp32_state(dtype, tol):
    q, k, v, slope, s0 = _inputs(1, 96, 2, 16, 16, dtype=dtype)
    with torch.no_grad():
        o, s = lightning_attn_triton(q, k, v, slope, initial_state=s0, output_final_state=True, chunk_size=32)
    ref_o, ref_s = _oracle(q, k, v, slope, s0)[:2]
    assert o.dtype == dtype and s.dtype == torch.float32
    assert _rel(o, ref_o) < tol and _rel(s, ref_s) < tol


def test_decode_kernel_with_slots():
    H, K, V = 2, 16, 32
    g = torch.Generator().manual_seed(3)
    pool = torch.randn(5, H, K, V, generator=g).to(DEV)
    q, k = (torch.randn(3, H, K, generator=g).to(DEV) for _ in range(2))
    v = torch.randn(3, H, V, generator=g).to(DEV)
    slope = torch.tensor([0.3, 0.01], device=DEV)
    slots = torch.tensor([4, -1, 1], device=DEV)
    before = pool.clone()
    o = lightning_decode_triton(q, k, v, slope, pool, slots)
    for b, slot in enumerate(slots.tolist()):
        if slot < 0:
            assert (o[b] == 0).all()
            continue
        ref_o, ref_s = lightning_attn_naive(q[b, None, None], k[b, None, None], v[b, None, None], slope,
                                            initial_state=before[slot, None], output_final_state=True)
        assert _rel(o[b], ref_o[0, 0]) < 1e-6 and _rel(pool[slot], ref_s[0]) < 1e-6
    untouched = [0, 2, 3]
    assert torch.equal(pool[untouched], before[untouched])


def test_dispatcher_routes_to_triton_and_single_token_decode():
    q, k, v, slope, s0 = _inputs(3, 1, 2, 16, 16)
    with torch.no_grad():
        o, s = lightning_attn(q, k, v, slope, initial_state=s0, output_final_state=True, impl="triton")
    ref_o, ref_s = _oracle(q, k, v, slope, s0)[:2]
    assert _rel(o, ref_o) < 1e-6 and _rel(s, ref_s) < 1e-6
    assert not torch.equal(s, s0)  # the caller's state is not updated in place by the generic API
    if not HAS_CUDA:
        assert resolve_impl("auto", q, True) != "triton"  # CPU tensors keep the torch paths


def test_empty_input_and_bad_arguments():
    q, k, v, slope, s0 = _inputs(1, 0, 2, 16, 16)
    o, s = lightning_attn_triton(q, k, v, slope, initial_state=s0, output_final_state=True)
    assert o.shape == (1, 0, 2, 16) and torch.equal(s, s0)
    q, k, v, slope, _ = _inputs(1, 8, 2, 16, 16)
    with pytest.raises(ValueError, match="chunk_size"):
        lightning_attn_triton(q, k, v, slope, chunk_size=48)
    with pytest.raises(TypeError, match="fp64"):
        lightning_attn_triton(q.double(), k.double(), v.double(), slope)
    with pytest.raises(ValueError, match="fp32"):
        lightning_decode_triton(q[:, 0], k[:, 0], v[:, 0], slope, torch.zeros(1, 2, 16, 16, device=DEV).half())


def test_clear_errors_without_triton_or_device(monkeypatch):
    q, k, v, slope, _ = _inputs(1, 8, 2, 16, 16)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "triton", None)  # find_spec("triton") now answers None
        with pytest.raises(RuntimeError, match="pip install triton"):
            lightning_attn_triton(q, k, v, slope)
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            lightning_attn_triton(q, k, v, slope)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [16, 64, 128])
def test_head_dim_64_several_chunk_sizes(chunk):
    q, k, v, slope, s0 = _inputs(1, 300, 2, 64, 64)
    _check(_run(lightning_attn_triton, q, k, v, slope, s0, chunk_size=chunk), _oracle(q, k, v, slope, s0), TOL32)


@pytest.mark.slow
def test_odd_head_dims_and_several_value_tiles():
    q, k, v, slope, s0 = _inputs(2, 90, 2, 24, 80)  # K not a power of two; V spans several tiles
    _check(_run(lightning_attn_triton, q, k, v, slope, s0, chunk_size=32), _oracle(q, k, v, slope, s0), TOL32)


@pytest.mark.slow
def test_segments_chained_through_state_equal_one_pass():
    """Training on a long sequence in segments: gradients flow through the carried state."""
    q, k, v, slope, s0 = _inputs(1, 200, 2, 16, 16)
    full = _run(lightning_attn_triton, q, k, v, slope, s0, chunk_size=32)
    o1, s1 = lightning_attn_triton(q[:, :70], k[:, :70], v[:, :70], slope, initial_state=s0,
                                   output_final_state=True, chunk_size=32)
    o2, s2 = lightning_attn_triton(q[:, 70:], k[:, 70:], v[:, 70:], slope, initial_state=s1,
                                   output_final_state=True, chunk_size=32)
    g = torch.Generator().manual_seed(7)
    do = torch.randn(full[0].shape, generator=g).to(DEV)
    ds = torch.randn(full[1].shape, generator=g).to(DEV)
    loss = (torch.cat([o1, o2], 1) * do).sum() + (s2 * ds).sum()
    grads = torch.autograd.grad(loss, (q, k, v, s0))
    _check([torch.cat([o1, o2], 1), s2, *grads], full, TOL32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_packed_low_precision_gradients(dtype, tol):
    cu = torch.tensor([0, 40, 41, 130], device=DEV)
    q, k, v, slope, s0 = _inputs(1, 130, 2, 32, 32, dtype=dtype, N=3)
    _check(_run(lightning_attn_triton, q, k, v, slope, s0, cu, chunk_size=64), _oracle(q, k, v, slope, s0, cu), tol)


@pytest.mark.slow
def test_gradient_of_initial_state_alone():
    q, k, v, slope, s0 = _inputs(2, 50, 2, 16, 16)
    q, k, v = (x.detach() for x in (q, k, v))
    o, s = lightning_attn_triton(q, k, v, slope, initial_state=s0, output_final_state=True, chunk_size=16)
    (g,) = torch.autograd.grad(o.sum() + s.sum(), s0)
    s064 = s0.detach().double().requires_grad_()
    o_r, s_r = lightning_attn_naive(q.double(), k.double(), v.double(), slope, initial_state=s064,
                                    output_final_state=True)
    (g_r,) = torch.autograd.grad(o_r.sum() + s_r.sum(), s064)
    assert _rel(g, g_r) < TOL32


# ---- full size on a GPU: bf16 kernels against the fp32 chunk path ----


def _gpu_case(T, cu=None, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    N = 1 if cu is None else cu.numel() - 1
    B, H, D = (1, 4, 128) if cu is not None else (2, 4, 128)
    q, k, v = (torch.nn.functional.silu(torch.randn(B, T, H, D, device="cuda", generator=g)) for _ in range(3))
    slope = torch.tensor([0.9, 0.1, 0.01, 1e-4], device="cuda")
    s0 = torch.randn(N if cu is not None else B, H, D, D, device="cuda", generator=g)
    bf = [x.bfloat16().requires_grad_() for x in (q, k, v)]
    fp = [x.bfloat16().float().requires_grad_() for x in (q, k, v)]
    return bf, fp, slope, s0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("packed", [False, True])
def test_gpu_bf16_full_size_against_fp32_chunk(packed):
    T = 8192
    cu = torch.tensor([0, 1000, 1001, 5000, T], device="cuda") if packed else None
    bf, fp, slope, s0 = _gpu_case(T, cu)
    s_bf, s_fp = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    got = _run(lightning_attn_triton, *bf, slope, s_bf, cu)
    want = _run(lightning_attn_chunk, *fp, slope, s_fp, cu)
    _check(got, want, 3e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_decode_matches_prefill():
    _, fp, slope, s0 = _gpu_case(513)
    q, k, v = (x.detach() for x in fp)
    with torch.no_grad():
        _, state = lightning_attn_triton(q[:, :512], k[:, :512], v[:, :512], slope, initial_state=s0,
                                         output_final_state=True)
        o_last = lightning_decode_triton(q[:, 512], k[:, 512], v[:, 512], slope, state)
        ref, ref_s = lightning_attn_chunk(q, k, v, slope, initial_state=s0, output_final_state=True)
    assert _rel(o_last, ref[:, 512]) < 1e-3 and _rel(state, ref_s) < 1e-3
    assert resolve_impl("auto", q, False) == "triton"  # CUDA tensors pick this path
