"""Slot storage: the model's own layers run on a SlotView of rows with different lengths exactly as on one
HybridCache per sequence; moving and swapping slots keeps their contents; bytes in use are accounted."""

from __future__ import annotations

import torch

from tests.engine.conftest import prompts_of
from xinzhou.engine.cache_manager import CacheManager


def _forward(model, view, ids):
    out = model(ids, cache=view)
    return out.logits[:, -1]


@torch.inference_mode()
def test_slot_view_equals_hybrid_cache_per_sequence(text01):
    lengths = [9, 3, 14]
    prompts = prompts_of(lengths)
    cache = CacheManager(text01.config, max_slots=4, dtype=torch.float32)
    slots = [cache.allocate() for _ in lengths]
    cache.reserve(32)
    for s, p in zip(slots, prompts):
        _forward(text01, cache.view([s]), torch.tensor([p]))
    new = torch.tensor([[5, 6], [7, 8], [9, 10]])
    rows = [2, 0, 1]  # a gathered, non-contiguous order
    got = _forward(text01, cache.view(rows), new[rows])
    for i, r in enumerate(rows):
        ref = text01.new_cache(1)
        text01(torch.tensor([prompts[r]]), cache=ref)
        want = text01(new[r : r + 1], cache=ref).logits[:, -1]
        assert (got[i] - want[0]).abs().max() < 1e-5
    assert cache.lengths[:3] == [n + 2 for n in lengths]


@torch.inference_mode()
def test_move_swap_and_accounting(text01):
    cfg = text01.config
    cache = CacheManager(cfg, max_slots=3, dtype=torch.float32)
    a, b, c = (cache.allocate() for _ in range(3))
    cache.reserve(16)
    for s, n in ((a, 4), (b, 7)):
        _forward(text01, cache.view([s]), torch.tensor([prompts_of([n], seed=s)[0]]))
    _, kv_a = cache.read(a)
    state_b, kv_b = cache.read(b)
    cache.swap(a, b)
    assert torch.equal(cache.read(a)[0], state_b) and torch.equal(cache.read(a)[1], kv_b)
    assert torch.equal(cache.read(b)[1], kv_a) and cache.lengths[:2] == [7, 4]
    cache.release(c)
    cache.move(a, c)
    assert torch.equal(cache.read(c)[1], kv_b) and cache.num_free == 1
    per_token = cfg.num_full_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
    fixed = cfg.num_linear_layers * cfg.num_heads * cfg.head_dim**2 * 4
    assert cache.nbytes()["kv"] == 11 * per_token and cache.nbytes()["lightning_state"] == 2 * fixed
    assert cache.bytes_per_token() == per_token and cache.state_bytes() == fixed
