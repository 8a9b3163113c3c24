"""The ground truth for Text-01/M1: tensors from MiniMax's official remote code (fp32, CPU) on a tiny random
checkpoint in the original layout (see fixtures/text01-tiny-a/README.md). ``from_pretrained`` must reproduce
every one of them, including the official cache path's greedy continuation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import xinzhou

ATOL = 1e-5


@pytest.fixture(scope="module")
def golden(request):
    from xinzhou.assets import GOLDEN_TEXT01 as path

    return xinzhou.from_pretrained(path), load_file(str(path / "golden.safetensors"))


def test_config_read_from_remote_code_keys(golden):
    model, _ = golden
    cfg = model.config
    assert cfg.family == "text01" and cfg.postnorm and cfg.rotary_dim == 8 and cfg.rope_theta == 1e7
    assert cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",) + ("linear_attention",) * 3 + (
        "full_attention",)
    assert (cfg.linear_attn_alpha, cfg.full_attn_alpha, cfg.mlp_alpha) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("ids_key, logits_key", [("input_ids", "logits"), ("input_ids_long", "logits_long")])
def test_logits(golden, ids_key, logits_key):
    model, g = golden
    with torch.no_grad():
        out = model(g[ids_key]).logits
    assert torch.allclose(out, g[logits_key], atol=ATOL, rtol=0)


def test_greedy_cache_path(golden):
    model, g = golden
    prompt = g["greedy_ids"][:, :300]
    cache = model.new_cache(1)
    with torch.no_grad():
        logits = [model(prompt, cache=cache).logits[:, -1]]
        tokens = []
        for i in range(12):
            tokens.append(logits[-1].argmax(-1))
            if i < 11:
                logits.append(model(tokens[-1][:, None], cache=cache).logits[:, -1])
    assert torch.equal(torch.stack(tokens, 1), g["greedy_ids"][:, 300:])
    assert torch.allclose(torch.cat(logits), g["greedy_logits"], atol=ATOL, rtol=0)


def test_wrong_rotary_dim_is_detectable(golden):
    """The golden data separates a right from a wrong partial-RoPE setting (the transformers bug)."""
    model, g = golden
    wrong = xinzhou.Model(model.config.replace(rotary_dim=16)).eval()
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():
        err = (wrong(g["input_ids"]).logits - g["logits"]).abs().max()
    assert err > 10 * ATOL
