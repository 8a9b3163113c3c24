"""Training benchmark: tokens/s of a whole training step (forward, backward, clipping, AdamW) of xinzhou against
transformers' ``MiniMaxForCausalLM`` on the same config, weights, batch and optimizer, side by side in one run,
with the achieved FLOP/s of each as a fraction of this machine's fp32 matmul peak measured in the same run.

    python benchmarks/train.py              # about 4 minutes on a shared CPU (one thread)
    python benchmarks/train.py --quick      # smaller batches, fewer steps (a smoke run)
    python benchmarks/train.py --markdown bench_train.md

What is compared, so that both sides do the same work:

* configs: ``debug-text01`` and a ~100M-parameter Text-01-style hybrid (8 layers, softmax at every 8th, 32
  experts top-2); both with ``rotary_dim == head_dim`` because transformers' ``minimax`` rotates the whole head
  (the initial losses are checked equal before timing, so both compute the same function);
* weights: one xinzhou model saved with ``save_pretrained`` and loaded by ``AutoModelForCausalLM`` (fp32);
* batch: ``B`` unpacked rows of ``T`` random tokens, no ``cu_seqlens`` (a packed batch would make transformers'
  attention see across documents, so it would not be the same work);
* objective: mean next-token cross-entropy plus ``router_aux_loss_coef`` x the load-balance loss on both sides
  (transformers with ``output_router_logits=True``);
* optimizer: ``torch.optim.AdamW`` with the fused kernel (what transformers' ``Trainer`` defaults to,
  ``adamw_torch_fused``, and what xinzhou's ``build_optimizer`` picks for plain tensors), β 0.9/0.95, weight decay
  0.1, and global-norm clipping at 1.0.
  xinzhou's step is ``Trainer.train_step`` (the loop every xinzhou run uses); transformers' is the plain
  ``loss.backward(); clip_grad_norm_; step; zero_grad`` loop;
* transformers runs with its defaults: SDPA attention and, for experts, ``grouped_mm`` (on CPU it calls
  ``torch.nn.functional.grouped_mm``), as reported in the table.

Timing: steps alternate between the two libraries and the median is kept. Each step is timed twice: wall clock,
and CPU time of this process. By default torch runs one intra-op thread (``--threads``), so on a shared machine
CPU time is the work done, independent of other processes' load (wall clock then only adds waiting): the main
columns are tokens per CPU-second, the wall-clock ratio is shown beside them. The fp32 matmul peak is measured
the same way at the same thread count. FLOPs are the analytic training count, 3 x the forward count of
:func:`xinzhou.model.flops.forward_flops` (backward = 2 x forward), the same number for both libraries.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

import xinzhou
from xinzhou.model.flops import forward_flops
from xinzhou.train.loop import Trainer
from xinzhou.train.loss import LossFn
from xinzhou.train.optim import Schedule, build_optimizer

warnings.filterwarnings("ignore")
LR, BETAS, WD, CLIP = 1e-4, (0.9, 0.95), 0.1, 1.0


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def matmul_peak(n: int, repeats: int = 5) -> float:
    """Best fp32 GEMM FLOP per CPU-second of an ``n x n`` product on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / min(timed(lambda: a @ b)[1] for _ in range(repeats))


def hybrid_100m() -> xinzhou.ModelConfig:
    return xinzhou.ModelConfig(family="text01", vocab_size=2048, hidden_size=512, num_layers=8, num_heads=8,
                               num_kv_heads=2, head_dim=64, rotary_dim=64, num_experts=32, num_experts_per_tok=2,
                               moe_intermediate_size=256, max_position_embeddings=65536, name="hybrid-100m")


def rows_loss(coef: float) -> LossFn:
    """xinzhou's LossFn on unpacked rows ``(ids [B, T], labels [B, T])``: summed CE + coef x aux (see train/loss.py)."""

    def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        ids, labels = batch
        out = model(ids)
        ce = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                             ignore_index=-100, reduction="sum")
        n = (labels != -100).sum()
        return ce + coef * out.aux_loss * n, {"tokens": n.detach(), "positions": torch.tensor(ids.numel()),
                                              "loss": ce.detach()}

    return loss_fn


def bench_config(cfg: xinzhou.ModelConfig, B: int, T: int, steps: int, peak: float) -> dict:
    import transformers

    torch.manual_seed(0)
    ours = xinzhou.Model(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).train()
    hf.config.output_router_logits = True
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100)], dim=1)
    coef = cfg.router_aux_loss_coef
    with torch.no_grad():
        o = ours(ids)
        ours_loss = F.cross_entropy(o.logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1)).item()
        hf_loss = hf(input_ids=ids, labels=ids, output_router_logits=False).loss.item()
    assert abs(ours_loss - hf_loss) < 1e-4 * hf_loss, f"not the same function: {ours_loss} vs {hf_loss}"

    trainer = Trainer(ours, build_optimizer(ours, lr=LR, betas=BETAS, weight_decay=WD),
                      Schedule("constant", LR, 10**6), grad_clip=CLIP)
    loss_fn = rows_loss(coef)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, weight_decay=WD, fused=True)

    def ours_step() -> None:
        trainer.train_step([(ids, labels)], loss_fn)

    def hf_step() -> None:
        hf(input_ids=ids, labels=ids).loss.backward()  # includes router_aux_loss_coef x aux
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    times: dict[str, list[tuple[float, float]]] = {"ours": [], "hf": []}
    pair = (("ours", ours_step), ("hf", hf_step))
    for i in range(steps + 1):  # the first round is warm-up
        # alternate which library goes first: a step right after the other library's step runs measurably slower
        # (its weights, gradients and optimizer state have just been evicted from the caches)
        for name, fn in pair if i % 2 else pair[::-1]:
            t = timed(fn)
            if i:
                times[name].append(t)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    flops = 3 * forward_flops(cfg, T, batch=B)
    total, active = ours.count_parameters()
    return {"name": cfg.name, "params": total, "active": active, "tokens": B * T, "B": B, "T": T,
            "ours_tps": B * T / cpu["ours"], "hf_tps": B * T / cpu["hf"], "ratio": cpu["hf"] / cpu["ours"],
            "wall_ratio": wall["hf"] / wall["ours"], "ours_wall_tps": B * T / wall["ours"],
            "ours_peak": flops / cpu["ours"] / peak, "hf_peak": flops / cpu["hf"] / peak,
            "experts_impl": hf.config._experts_implementation, "attn_impl": hf.config._attn_implementation,
            "loss_check": abs(ours_loss - hf_loss) / hf_loss}


def table(rows: list[dict], peak: float) -> str:
    head = ("| config | params (active) | batch | xinzhou tok/s | transformers tok/s | speed-up | (wall clock) "
            "| xinzhou % of peak | transformers % of peak | ceiling |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['name']} | {r['params'] / 1e6:.1f}M ({r['active'] / 1e6:.1f}M) | {r['B']}x{r['T']} | "
        f"{r['ours_tps']:,.0f} | {r['hf_tps']:,.0f} | {r['ratio']:.2f}x | {r['wall_ratio']:.2f}x | "
        f"{r['ours_peak']:.1%} | {r['hf_peak']:.1%} | {1 / r['hf_peak']:.2f}x |\n" for r in rows)
    r0 = rows[0]
    note = (f"\ntok/s = training tokens per CPU-second at {torch.get_num_threads()} thread(s); fp32 matmul peak "
            f"measured in this run: {peak / 1e9:.1f} GFLOP per CPU-second; "
            f"transformers attention `{r0['attn_impl']}`, experts `{r0['experts_impl']}`; initial losses equal "
            f"(max rel diff {max(r['loss_check'] for r in rows):.1e}); ceiling: the speed-up of a step that ran "
            f"all its FLOPs at the peak, 1 / transformers' fraction of it.\n")
    return head + body + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches and 2 timed steps (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per library and config")
    parser.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 5)
    peak = max(matmul_peak(n) for n in ((512, 1024) if args.quick else (1024, 2048)))  # the faster size
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    debug = xinzhou.get_config("debug-text01", rotary_dim=64)
    cases = [(debug, 2, 256), (hybrid_100m(), 1, 256)] if args.quick else [(debug, 4, 512), (hybrid_100m(), 2, 512)]
    rows = []
    for cfg, B, T in cases:
        t0 = time.perf_counter()
        rows.append(bench_config(cfg, B, T, steps, peak))
        r = rows[-1]
        print(f"{r['name']}: xinzhou {r['ours_tps']:,.0f} tok/s, transformers {r['hf_tps']:,.0f} tok/s per "
              f"CPU-second, {r['ratio']:.2f}x (wall clock {r['wall_ratio']:.2f}x; {time.perf_counter() - t0:.0f}s)",
              flush=True)
    md = table(rows, peak)
    print("\n" + md)
    targets = {"debug-text01": 1.5, "hybrid-100m": 1.2}
    for r in rows:
        goal = targets[r["name"]]
        print(f"target {r['name']}: >= {goal}x -> {r['ratio']:.2f}x {'PASS' if r['ratio'] >= goal else 'FAIL'}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
