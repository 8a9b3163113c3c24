"""Model benchmark: xinzhou against Hugging Face transformers on the same weights and inputs, in one run.

    python benchmarks/model.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/model.py --quick    # small sizes, a smoke run
    python benchmarks/model.py --markdown bench_model.md

Sections (issue "Core"):
  (a) one lightning layer, forward and forward+backward, T = 1K, 4K, 16K
  (b) continuing a cached sequence by 512 tokens: exactness and time per token vs a cold prefill
  (c) full-model forward at T = 2K: debug-text01 and a Text-01-like many-expert shape (32 experts, top-2)
  (d) one model with every layer softmax vs the Text-01 hybrid pattern vs all lightning, T = 4K, 16K, 32K, in one
      pass and (hybrid, lightning) prefilled through the cache in 4K chunks
  (e) achieved FLOP/s of (c) as a fraction of this machine's fp32 matmul peak, measured in the same run

Timings interleave the two libraries and keep the median, so background load hits both alike; compare the
ratios, not the absolute times. transformers' `minimax` rotates the whole head, so the shared configs use
rotary_dim == head_dim (both libraries then compute the same function; outputs are checked before timing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

import xinzhou
from xinzhou.model.flops import forward_flops

warnings.filterwarnings("ignore")


def timeit(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, calls interleaved round-robin."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(timeit({"mm": lambda: a @ b}, repeats).values(), default=1.0)
    return 2 * n**3 / best


def hf_twin(model: xinzhou.Model, **kwargs):
    import transformers

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kwargs)
    transformers.logging.set_verbosity_error()
    return hf.eval()


def many_expert_cfg() -> xinzhou.ModelConfig:
    return xinzhou.ModelConfig(family="text01", vocab_size=2048, hidden_size=512, num_layers=8, num_heads=8,
                               num_kv_heads=2, head_dim=64, rotary_dim=64, num_experts=32, num_experts_per_tok=2,
                               moe_intermediate_size=512, max_position_embeddings=65536, name="many-expert")


def debug_cfg(**kw) -> xinzhou.ModelConfig:
    return xinzhou.get_config("debug-text01", rotary_dim=64, **kw)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, section: str, case: str, ours: str, peer: str, ratio: str, note: str = "") -> None:
        self.rows.append((section, case, ours, peer, ratio, note))
        print(f"  {section:3} {case:48} {ours:>12} {peer:>12} {ratio:>8}  {note}", flush=True)

    def markdown(self) -> str:
        head = "| | case | xinzhou | transformers | ratio | note |\n|---|---|---:|---:|---:|---|\n"
        return head + "\n".join("| " + " | ".join(r) + " |" for r in self.rows) + "\n"


def bench_lightning_layer(rep: Report, lengths: list[int], repeats: int) -> None:
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    from xinzhou.model.layers import LightningAttention

    cfg = xinzhou.ModelConfig(family="text01", hidden_size=512, num_heads=4, head_dim=128, rotary_dim=128,
                              num_kv_heads=4, num_layers=8, layer_types=("linear_attention",) * 8)
    ours = LightningAttention(cfg, layer_idx=2)
    hf_cfg = MiniMaxConfig(hidden_size=512, num_attention_heads=4, head_dim=128, num_hidden_layers=8,
                           layer_types=["linear_attention"] * 8)
    theirs = MiniMaxLightningAttention(hf_cfg, layer_idx=2)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
        theirs.load_state_dict({**theirs.state_dict(), **ours.state_dict()})
    for T in lengths:
        x = torch.randn(1, T, 512)
        with torch.no_grad():
            err = ((ours(x) - theirs(x, None, None)[0]).abs().max() / theirs(x, None, None)[0].abs().max()).item()
            t = timeit({"ours": lambda: ours(x), "hf": lambda: theirs(x, None, None)}, repeats)
        rep.add("a", f"lightning layer fwd, T={T} (H=4, D=128)", f"{t['ours'] * 1e3:.1f} ms",
                f"{t['hf'] * 1e3:.1f} ms", f"{t['hf'] / t['ours']:.2f}x", f"rel err {err:.1e}")
        xg = x.clone().requires_grad_(True)

        def fb(mod, hf=False):
            out = mod(xg, None, None)[0] if hf else mod(xg)
            out.square().mean().backward()

        t = timeit({"ours": lambda: fb(ours), "hf": lambda: fb(theirs, True)}, repeats)
        rep.add("a", f"lightning layer fwd+bwd, T={T}", f"{t['ours'] * 1e3:.1f} ms", f"{t['hf'] * 1e3:.1f} ms",
                f"{t['hf'] / t['ours']:.2f}x")


def bench_continuation(rep: Report, prefix: int, extra: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = xinzhou.Model(debug_cfg()).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, model.config.vocab_size, (1, prefix + extra))
    with torch.inference_mode():
        full = model(ids).logits[:, prefix:]
        cache = model.new_cache(1)
        model(ids[:, :prefix], cache=cache)
        cont = model(ids[:, prefix:], cache=cache).logits
        err = (cont - full).abs().max().item()

        def ours_cont():
            c = model.new_cache(1)
            model(ids[:, :prefix], cache=c)
            t0 = time.perf_counter()
            model(ids[:, prefix:], cache=c)
            return time.perf_counter() - t0

        def hf_cont():  # transformers continues correctly only one token at a time with explicit positions
            c = hf(ids[:, :prefix], use_cache=True).past_key_values
            t0 = time.perf_counter()
            for t in range(prefix, prefix + extra):
                hf(ids[:, t : t + 1], cache=c, position_ids=torch.tensor([[t]]))
            return time.perf_counter() - t0

        def cold():
            t0 = time.perf_counter()
            model(ids)
            return time.perf_counter() - t0

        cold()
        # continuation and cold prefill back to back in each round, so both see the same background load
        pairs = [(ours_cont(), cold()) for _ in range(repeats)]
        hf_t = statistics.median(hf_cont() for _ in range(max(1, repeats // 4)))
    ours_t = statistics.median(c for c, _ in pairs)
    per_tok = ours_t / extra * 1e3
    cold_tok = statistics.median(k for _, k in pairs) / (prefix + extra) * 1e3
    rep.add("b", f"continue cached {prefix} by {extra} (debug-text01)", f"{per_tok:.3f} ms/tok",
            f"{hf_t / extra * 1e3:.3f} ms/tok", f"{hf_t / ours_t:.1f}x", f"max err vs full {err:.1e}")
    # a continuation token attends to prefix..prefix+extra keys, a cold prefill's token to (prefix+extra)/2 on average
    flop_ratio = (forward_flops(model.config, extra, context=prefix) / extra) / (
        forward_flops(model.config, prefix + extra) / (prefix + extra))
    rep.add("b", f"  vs xinzhou cold prefill of {prefix + extra}", f"{cold_tok:.3f} ms/tok", "", "",
            f"continuation/cold = {per_tok / cold_tok:.2f} (target <= 1); FLOPs per token {flop_ratio:.2f}x, "
            f"time per FLOP {per_tok / cold_tok / flop_ratio:.2f}x")


def bench_full_forward(rep: Report, T: int, repeats: int, peak: float) -> None:
    for cfg in (debug_cfg(), many_expert_cfg()):
        torch.manual_seed(0)
        model = xinzhou.Model(cfg).eval()
        hf = hf_twin(model)
        hf_eager = hf_twin(model, experts_implementation="eager")
        ids = torch.randint(0, cfg.vocab_size, (1, T))
        with torch.inference_mode():
            err = ((model(ids).logits - hf(ids).logits).abs().max() / hf(ids).logits.abs().max()).item()
            t = timeit({"ours": lambda: model(ids), "hf": lambda: hf(ids), "eager": lambda: hf_eager(ids)},
                       repeats)
        fl = forward_flops(cfg, T)
        rep.add("c", f"forward T={T}, {cfg.name}", f"{t['ours'] * 1e3:.0f} ms", f"{t['hf'] * 1e3:.0f} ms",
                f"{t['hf'] / t['ours']:.2f}x", f"transformers grouped_mm experts; rel err {err:.1e}")
        rep.add("c", "  same, transformers eager (per-expert loop)", "", f"{t['eager'] * 1e3:.0f} ms",
                f"{t['eager'] / t['ours']:.2f}x")
        rep.add("e", f"achieved FLOP/s, {cfg.name}", f"{fl / t['ours'] / peak:.0%} of peak",
                f"{fl / t['hf'] / peak:.0%} of peak", f"{peak * t['hf'] / fl:.2f}x",
                f"{fl / 1e9:.1f} GFLOP; peak {peak / 1e9:.0f} GFLOP/s; ratio column: the ceiling, all FLOPs at "
                "the peak")


def bench_scaling(rep: Report, lengths: list[int], repeats: int) -> None:
    base = dict(family="text01", vocab_size=2048, hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2,
                head_dim=64, rotary_dim=64, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
                max_position_embeddings=65536)
    patterns = {"all softmax": ("full_attention",) * 8,
                "hybrid 7:1 (Text-01)": ("linear_attention",) * 7 + ("full_attention",),
                "all lightning": ("linear_attention",) * 8}
    first: dict[str, float] = {}
    for T in lengths:
        ids = torch.randint(0, 2048, (1, T))
        for name, types in patterns.items():
            torch.manual_seed(0)
            model = xinzhou.Model(xinzhou.ModelConfig(layer_types=types, **base)).eval()
            with torch.inference_mode():
                # one warm-up call: a cold first call pays page faults on fresh buffers (measured: it made the
                # 32K rows look ~2x slower per token than they are)
                sec = timeit({"m": lambda: model(ids)}, repeats, warmup=1)["m"]
            per_tok = sec / T * 1e6
            first.setdefault(name, per_tok)
            rep.add("d", f"{name}, T={T}", f"{per_tok:.0f} us/tok", "", "",
                    f"x{per_tok / first[name]:.2f} vs T={lengths[0]} per token")
            if "softmax" in name:
                continue
            # the same tokens prefilled through the cache in chunks, as the engine does: a chunk's activations
            # stay in the CPU caches, so the per-token cost no longer grows with T through memory traffic
            chunk = min(T, 4096)

            def chunked(m=model, ids=ids, chunk=chunk):
                cache = m.new_cache(1)
                for a in range(0, ids.shape[1], chunk):
                    m(ids[:, a : a + chunk], cache=cache)

            with torch.inference_mode():
                sec = timeit({"m": chunked}, repeats, warmup=1)["m"]
            per_tok = sec / T * 1e6
            first.setdefault(name + " chunked", per_tok)
            rep.add("d", f"  same, prefilled in {chunk}-token chunks", f"{per_tok:.0f} us/tok", "", "",
                    f"x{per_tok / first[name + ' chunked']:.2f} vs T={lengths[0]} per token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--markdown", help="also write the table to this markdown file")
    ap.add_argument("--sections", default="abcde", help="which sections to run, e.g. 'ac'")
    args = ap.parse_args()
    q = args.quick
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rep = Report()
    peak = max(matmul_peak(n) for n in ((512, 1024) if q else (1024, 2048)))  # the faster size
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    if "a" in args.sections:
        bench_lightning_layer(rep, [256, 1024] if q else [1024, 4096, 16384], 1 if q else 3)
    if "b" in args.sections:
        bench_continuation(rep, 256 if q else 2048, 64 if q else 512, 1 if q else 7)
    if "c" in args.sections or "e" in args.sections:
        bench_full_forward(rep, 256 if q else 2048, 1 if q else 3, peak)
    if "d" in args.sections:
        bench_scaling(rep, [512, 1024] if q else [4096, 16384, 32768], 1 if q else 3)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(rep.markdown())


if __name__ == "__main__":
    main()
