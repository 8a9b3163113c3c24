"""Loading checkpoints the way MiniMax-M2 is published: FP8 block-quantized attention and expert weights with
``weight_scale_inv`` factors, and MTP layers past ``num_hidden_layers``. The reference is hand dequantization
(``W_fp8 · scale`` per block, partial last blocks included) of a tiny model quantized here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xinzhou

BLOCK = [24, 16]  # 64 = 2 x 24 + 16 rows: the last row block is partial


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax FP8 quantization: ``(w_fp8, scale_inv)`` with ``w ≈ w_fp8 · scale_inv`` blockwise."""
    bo, bi = BLOCK
    O, I = w.shape
    s = torch.empty(math.ceil(O / bo), math.ceil(I / bi))
    q = torch.empty(O, I, dtype=torch.float8_e4m3fn)
    for r in range(s.shape[0]):
        for c in range(s.shape[1]):
            blk = w[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi]
            s[r, c] = blk.abs().max().clamp(min=1e-12) / 448.0
            q[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi] = (blk / s[r, c]).to(torch.float8_e4m3fn)
    return q, s


def _dequantize(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The hand reference: element (i, j) times the factor of its block."""
    bo, bi = BLOCK
    out = torch.empty(q.shape)
    for i in range(q.shape[0]):
        for j in range(q.shape[1]):
            out[i, j] = q[i, j].float() * s[i // bo, j // bi]
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, xinzhou.Model, dict[str, torch.Tensor]]:
    """A tiny M2 checkpoint rewritten as M2 is released: FP8 q/k/v/o and experts, an MTP layer, dtype bf16."""
    torch.manual_seed(0)
    cfg = xinzhou.get_config("debug-m2", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=8,
                             moe_intermediate_size=32, num_layers=2, vocab_size=96)
    model = xinzhou.Model(cfg).eval()
    path = tmp_path_factory.mktemp("m2-fp8") / "ckpt"
    model.save_pretrained(path)
    tensors = load_file(str(path / "model.safetensors"))
    expected = {}
    for name in list(tensors):
        if any(p in name for p in ("q_proj", "k_proj", "v_proj", "o_proj", ".experts.")):
            q, s = _quantize(tensors[name])
            tensors[name], tensors[name + "_scale_inv"] = q, s
            expected[name] = _dequantize(q, s)
    for name in [k for k in tensors if k.startswith("model.layers.1.")]:  # an MTP module: layer 2 (= L)
        tensors[name.replace("layers.1.", "layers.2.")] = tensors[name].clone()
    save_file(tensors, str(path / "model.safetensors"))
    raw = json.loads((path / "config.json").read_text())
    raw.pop("xinzhou_config")  # read it as the published config.json is read
    raw.update(dtype="bfloat16", use_mtp=True, num_mtp_modules=1,
               quantization_config={"quant_method": "fp8", "fmt": "float8_e4m3fn", "activation_scheme": "dynamic",
                                    "weight_block_size": BLOCK})
    (path / "config.json").write_text(json.dumps(raw))
    return path, model, expected


def test_fp8_weights_are_dequantized_blockwise_and_mtp_layers_set_aside(published):
    path, model, expected = published
    with pytest.warns(UserWarning, match="skipping .* multi-token-prediction tensors"):
        loaded = xinzhou.from_pretrained(path, dtype=torch.float32)
    sd = loaded.state_dict()
    L, E = 2, loaded.config.num_experts
    for layer in range(L):
        a = f"model.layers.{layer}.self_attn"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(sd[f"layers.{layer}.self_attn.{p}.weight"], expected[f"{a}.{p}.weight"])
        ex = f"model.layers.{layer}.block_sparse_moe.experts"
        gate_up = torch.stack([torch.cat([expected[f"{ex}.{e}.w1.weight"], expected[f"{ex}.{e}.w3.weight"]])
                               for e in range(E)])
        assert torch.equal(sd[f"layers.{layer}.block_sparse_moe.gate_up"], gate_up)
        assert torch.equal(sd[f"layers.{layer}.block_sparse_moe.down"],
                           torch.stack([expected[f"{ex}.{e}.w2.weight"] for e in range(E)]))
    # unquantized tensors are the original ones; the model is FP8-close to the original
    assert torch.equal(sd["embed_tokens.weight"], model.state_dict()["embed_tokens.weight"])
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = loaded(ids).logits, model(ids).logits
    assert (a - b).norm() / b.norm() < 0.1


def test_fp8_checkpoint_loads_in_its_config_dtype(published):
    path, _, _ = published
    with pytest.warns(UserWarning, match="multi-token-prediction"):
        loaded = xinzhou.from_pretrained(path)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def _variant(published, tmp_path: Path, config: dict | None = None, edit=None) -> Path:
    src, _, _ = published
    dst = tmp_path / "ckpt"
    dst.mkdir()
    raw = json.loads((src / "config.json").read_text())
    raw.update(config or {})
    (dst / "config.json").write_text(json.dumps(raw))
    tensors = load_file(str(src / "model.safetensors"))
    if edit:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("config, edit, match", [
    ({"quantization_config": {"quant_method": "awq"}}, None, "quant_method 'awq' is not supported; valid options"),
    ({"quantization_config": {"quant_method": "fp8", "activation_scheme": "static"}}, None,
     "activation_scheme 'static' is not supported"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [0, 16]}}, None,
     "weight_block_size must be two positive ints"),
    (None, lambda t: t.pop("model.layers.0.self_attn.q_proj.weight_scale_inv"),
     r"FP8 tensors without a _scale_inv block scale: \['model.layers.0.self_attn.q_proj.weight'\]"),
    (None, lambda t: t.update({"model.layers.0.self_attn.q_proj.weight_scale_inv": torch.ones(2, 2)}),
     r"q_proj.weight_scale_inv has shape \(2, 2\); a \[64, 64\] weight in 24 x 16 blocks needs \(3, 4\)"),
    (None, lambda t: t.pop("model.layers.0.self_attn.q_proj.weight"), "no weight .*q_proj.weight for it to scale"),
    ({"use_mtp": False, "num_mtp_modules": 0}, None, r"unexpected \['layers.2."),
])
def test_bad_published_checkpoints_name_the_problem(published, tmp_path, config, edit, match):
    with pytest.raises(ValueError, match=match):
        xinzhou.from_pretrained(_variant(published, tmp_path, config, edit))
