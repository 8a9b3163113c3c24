"""GPU benchmark: xinzhou's Triton lightning attention and MoE grouped GEMM against their peers, side by side.

Why it exists: the issue's speed targets (≥ 1.0× flash-linear-attention ``chunk_simple_gla`` forward+backward at
T ≥ 8K, ≥ 5× PyTorch SDPA (Flash) causal attention at 64K) are only meaningful measured in one process on one
GPU. Everything runs here in one go (about 5 minutes on an H200, most of it triton autotuning on the first
call of each kernel):

1. spot check: xinzhou triton vs fla (``g_gamma = -slope``, ``scale = 1``) vs the fp32 chunk path;
2. prefill, forward and forward+backward at T = 2K … 128K with B·T fixed: ms, speed-ups, achieved TFLOP/s and
   compulsory-traffic bandwidth as a share of the device peaks;
3. decode: one token per sequence against a batch of fp32 states (the engine's decode step), latency vs batch;
4. MoE: ``moe_experts`` through ``torch._grouped_mm`` vs the same sorted dispatch with a per-expert loop;
5. the targets, PASS/FAIL.

Usage::

    python benchmarks/gpu.py               # full run (needs CUDA)
    python benchmarks/gpu.py --quick       # fewer sizes
    python benchmarks/gpu.py --cpu-smoke   # tiny sizes on CPU under TRITON_INTERPRET=1: checks the script runs

fla is optional (``pip install fla-core``); when it is missing its columns say "not installed".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H20": 148.0, "A100": 312.0}  # dense bf16 tensor-core peaks
PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "H20": 4000.0, "A100": 2039.0}  # HBM bandwidth


@dataclass
class Setup:
    """Sizes for one run; ``smoke`` shrinks everything so the CPU interpreter finishes in a minute."""

    smoke: bool
    tokens: int  # B·T, fixed across T
    Ts: list[int]
    H: int
    D: int
    decode_H: int
    decode_batches: list[int]
    moe_shapes: list[tuple[int, int, int, int, int]]  # (tokens, D, F, experts, top-k)
    long_T: int  # the fla target holds from this T up
    sdpa_T: int  # the SDPA target is checked at this T
    device: str
    dtype: object


def make_setup(args: argparse.Namespace, torch) -> Setup:
    if args.cpu_smoke:
        return Setup(True, 256, [64, 128, 256], 2, 32, 2, [1, 4], [(64, 32, 32, 4, 2)], 128, 256, "cpu",
                     torch.float32)
    Ts = [2048, 8192, 65536] if args.quick else [2048, 4096, 8192, 16384, 32768, 65536, 131072]
    moe = [(4096, 4096, 4096, 32, 2), (16384, 4096, 4096, 32, 2), (16384, 3072, 1536, 256, 8)]
    return Setup(False, 131072, Ts, 16, 128, 64, [1, 8, 32, 128, 512], moe[:2] if args.quick else moe, 8192, 65536,
                 "cuda", torch.bfloat16)


def timer(setup: Setup) -> Callable[[Callable[[], object]], float]:
    """Milliseconds per call: triton's CUDA-event timer on GPU, one wall-clock call on the CPU smoke run."""
    if setup.smoke:
        def wall(fn):
            fn()
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return wall
    from triton.testing import do_bench

    def bench(fn):
        fn()  # autotune / compile outside the timing
        return do_bench(fn, warmup=25, rep=100)
    return bench


def load_fla():
    """(chunk_simple_gla, fused_recurrent_simple_gla, version) or the reason they are unavailable."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except Exception as e:  # noqa: BLE001 (any import failure means "not available")
        return None, None, f"not installed ({type(e).__name__})"
    try:
        from importlib.metadata import version

        ver = version("fla-core")
    except Exception:  # noqa: BLE001
        ver = "?"
    return chunk_simple_gla, fused_recurrent_simple_gla, ver


def measure(bench, fn: Callable[[], object]) -> float | str:
    """``bench(fn)``; a failure becomes a short message in its cell instead of ending the run."""
    try:
        return bench(fn)
    except Exception as e:  # noqa: BLE001
        if "out of memory" in str(e).lower():
            import torch

            torch.cuda.empty_cache()
            return "OOM"
        return f"error: {type(e).__name__}: {str(e)[:60]}"


def fmt(x, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, float) else str(x)


def us(ms):
    return ms * 1e3 if isinstance(ms, float) else ms


def pct(work: float, ms, peak: float) -> str:
    """``work`` per millisecond (GFLOP/ms = TFLOP/s, MB/ms = GB/s) and its share of the peak."""
    if not isinstance(ms, float):
        return "-"
    return f"{work / ms:.0f} ({100 * work / ms / peak:.0f}%)"


def ratio(num, den) -> str:
    return f"{num / den:.2f}x" if isinstance(num, float) and isinstance(den, float) and den > 0 else "-"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def slopes(H: int, torch, device: str):
    """MiniMax's ALiBi slopes for layer 0 (the most local layer), fp32."""
    return torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], device=device, dtype=torch.float32)


def lightning_flops(T: int, B: int, H: int, D: int, chunk: int = 64) -> tuple[float, float]:
    """Matmul FLOPs the chunked algorithm issues (chunk 64, K = V = D): forward, forward+backward.

    Per token and head: forward ``2C(K+V)`` intra-chunk + ``4KV`` for q·h and the state update; backward recomputes
    the states and adds ``6CK + 4CV + 8KV``. fla's chunk_simple_gla issues about the same.
    """
    per = B * T * H
    fwd = per * (2 * chunk * 2 * D + 4 * D * D)
    bwd = per * (6 * chunk * D + 4 * chunk * D + 10 * D * D)
    return fwd, fwd + bwd


def sdpa_flops(T: int, B: int, H: int, D: int) -> tuple[float, float]:
    """Causal softmax attention, FlashAttention's convention: forward ``2·B·H·T²·D``, backward 2.5× that."""
    fwd = 2.0 * B * H * T * T * D
    return fwd, 3.5 * fwd


def _rel(a, b) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def spot_check(setup: Setup, torch, fla_chunk) -> None:
    from xinzhou.ops.lightning import lightning_attn_chunk
    from xinzhou.ops.lightning.triton import lightning_attn_triton

    T = min(4096, setup.Ts[-1])
    g = torch.Generator(device=setup.device).manual_seed(0)
    q, k, v = (torch.nn.functional.silu(torch.randn(2, T, setup.H, setup.D, device=setup.device, generator=g))
               for _ in range(3))
    s = slopes(setup.H, torch, setup.device)
    ref, ref_s = lightning_attn_chunk(q.float(), k.float(), v.float(), s, output_final_state=True)
    lo = [x.to(setup.dtype) for x in (q, k, v)]
    o, st = lightning_attn_triton(*lo, s, output_final_state=True)
    line = f"spot check T={T}: xinzhou triton vs fp32 chunk: o {_rel(o, ref):.2e}, state {_rel(st, ref_s):.2e}"
    if fla_chunk is not None:
        try:
            o_f, st_f = fla_chunk(*lo, g_gamma=-s, scale=1.0, output_final_state=True)
            line += f"; fla vs fp32 chunk: o {_rel(o_f, ref):.2e}, state {_rel(st_f, ref_s):.2e}"
        except Exception as e:  # noqa: BLE001
            line += f"; fla failed: {type(e).__name__}: {str(e)[:80]}"
    print(line)


def time_fwd_fwdbwd(bench, fn, qkv: tuple, do, backend, torch) -> tuple[float | str, float | str]:
    """Milliseconds of ``fn(q, k, v)`` forward only, and forward plus the input gradients."""
    from torch.nn.attention import sdpa_kernel

    def fwd():
        with torch.no_grad(), sdpa_kernel(backend):
            return fn(*qkv)

    leaves = [x.detach().requires_grad_() for x in qkv]

    def fwdbwd():
        with sdpa_kernel(backend):
            o = fn(*leaves)
        return torch.autograd.grad(o, leaves, do)

    return measure(bench, fwd), measure(bench, fwdbwd)


def bench_prefill(setup: Setup, torch, bench, fla_chunk, peak_tf: float, peak_gb: float) -> dict:
    from torch.nn.attention import SDPBackend

    from xinzhou.ops.attention.sdpa import attention_sdpa
    from xinzhou.ops.lightning.triton import lightning_attn_triton

    H, D, dev, dt = setup.H, setup.D, setup.device, setup.dtype
    s = slopes(H, torch, dev)
    backend = SDPBackend.MATH if setup.smoke else SDPBackend.FLASH_ATTENTION
    impls = {
        "xinzhou": lambda q, k, v: lightning_attn_triton(q, k, v, s)[0],
        "fla": None if fla_chunk is None else (lambda q, k, v: fla_chunk(q, k, v, g_gamma=-s, scale=1.0)[0]),
        "sdpa": lambda q, k, v: attention_sdpa(q, k, v, causal=True),
    }
    results: dict = {}
    for T in setup.Ts:
        B = max(1, setup.tokens // T)
        q, k, v, do = (torch.randn(B, T, H, D, device=dev, dtype=dt) * 0.5 for _ in range(4))
        for name, fn in impls.items():
            pair = time_fwd_fwdbwd(bench, fn, (q, k, v), do, backend, torch) if fn else ("not installed",) * 2
            results[(name, T, "fwd")], results[(name, T, "fwdbwd")] = pair
    for mode, col in (("fwd", 0), ("fwdbwd", 1)):
        rows = []
        for T in setup.Ts:
            B = max(1, setup.tokens // T)
            xz, fl, sd = (results[(n, T, mode)] for n in ("xinzhou", "fla", "sdpa"))
            fl_flops = lightning_flops(T, B, H, D)[col]
            io_bytes = (4 if mode == "fwd" else 8) * B * T * H * D * 2  # q,k,v,o (+ do,dq,dk,dv)
            tf, gb = pct(fl_flops / 1e9, xz, peak_tf), pct(io_bytes / 1e6, xz, peak_gb)
            sd_tf = pct(sdpa_flops(T, B, H, D)[col] / 1e9, sd, peak_tf)
            rows.append([f"{T // 1024}K" if T >= 1024 else str(T), str(B), fmt(xz), fmt(fl), fmt(sd),
                         ratio(fl, xz), ratio(sd, xz), tf, gb, sd_tf])
        print_table(
            f"prefill {'forward' if mode == 'fwd' else 'forward+backward'} (ms; B·T = {setup.tokens}, H = {H}, "
            f"D = {D}, {str(dt).replace('torch.', '')}); speed-up = their ms / our ms",
            ["T", "B", "xinzhou", "fla", "SDPA", "vs fla", "vs SDPA", "xinzhou TFLOP/s (% peak)",
             "xinzhou GB/s (% peak)", "SDPA TFLOP/s (% peak)"], rows)
    return results


def bench_decode(setup: Setup, torch, bench, fla_rec, peak_gb: float) -> None:
    from xinzhou.ops.lightning import lightning_attn_recurrent
    from xinzhou.ops.lightning.triton import lightning_decode_triton

    H, D, dev, dt = setup.decode_H, setup.D, setup.device, setup.dtype
    s = slopes(H, torch, dev)
    rows = []
    for B in setup.decode_batches:
        q, k, v = (torch.randn(B, H, D, device=dev, dtype=dt) * 0.5 for _ in range(3))
        state = torch.randn(B, H, D, D, device=dev, dtype=torch.float32)
        q1, k1, v1 = (x[:, None] for x in (q, k, v))  # [B, 1, H, D] for the sequence APIs
        with torch.no_grad():
            xz = measure(bench, partial(lightning_decode_triton, q, k, v, s, state))
            rec = measure(bench, partial(lightning_attn_recurrent, q1, k1, v1, s, initial_state=state,
                                         output_final_state=True))
            fl = "not installed" if fla_rec is None else measure(bench, partial(
                fla_rec, q1, k1, v1, g_gamma=-s, scale=1.0, initial_state=state, output_final_state=True))
        state_bytes = 2 * B * H * D * D * 4  # read + write the fp32 state
        gb = pct(state_bytes / 1e6, xz, peak_gb)
        rows.append([str(B), fmt(us(xz), ".1f"), fmt(us(fl), ".1f"), fmt(us(rec), ".1f"), ratio(fl, xz),
                     ratio(rec, xz), gb])
    print_table(f"decode, one token per sequence (µs; H = {H}, K = V = {D}, fp32 state updated in place)",
                ["batch", "xinzhou triton", "fla fused_recurrent", "torch recurrent", "vs fla", "vs torch",
                 "xinzhou GB/s (% peak)"], rows)


def bench_moe(setup: Setup, torch, bench, peak_tf: float) -> None:
    from xinzhou.ops.moe import grouped

    rows = []
    for N, D, Fw, E, K in setup.moe_shapes:
        g = torch.Generator(device=setup.device).manual_seed(0)
        x = torch.randn(N, D, device=setup.device, dtype=setup.dtype, generator=g)
        w = torch.rand(N, K, device=setup.device, generator=g)
        idx = torch.randint(0, E, (N, K), device=setup.device, generator=g)
        gate_up = torch.randn(E, 2 * Fw, D, device=setup.device, dtype=setup.dtype, generator=g) * D ** -0.5
        down = torch.randn(E, D, Fw, device=setup.device, dtype=setup.dtype, generator=g) * Fw ** -0.5
        run = partial(grouped.moe_grouped, x, w, idx, gate_up, down)
        gm = measure(bench, run) if grouped._grouped_mm(x, D, Fw) is not None else "n/a (needs CUDA bf16)"
        orig = grouped._grouped_mm
        grouped._grouped_mm = lambda *a: None  # same dispatch, one GEMM per expert
        try:
            loop = measure(bench, run)
        finally:
            grouped._grouped_mm = orig
        flops = 2.0 * N * K * 3 * D * Fw
        tf = pct(flops / 1e9, gm, peak_tf)
        rows.append([f"{N}x{D}, F={Fw}, E={E}, top-{K}", fmt(gm), fmt(loop), ratio(loop, gm), tf])
    print_table("MoE experts, forward (ms): torch._grouped_mm vs per-expert GEMM loop (same sorted dispatch)",
                ["tokens x D, F, E, k", "grouped_mm", "loop", "speed-up", "grouped TFLOP/s (% peak)"], rows)


def targets(setup: Setup, res: dict) -> None:
    def label(T: int) -> str:
        return f"{T // 1024}K" if T >= 1024 else str(T)

    print("\n## targets\n")
    pairs = [(T, res[("fla", T, "fwdbwd")], res[("xinzhou", T, "fwdbwd")]) for T in setup.Ts if T >= setup.long_T]
    measured = [isinstance(f, float) and isinstance(x, float) for _, f, x in pairs]
    if not pairs or not all(measured):
        verdict = "n/a (fla not measured)"
    else:
        verdict = "PASS" if all(f / x >= 1.0 for _, f, x in pairs) else "FAIL"
    detail = ", ".join(f"{label(T)} {ratio(f, x)}" for T, f, x in pairs)
    print(f"- forward+backward >= 1.0x fla at T >= {label(setup.long_T)}: {verdict} ({detail})")
    T = setup.sdpa_T
    if T not in setup.Ts:
        print(f"- >= 5x SDPA at {label(T)}: n/a ({label(T)} not in this run)")
        return
    sd, xz = res[("sdpa", T, "fwdbwd")], res[("xinzhou", T, "fwdbwd")]
    ok = isinstance(sd, float) and isinstance(xz, float) and sd / xz >= 5
    print(f"- >= 5x SDPA at {label(T)} (forward+backward): {'PASS' if ok else 'FAIL'} ({ratio(sd, xz)}; "
          f"forward {ratio(res[('sdpa', T, 'fwd')], res[('xinzhou', T, 'fwd')])})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T in {2K, 8K, 64K} and fewer MoE shapes")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: prefill,decode,moe")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device and found none; nothing was measured. "
              "(`--cpu-smoke` checks the script itself on CPU.)", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("benchmarks/gpu.py needs triton: pip install triton", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    setup = make_setup(args, torch)
    name = "CPU (interpreter smoke run; times are meaningless)" if setup.smoke else torch.cuda.get_device_name()
    key = next((k for k in PEAK_TFLOPS if k in name), "H200")
    peak_tf, peak_gb = PEAK_TFLOPS[key], PEAK_GBS[key]
    fla_chunk, fla_rec, fla_ver = load_fla()
    print(f"# xinzhou GPU benchmark\n\ndevice: {name}; peaks used: {peak_tf:.0f} TFLOP/s bf16, {peak_gb:.0f} GB/s "
          f"({key})\ntorch {torch.__version__}, triton {triton.__version__}, fla {fla_ver}")
    bench = timer(setup)
    skip = set(args.skip.split(","))
    spot_check(setup, torch, fla_chunk)
    res = bench_prefill(setup, torch, bench, fla_chunk, peak_tf, peak_gb) if "prefill" not in skip else {}
    if "decode" not in skip:
        bench_decode(setup, torch, bench, fla_rec, peak_gb)
    if "moe" not in skip:
        bench_moe(setup, torch, bench, peak_tf)
    if res:
        targets(setup, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
