"""Check this install against MiniMax's official code: load the bundled Text-01 reference checkpoint, reproduce
its logits and its greedy cache-path continuation, and check every lightning implementation against the fp64
oracle. No downloads; about ten seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import time

import torch


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--atol", type=float, default=1e-5, help="max abs logit error allowed (default 1e-5)")


def _row(name: str, err: float, tol: float, rows: list) -> None:
    rows.append((name, err, tol, err <= tol))


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file

    from xinzhou.assets import GOLDEN_TEXT01
    from xinzhou.model.hf import from_pretrained
    from xinzhou.ops.lightning import IMPLS, lightning_attn

    console = Console()
    t0 = time.perf_counter()
    model = from_pretrained(GOLDEN_TEXT01)
    g = load_file(str(GOLDEN_TEXT01 / "golden.safetensors"))
    rows: list = []
    with torch.no_grad():
        _row("logits [2, 37] (one lightning block)", (model(g["input_ids"]).logits - g["logits"]).abs().max().item(),
             args.atol, rows)
        _row("logits [1, 300] (crosses a 256-token block)",
             (model(g["input_ids_long"]).logits - g["logits_long"]).abs().max().item(), args.atol, rows)
        cache = model.new_cache(1)
        logits = [model(g["greedy_ids"][:, :300], cache=cache).logits[:, -1]]
        tokens = []
        for i in range(12):
            tokens.append(logits[-1].argmax(-1))
            if i < 11:
                logits.append(model(tokens[-1][:, None], cache=cache).logits[:, -1])
        _row("greedy decode logits (prefill 300 + 11 cached steps)",
             (torch.cat(logits) - g["greedy_logits"]).abs().max().item(), args.atol, rows)
        same = torch.equal(torch.stack(tokens, 1), g["greedy_ids"][:, 300:])
        _row("greedy tokens identical (12 of 12)", 0.0 if same else 1.0, 0.0, rows)
        gen = torch.Generator().manual_seed(0)
        q, k = (torch.randn(1, 300, 4, 16, generator=gen, dtype=torch.float64) * 0.3 for _ in range(2))
        v = torch.randn(1, 300, 4, 16, generator=gen, dtype=torch.float64)
        slope = model.layers[0].self_attn.slope
        ref, ref_s = lightning_attn(q, k, v, slope, output_final_state=True, impl="naive")
        for impl in IMPLS:
            if impl in ("auto", "naive", "triton"):
                continue
            o, s = lightning_attn(q, k, v, slope, output_final_state=True, impl=impl)
            err = max(((o - ref).abs().max() / ref.abs().max()).item(), ((s - ref_s).abs().max() / ref_s.abs().max()).item())
            _row(f"lightning impl={impl} vs fp64 oracle (rel)", err, 1e-10, rows)
    table = Table(title=f"xinzhou verify — official MiniMax-Text-01 reference ({GOLDEN_TEXT01.name})")
    for col in ("check", "error", "tolerance", "result"):
        table.add_column(col)
    for name, err, tol, ok in rows:
        table.add_row(name, f"{err:.2e}", f"{tol:.0e}", "[green]ok[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    failed = sum(not r[3] for r in rows)
    console.print(f"{len(rows) - failed} passed, {failed} failed in {time.perf_counter() - t0:.1f}s")
    return 1 if failed else 0
