"""Model behaviour: incremental decode equals the full forward, packed documents equal separate ones,
parameter counts reproduce the published sizes, cache accounting, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

import xinzhou
from xinzhou.configs.model import FULL, LINEAR

pytestmark = pytest.mark.filterwarnings("ignore:transformers' minimax rotates")


def _tiny(name="debug-text01", **kw):
    cfg = xinzhou.get_config(name, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=8,
                             moe_intermediate_size=32, vocab_size=300, **kw)
    m = xinzhou.Model(cfg).eval()
    m.reset_parameters(seed=0)
    return m


@pytest.mark.parametrize("name", ["debug-text01", "debug-m2"])
@pytest.mark.parametrize("pieces", [[40, 1, 1, 1, 1, 1], [7, 13, 20, 5], [1] * 12])
def test_incremental_decode_equals_full_forward(name, pieces):
    model = _tiny(name)
    T = sum(pieces)
    ids = torch.randint(0, 300, (2, T))
    with torch.no_grad():
        full = model(ids).logits
        cache, outs, t0 = model.new_cache(2), [], 0
        for n in pieces:
            outs.append(model(ids[:, t0 : t0 + n], cache=cache).logits)
            t0 += n
    assert cache.seq_len == T
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5


def test_packed_documents_equal_separate_forwards():
    model = _tiny()
    docs = [torch.randint(0, 300, (n,)) for n in (9, 30, 1, 24)]
    packed = torch.cat(docs)[None]
    cu = torch.tensor([0, 9, 39, 40, 64], dtype=torch.int32)
    with torch.no_grad():
        out = model(packed, cu_seqlens=cu).logits
        for d, a, b in zip(docs, cu[:-1].tolist(), cu[1:].tolist()):
            assert (out[:, a:b] - model(d[None]).logits).abs().max() <= 1e-5


def test_real_shapes_reproduce_published_sizes():
    with torch.device("meta"):
        t01 = xinzhou.Model(xinzhou.get_config("minimax-text-01"))
        m1 = xinzhou.Model(xinzhou.get_config("minimax-m1"))
        m2 = xinzhou.Model(xinzhou.get_config("minimax-m2"))
    total, active = t01.count_parameters()
    assert round(total / 1e9) == 456 and round(active / 1e9, 1) == 45.9
    assert m1.count_parameters() == (total, active)
    total, active = m2.count_parameters()
    assert 225e9 < total < 235e9 and 9.5e9 < active < 10.5e9
    cfg = t01.config
    assert cfg.num_linear_layers == 70 and cfg.num_full_layers == 10 and cfg.layer_types[7] == FULL
    per_token, fixed = t01.cache_bytes(torch.bfloat16)
    assert per_token == 40 * 1024 and fixed == 70 * 64 * 128 * 128 * 4  # 40 KiB/token, 280 MiB fixed


def test_cache_bytes_lightning_state_constant():
    model = _tiny()
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.randint(0, 300, (1, 10)), cache=cache)
        first = cache.nbytes()
        model(torch.randint(0, 300, (1, 50)), cache=cache)
        second = cache.nbytes()
    assert first["lightning_state"] == second["lightning_state"] > 0
    assert second["kv"] == first["kv"] * 6


def test_gradients_flow_and_aux_loss():
    model = _tiny().train()
    ids = torch.randint(0, 300, (2, 20))
    out = model(ids, labels=ids)
    (out.loss + 0.01 * out.aux_loss).backward()
    assert all(p.grad is not None for n, p in model.named_parameters()), "every parameter gets a gradient"
    assert out.expert_counts.shape == (8, model.config.num_experts)
    assert out.expert_counts.sum(1).eq(2 * 20 * model.config.num_experts_per_tok).all()


def test_gradient_checkpointing_same_gradients():
    model = _tiny().train()
    ids = torch.randint(0, 300, (1, 16))
    model(ids, labels=ids).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(ids, labels=ids).loss.backward()
    for a, p in zip(ref, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


# ------------------------------------------------------------------------------------------------ errors
def test_out_of_vocab_ids():
    model = _tiny()
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.tensor([1, 2]))


def test_bad_configs():
    with pytest.raises(ValueError, match="layer_types has 3 entries"):
        xinzhou.ModelConfig(num_layers=4, layer_types=(LINEAR, FULL, LINEAR))
    with pytest.raises(ValueError, match="unknown layer type"):
        xinzhou.ModelConfig(num_layers=1, layer_types=("mamba",))
    with pytest.raises(ValueError, match="must all be"):
        xinzhou.ModelConfig(family="m2", num_layers=1, layer_types=(LINEAR,))
    with pytest.raises(ValueError, match="valid options"):
        xinzhou.get_config("gpt-5")
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        xinzhou.ModelConfig(num_heads=4, num_kv_heads=3)


def _write_ckpt(tmp_path, **config_changes):
    model = _tiny()
    model.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg.pop("xinzhou_config")
    cfg.update(config_changes)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    return tmp_path / "ck"


def test_unknown_model_type(tmp_path):
    with pytest.raises(ValueError, match="unsupported model_type 'llama'.*minimax_m2"):
        xinzhou.from_pretrained(_write_ckpt(tmp_path, model_type="llama"))


def test_mis_shaped_weight(tmp_path):
    with pytest.raises(ValueError, match="has shape .* expected"):
        xinzhou.from_pretrained(_write_ckpt(tmp_path, intermediate_size=40))


def test_missing_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _write_ckpt(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    sd.pop("model.layers.3.self_attn.q_proj.weight")
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \[.layers.3.self_attn.q_proj.weight.\]"):
        xinzhou.from_pretrained(path)


def test_missing_expert(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _write_ckpt(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    sd.pop("model.layers.2.block_sparse_moe.experts.3.w3.weight")
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layer 2: expert weight w3 missing for expert\(s\) \[3\]"):
        xinzhou.from_pretrained(path)


def test_inconsistent_layer_pattern_in_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="layer_types has 2 entries but num_layers is 8"):
        xinzhou.from_pretrained(_write_ckpt(tmp_path, layer_types=[LINEAR, FULL]))
    with pytest.raises(ValueError, match="attn_type_list must list 8 layers"):
        xinzhou.from_pretrained(_write_ckpt(tmp_path, model_type="minimax_text_01", attn_type_list=[0, 1]))


def test_no_weights(tmp_path):
    path = _write_ckpt(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        xinzhou.from_pretrained(path)


def test_save_is_atomic_over_existing(tmp_path, monkeypatch):
    model = _tiny()
    model.save_pretrained(tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()
    import xinzhou.model.hf as hf

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(RuntimeError):
        _tiny().save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp litter
