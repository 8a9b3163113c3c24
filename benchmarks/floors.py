"""The products-only decode step: what the engine and server benchmarks hold their ratios against.

Why it exists: a decode step of a small MoE model on a CPU is mostly weight products with a handful of rows
(matrix-vector products at batch 1, a few rows per expert at batch 8-16), and their speed is set by the BLAS
library and the memory system, not by the engine around them. This module times a step that does **nothing
but those products**, with the engine's weight layout and the rows routing sends each expert, on the same
machine in the same run. Transformers' step time divided by this one is the largest ratio *any* engine built on
torch's kernels could show against transformers here: a target above it cannot be met by engine work.

What one step multiplies, per layer, in the order the engine's decode runs them (``engine/runner.py``): the
attention projections of the layer's kind (lightning: qkv, output gate, out; softmax: q, k, v, o), the router,
and each expert its tokens chose (gate/up then down, with that expert's row count); then the fp32 LM head.
Routing is drawn uniformly at random per token (a randomly initialised router is close to uniform), seeded, new
each step. Attention over the cache, norms, sampling and everything else count as zero.
"""

from __future__ import annotations

import random
import statistics
import time

import torch
import torch.nn.functional as F

from xinzhou.configs.model import LINEAR

_PROJECTIONS = {True: ("qkv_proj", "output_gate", "out_proj"), False: ("q_proj", "k_proj", "v_proj", "o_proj")}


def _step_plan(model, batch: int, rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input, weight)`` pairs of one step, inputs allocated up front so the timed loop only multiplies."""
    cfg = model.config
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    plan = []
    for layer in model.layers:
        attn = layer.self_attn
        for name in _PROJECTIONS[layer.layer_type == LINEAR]:
            w = getattr(attn, name).weight
            plan.append((torch.randn(batch, w.shape[1], dtype=w.dtype), w))
        moe = layer.block_sparse_moe
        plan.append((torch.randn(batch, cfg.hidden_size, dtype=moe.gate.weight.dtype), moe.gate.weight))
        rows = [0] * E
        for _ in range(batch):
            for e in rng.sample(range(E), k):
                rows[e] += 1
        for e, n in enumerate(rows):
            if n:
                gate_up, down = moe.gate_up[e], moe.down[e]
                plan.append((torch.randn(n, gate_up.shape[1], dtype=gate_up.dtype), gate_up))
                plan.append((torch.randn(n, down.shape[1], dtype=down.dtype), down))
    head = model.lm_head.weight
    plan.append((torch.randn(batch, head.shape[1]), head.float()))
    return plan


def products_step_seconds(model, batch: int, steps: int = 40, seed: int = 0) -> float:
    """Median seconds of a decode step of ``batch`` tokens made only of its weight products (see the module
    docstring). Time the model as the engine has laid it out: build the engine (which re-lays CPU weights
    input-major) before calling this."""
    rng = random.Random(seed)
    plans = [_step_plan(model, batch, rng) for _ in range(steps)]
    times = []
    with torch.inference_mode():
        for plan in plans[: max(2, steps // 8)]:  # warm-up: page in the weights, size the allocator
            for x, w in plan:
                F.linear(x, w)
        for plan in plans:
            t = time.perf_counter()
            for x, w in plan:
                F.linear(x, w)
            times.append(time.perf_counter() - t)
    return statistics.median(times)
