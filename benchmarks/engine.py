"""Engine benchmark: xinzhou's engine against transformers ``generate()`` on the same checkpoints, side by side in
one run, reported as ratios (the machine is shared and noisy; absolute numbers drift, ratios much less).

Why it exists: the lightning layers' constant-size state is the architecture's advantage at inference, and the
issue's targets are only meaningful measured together:

1. **throughput**: new tokens/s of a whole ``generate`` call (prefill + decode, 32-token prompts, greedy, fixed
   length) at batch 1 and 16, on the debug-text01 shape and a ~100M-parameter Text-01-style model (16 layers,
   softmax every 8th, 8 experts top-2, GQA 8:1 as in Text-01), both with full rotary so transformers computes
   the same thing; greedy outputs are checked equal before timing; beside them, a step made of nothing but its
   weight products (``floors.py``), whose ratio to transformers is the most any engine on torch's kernels
   could show here;
2. **memory bandwidth**: batch-1 decode of the ~100M model against its limit, copy bandwidth (STREAM convention:
   bytes read + written per second) ÷ bytes of weights one token reads (attention, routers, the top-k experts,
   the LM head, one embedding row), both measured in this run; the read bandwidth of a plain reduction is shown
   too, and the rate at which torch's own GEMV (MKL, one row) reads the model's weight matrices: the ceiling for a
   decode made of GEMVs, whatever the engine around them;
3. **long context**: decode time per token at 1K/8K/32K tokens of context for the hybrid model and an
   all-softmax model of the same shape, and cache bytes per sequence. The cache is filled with random keys,
   values and states of the right shape (decode cost does not depend on their values; prefilling 32K tokens on
   two CPU cores would take minutes);
4. **agent loop**: a 6-turn conversation (system prompt, then per turn: generate, append a tool result) with
   state reuse, with recompute (prefix cache off), and with transformers (full prompt each turn).

Usage::

    python benchmarks/engine.py                      # about 6-9 minutes on 2 shared CPU cores
    python benchmarks/engine.py --quick              # fewer tokens, no 32K context (about 3 minutes)
    python benchmarks/engine.py --markdown out.md    # also write the tables as markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from floors import products_step_seconds  # benchmarks/floors.py, beside this script

import xinzhou
from xinzhou.configs.model import FULL, text01_alpha
from xinzhou.engine import LLM, SamplingParams
from xinzhou.engine.cache_manager import CacheManager
from xinzhou.engine.runner import ModelRunner


def model_configs() -> dict[str, xinzhou.ModelConfig]:
    a = text01_alpha(16)
    return {
        "debug-text01": xinzhou.get_config("debug-text01", rotary_dim=64),
        "text01-100m": xinzhou.get_config(
            "debug-text01", hidden_size=512, num_layers=16, num_heads=8, num_kv_heads=1, head_dim=64, rotary_dim=64,
            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=384, vocab_size=8192,
            linear_attn_alpha=a, full_attn_alpha=a, mlp_alpha=a),
    }


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bandwidth() -> tuple[float, float]:
    """``(copy, read)`` in bytes/s: STREAM copy (2 × bytes / time) and a summation's read rate, 256 MiB buffers."""
    a = torch.randn(64 << 20)
    b = torch.empty_like(a)
    nbytes = a.numel() * 4
    copy = 2 * nbytes / best_of(lambda: b.copy_(a), 5)
    read = nbytes / best_of(lambda: a.sum(), 5)
    return copy, read


def gemv_bandwidth(model: xinzhou.Model) -> float:
    """Bytes/s at which torch's own one-row product ``F.linear(x, W)`` (MKL's GEMV) reads weights: every weight
    matrix of ``model`` in turn (each expert's, the LM head; not the embedding, of which a step reads one row),
    more bytes than the CPU caches hold, as a decode step reads them. A decode step that did nothing but these
    products would run at this rate; its gap to the copy bandwidth is the kernel's, not the engine's."""
    mats = [w for name, p in model.named_parameters() if p.dim() >= 2 and "embed" not in name
            for w in p.detach().reshape(-1, *p.shape[-2:]).unbind(0)]
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in mats}
    nbytes = sum(w.numel() * w.element_size() for w in mats)

    def sweep() -> None:
        for w in mats:
            torch.nn.functional.linear(xs[w.shape[1]], w)

    sweep()
    return nbytes / best_of(sweep, 3)


def weight_bytes(model: xinzhou.Model, batch: int = 1) -> int:
    """Bytes of weights one decode step of ``batch`` tokens reads: attention, norms, routers, the experts the
    tokens hit (expected number under uniform routing; exactly top-k for one token), the LM head and the
    tokens' embedding rows."""
    cfg = model.config
    _, active = model.count_parameters()
    expert = sum(m.gate_up.numel() + m.down.numel() for m in model.modules() if hasattr(m, "gate_up"))
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    hit = E * (1 - (1 - k / E) ** batch)
    params = active - expert * k / E + expert * hit / E + cfg.vocab_size * cfg.hidden_size + batch * cfg.hidden_size
    return int(params * model.lm_head.weight.element_size())


class Peer:
    """A checkpoint loaded by both xinzhou and transformers."""

    def __init__(self, cfg: xinzhou.ModelConfig, workdir: Path) -> None:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        path = workdir / cfg.name
        xinzhou.Model(cfg).save_pretrained(path)
        self.xz = xinzhou.from_pretrained(path)
        self.hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()

    def llm(self, **kw) -> LLM:
        return LLM(self.xz, **kw)

    def hf_generate(self, prompts: torch.Tensor, n: int, stamps: list[float] | None = None) -> torch.Tensor:
        """Greedy ``generate``; ``stamps`` (if given) receives the time of each step's end (one per new token)."""
        import transformers

        class Stamp(transformers.StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        extra = {} if stamps is None else {"stopping_criteria": transformers.StoppingCriteriaList([Stamp()])}
        with torch.inference_mode():
            out = self.hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                   max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **extra)
        return out[:, prompts.shape[1]:]


def xz_generate(llm: LLM, prompts: torch.Tensor, n: int, stamps: list[float]) -> list:
    """The engine loop behind ``LLM.generate``, with the time of each step's end in ``stamps``."""
    eng = llm.engine
    ids = [eng.add_request(p, greedy(n)) for p in prompts.tolist()]
    while eng.has_unfinished():
        eng.step()
        stamps.append(time.perf_counter())
    return [eng.pop_output(r) for r in ids]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def throughput(peer: Peer, batch: int, n: int, repeats: int) -> dict:
    """Decode tokens/s = batch / median time of a decode step (the steps after every sequence has its first
    token; robust to the other processes on a shared machine), end-to-end tokens/s of whole calls, and the
    tokens/s of a step made only of the weight products (``products``; :mod:`floors`)."""
    V = peer.xz.config.vocab_size
    prompts = torch.randint(0, V, (batch, 32), generator=torch.Generator().manual_seed(batch))
    llm = peer.llm(prefix_cache_bytes=0, max_num_seqs=max(batch, 1))
    xz_out = llm.generate(prompts.tolist(), greedy(n))
    hf_out = peer.hf_generate(prompts, n)
    agree = sum(o.token_ids == h.tolist() for o, h in zip(xz_out, hf_out))
    r = {"batch": batch, "agree": f"{agree}/{batch}"}
    steps: dict[str, list[float]] = {"xz": [], "hf": []}
    totals: dict[str, list[float]] = {"xz": [], "hf": []}
    floors: list[float] = []  # the products-only step (floors.py), measured between the two sides' runs
    for _ in range(repeats):  # interleaved, so both sides share the machine's mood
        for side, fn in (("xz", lambda st: xz_generate(llm, prompts, n, st)),
                         ("hf", lambda st: peer.hf_generate(prompts, n, st))):
            t0, stamps = time.perf_counter(), []
            fn(stamps)
            totals[side].append(stamps[-1] - t0)
            steps[side] += [b - a for a, b in zip(stamps[-n:-1], stamps[-n + 1:])]  # the last n - 1: decode
        floors.append(products_step_seconds(peer.xz, batch, steps=n, seed=len(floors)))
    for side in ("xz", "hf"):
        r[side] = batch * n / min(totals[side])
        r[side + "_decode"] = batch / statistics.median(steps[side])
    r["products"] = batch / min(floors)
    return r


class ContextDecoder:
    """Batch-1 decode after ``context`` tokens, the cache filled with random keys, values and states of the right
    shape (decode cost does not depend on their values)."""

    def __init__(self, model: xinzhou.Model, context: int) -> None:
        cfg = model.config
        self.cache = CacheManager(cfg, max_slots=1, dtype=model.lm_head.weight.dtype)
        self.runner = ModelRunner(model, self.cache, input_major=True)
        self.context = context
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            slot = self.cache.allocate()
            K = cfg.head_dim
            state = torch.randn(cfg.num_linear_layers, cfg.num_heads, K, K, generator=g) * 0.01
            kv = torch.randn(cfg.num_full_layers, 2, context, cfg.num_kv_heads, K, generator=g) * 0.1
            self.cache.write(slot, state, kv, context)
        self.nbytes = self.cache.nbytes()["total"]

    def ms_per_token(self, steps: int) -> float:
        """Decode ``steps`` tokens (then rewind to ``context``); the fastest step, in ms."""
        times = []
        with torch.inference_mode():
            self.cache.reserve(self.context + steps)
            tok = torch.tensor([1])
            for _ in range(steps):
                t = time.perf_counter()
                tok = self.runner.decode(tok).argmax(-1)
                times.append(time.perf_counter() - t)
            self.cache.lengths[0] = self.context
            self.cache.lengths_t[0] = self.context
        return min(times) * 1e3


def agent_conversation(peer: Peer, system: int, gen: int, tool: int, turns: int) -> dict:
    """Per-turn seconds: prompt_{k+1} = prompt_k + generated_k + tool result_k."""
    V = peer.xz.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, V, (system,), generator=g).tolist()
    reuse, prompts, outs = peer.llm(), [], []
    t_reuse = []
    for _ in range(turns):
        prompts.append(prompt)
        t = time.perf_counter()
        out = reuse.generate([prompt], greedy(gen))[0]
        t_reuse.append(time.perf_counter() - t)
        outs.append(out.token_ids)
        prompt = out.all_token_ids + torch.randint(0, V, (tool,), generator=g).tolist()
    recompute = peer.llm(prefix_cache_bytes=0)
    t_re, t_hf, agree = [], [], 0
    for p, o in zip(prompts, outs):
        t = time.perf_counter()
        r = recompute.generate([p], greedy(gen))[0]
        t_re.append(time.perf_counter() - t)
        t = time.perf_counter()
        h = peer.hf_generate(torch.tensor([p]), gen)[0].tolist()
        t_hf.append(time.perf_counter() - t)
        agree += (r.token_ids == o) + (h == o)
    return {"reuse": t_reuse, "recompute": t_re, "hf": t_hf, "agree": f"{agree}/{2 * turns}", "final_len": len(prompts[-1])}


# -------------------------------------------------------------------------------------------------- report
def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, contexts 1K/8K only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (default 1: on a shared machine, multi-threaded "
                         "barriers stall whenever another process holds a core)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    q = args.quick
    repeats = 2 if q else 3
    sections, checks = [], []
    t_start = time.perf_counter()
    copy_bw, read_bw = bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = model_configs()
        # 1. throughput ---------------------------------------------------------------------------------
        rows, peers = [], {}
        for name, cfg in cfgs.items():
            peer = peers[name] = Peer(cfg, Path(tmp))
            total, active = peer.xz.count_parameters()
            n = {"debug-text01": 32 if q else 64, "text01-100m": 16 if q else 32}[name]
            for batch in (1, 16):
                r = throughput(peer, batch, n, repeats)
                ratio = r["xz_decode"] / r["hf_decode"]
                ceiling = r["products"] / r["hf_decode"]
                target = {("debug-text01", 1): 4, ("debug-text01", 16): 6, ("text01-100m", 16): 4}.get((name, batch))
                rows.append([f"{name} ({total / 1e6:.0f}M, {active / 1e6:.1f}M active)", str(batch), str(n),
                             f"{r['xz_decode']:.1f}", f"{r['hf_decode']:.1f}", f"{ratio:.2f}x",
                             f"{r['xz'] / r['hf']:.2f}x", f"{r['products']:.0f} ({ceiling:.2f}x)",
                             r["agree"], f">= {target}x: {verdict(ratio >= target)}" if target else "-"])
                if target:
                    checks.append((f"{name} batch {batch}: decode >= {target}x transformers", ratio >= target))
                print(rows[-1], flush=True)
        sections.append((("Throughput: new tokens/s while decoding (batch / median decode-step time; greedy, "
                         "32-token prompts) and of whole generate() calls (end to end); products only: a step that "
                         "does nothing but the step's weight products (benchmarks/floors.py), in brackets its ratio "
                         "to transformers, the most an engine built on torch's kernels could reach here"),
                         fmt_table(["model", "batch", "new tokens", "xinzhou tok/s", "transformers tok/s",
                                    "ratio", "ratio end to end", "products only tok/s", "greedy equal",
                                    "target"], rows)))
        # 2. bandwidth ----------------------------------------------------------------------------------
        big = peers["text01-100m"]
        wbytes = weight_bytes(big.xz)
        ms = ContextDecoder(big.xz, 64).ms_per_token(16 if q else 32)
        copy2, read2 = bandwidth()
        copy_bw, read_bw = max(copy_bw, copy2), max(read_bw, read2)
        gemv_bw = gemv_bandwidth(big.xz)
        tps = 1e3 / ms
        limit, read_limit, gemv_limit = copy_bw / wbytes, read_bw / wbytes, gemv_bw / wbytes
        frac = tps / limit
        checks.append(("text01-100m batch-1 decode >= 70% of the copy-bandwidth limit", frac >= 0.7))
        sections.append((("Batch-1 decode of text01-100m against memory bandwidth (fastest decode step; bandwidths: best of 5, "
                         "before and after; GEMV: torch's one-row product over the model's weight matrices, the "
                         "rate its decode kernel reads at)"),
                         fmt_table(["weights read per token", "copy bandwidth (STREAM)", "limit",
                                    "read bandwidth (sum)", "read limit", "GEMV rate", "GEMV limit",
                                    "xinzhou decode", "of copy limit", "of read limit", "of GEMV limit", "target"],
                                   [[f"{wbytes / 1e6:.1f} MB", f"{copy_bw / 1e9:.2f} GB/s", f"{limit:.1f} tok/s",
                                     f"{read_bw / 1e9:.2f} GB/s", f"{read_limit:.1f} tok/s",
                                     f"{gemv_bw / 1e9:.2f} GB/s", f"{gemv_limit:.1f} tok/s",
                                     f"{tps:.1f} tok/s ({ms:.1f} ms)", f"{100 * frac:.0f}%",
                                     f"{100 * tps / read_limit:.0f}%", f"{100 * tps / gemv_limit:.0f}%",
                                     f">= 70%: {verdict(frac >= 0.7)}"]])))
        print(sections[-1][1], flush=True)
        # 3. long context -------------------------------------------------------------------------------
        hybrid = big.xz
        torch.manual_seed(0)
        softmax_cfg = dataclasses.replace(hybrid.config, layer_types=(FULL,) * hybrid.config.num_layers)
        softmax = xinzhou.Model(softmax_cfg).eval()
        contexts = [1024, 8192] if q else [1024, 8192, 32768]
        decoders = {(label, ctx): ContextDecoder(model, ctx) for ctx in contexts
                    for label, model in (("hybrid", hybrid), ("softmax", softmax))}
        ms: dict = {}
        for _ in range(3):  # rounds over all contexts, so each sees the same machine; fastest step of 12
            for key, d in decoders.items():
                ms[key] = min(ms.get(key, float("inf")), d.ms_per_token(4))
        rows = []
        for ctx in contexts:
            row = [f"{ctx // 1024}K"]
            for label in ("hybrid", "softmax"):
                t = ms[label, ctx]
                row += [f"{t:.1f} ms ({t / ms[label, contexts[0]]:.2f}x)",
                        f"{decoders[label, ctx].nbytes / 2**20:.1f} MiB"]
            rows.append(row)
            print(row, flush=True)
        del decoders
        flat = float(rows[-1][1].split("(")[1].rstrip("x)"))
        checks.append((f"hybrid decode at {contexts[-1] // 1024}K within 1.3x of 1K", flat <= 1.3))
        n_full = hybrid.config.num_full_layers
        sections.append(((f"Decode time per token and cache bytes per sequence vs context, text01-100m shape (batch "
                         f"1; hybrid: {n_full} of {hybrid.config.num_layers} layers softmax; all-softmax: every "
                         f"layer; target: hybrid within 1.3x of 1K: {verdict(flat <= 1.3)})"),
                         fmt_table(["context", "hybrid ms/token", "hybrid cache/seq", "all-softmax ms/token",
                                    "all-softmax cache/seq"], rows)))
        # 4. agent loop ---------------------------------------------------------------------------------
        rows = []
        for name in ("debug-text01", "text01-100m"):
            r = agent_conversation(peers[name], system=256 if q else 1024, gen=16 if q else 32,
                                   tool=64 if q else 128, turns=6)
            mean = {k: sum(r[k]) / len(r[k]) for k in ("reuse", "recompute", "hf")}
            rows.append([name, str(r["final_len"]), *(f"{mean[k]:.2f} s" for k in ("reuse", "recompute", "hf")),
                         f"{mean['recompute'] / mean['reuse']:.2f}x", f"{mean['hf'] / mean['reuse']:.2f}x",
                         " / ".join(f"{x:.2f}" for x in r["reuse"]), r["agree"]])
            print(rows[-1], flush=True)
        sections.append((("6-turn agent conversation: mean seconds per turn (system prompt, then generate + tool "
                         "result per turn)"), fmt_table(
                             ["model", "final context", "state reuse", "recompute", "transformers",
                              "reuse vs recompute", "reuse vs transformers", "reuse per turn (s)",
                              "outputs equal"], rows)))
    lines = [(f"xinzhou engine benchmark: torch {torch.__version__}, {args.threads} thread(s), "
             f"{time.perf_counter() - t_start:.0f} s"), ""]
    for title, table in sections:
        lines += [f"**{title}**", "", table, ""]
    lines += ["**Targets**", ""] + [f"- {verdict(ok)}: {what}" for what, ok in checks]
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
