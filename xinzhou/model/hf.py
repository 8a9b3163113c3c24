"""Hugging Face checkpoints, both ways: every config and weight-name mapping lives here.

Reads ``config.json`` of ``model_type``:

* ``minimax_text_01`` — the original MiniMax-Text-01 / M1 releases (remote code: ``attn_type_list``,
  ``rotary_dim``, ``layernorm_*_alpha/beta``, ``postnorm``);
* ``minimax`` — transformers' port of Text-01/M1 (``layer_types``, ``*_alpha_factor``; it always post-norms and,
  unless the config carries ``rotary_dim``, rotates the whole head);
* ``minimax_m2`` — MiniMax-M2 (QK-norm, sigmoid router with ``e_score_correction_bias``, partial RoPE);

with weights in ``model.safetensors`` or sharded with ``model.safetensors.index.json`` (FP8 block-quantized
weights, as MiniMax-M2 is published, are dequantized on load and its MTP layers set aside: ``published.py``),
in either expert layout:
the published per-expert one (``block_sparse_moe.experts.N.w1/w2/w3``) or the fused one transformers 5 writes
(``mlp.experts.gate_up_proj`` / ``down_proj``). Writes the published per-expert layout (what vLLM and SGLang read
and transformers converts on load) with a ``minimax`` / ``minimax_m2`` config, atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xinzhou.configs.model import FULL, LINEAR, ModelConfig
from xinzhou.fileio import apply_default_mode, mkdtemp
from xinzhou.model.published import dequantize_fp8, drop_mtp_layers, has_mtp, is_fp8_checkpoint

MODEL_TYPES = ("minimax_text_01", "minimax", "minimax_m2")
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


# ---------------------------------------------------------------------------------------------- configs
def config_from_hf(d: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face ``config.json`` dict (any of :data:`MODEL_TYPES`)."""
    mt = d.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"unsupported model_type {mt!r} in config.json; valid options: {', '.join(MODEL_TYPES)}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise ValueError(f"config.json ({mt}) is missing required key(s) {missing}")
    L, H = d["num_hidden_layers"], d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // H
    rope = d.get("rope_parameters") or {}
    theta = rope.get("rope_theta", d.get("rope_theta"))
    rotary = d.get("rotary_dim")
    if rotary is None and "partial_rotary_factor" in {**d, **rope}:
        rotary = int(head_dim * {**d, **rope}["partial_rotary_factor"])
    kw = dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=L, num_heads=H,
              num_kv_heads=d.get("num_key_value_heads") or H, head_dim=head_dim,
              rotary_dim=rotary or head_dim, max_position_embeddings=d.get("max_position_embeddings", 8192),
              num_experts=d.get("num_local_experts", 8), num_experts_per_tok=d.get("num_experts_per_tok", 2),
              moe_intermediate_size=d.get("intermediate_size", 14336),
              router_aux_loss_coef=d.get("router_aux_loss_coef", 0.001),
              rms_norm_eps=d.get("rms_norm_eps", 1e-5), tie_word_embeddings=d.get("tie_word_embeddings", False),
              initializer_range=d.get("initializer_range", 0.02), bos_token_id=d.get("bos_token_id"),
              eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"))
    if mt == "minimax_m2":
        if d.get("scoring_func", "sigmoid") != "sigmoid":
            raise ValueError(f"minimax_m2 scoring_func must be 'sigmoid', got {d['scoring_func']!r}")
        return ModelConfig(family="m2", router="sigmoid", use_routing_bias=d.get("use_routing_bias", True),
                           use_qk_norm=d.get("use_qk_norm", True), postnorm=False,
                           rope_theta=theta or 5e6, **kw)
    if d.get("shared_intermediate_size", 0):
        raise ValueError("shared_intermediate_size > 0 (a shared expert) is not supported; the released "
                         "MiniMax-Text-01/M1 checkpoints use 0")
    if mt == "minimax_text_01":
        atl = d.get("attn_type_list")
        if atl is None or len(atl) != L:
            raise ValueError(f"attn_type_list must list {L} layers (num_hidden_layers), got {atl!r}")
        if any(a not in (0, 1) for a in atl):
            raise ValueError(f"attn_type_list entries must be 0 (lightning) or 1 (softmax), got {atl}")
        layer_types = tuple(FULL if a == 1 else LINEAR for a in atl)
        ab = {f"{part}_{ab}": d.get(f"layernorm_{src}_{ab}", 1.0)
              for part, src in (("linear_attn", "linear_attention"), ("full_attn", "full_attention"), ("mlp", "mlp"))
              for ab in ("alpha", "beta")}
        postnorm = bool(d.get("postnorm", False))
    else:  # transformers' "minimax"
        layer_types = d.get("layer_types") or [FULL if (i + 1) % 2 else LINEAR for i in range(L)]
        ab = {f"{part}_{x}": d.get(f"{part}_{x}_factor", 1.0)
              for part in ("linear_attn", "full_attn", "mlp") for x in ("alpha", "beta")}
        postnorm = True
    return ModelConfig(family="text01", router="softmax", postnorm=postnorm, layer_types=tuple(layer_types),
                       rope_theta=theta or 1e6, **ab, **kw)


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` dict that transformers (no custom code), vLLM and SGLang read."""
    d = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
             intermediate_size=cfg.moe_intermediate_size, num_local_experts=cfg.num_experts,
             num_experts_per_tok=cfg.num_experts_per_tok, hidden_act="silu", rms_norm_eps=cfg.rms_norm_eps,
             max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
             rotary_dim=cfg.rotary_dim, router_aux_loss_coef=cfg.router_aux_loss_coef,
             tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=cfg.initializer_range,
             bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
             dtype=str(dtype).removeprefix("torch."), xinzhou_config=cfg.to_dict())
    if cfg.family == "m2":
        if not (cfg.use_qk_norm and cfg.router == "sigmoid"):
            warnings.warn("transformers' minimax_m2 always applies QK-norm and a sigmoid router; this config "
                          "differs, so transformers will not reproduce it", stacklevel=3)
        d.update(model_type="minimax_m2", architectures=["MiniMaxM2ForCausalLM"], use_qk_norm=cfg.use_qk_norm,
                 qk_norm_type="per_layer", scoring_func="sigmoid", use_routing_bias=cfg.use_routing_bias,
                 rope_parameters=dict(rope_type="default", rope_theta=cfg.rope_theta,
                                      partial_rotary_factor=cfg.rotary_dim / cfg.head_dim))
        return d
    if cfg.rotary_dim != cfg.head_dim or not cfg.postnorm:
        warnings.warn("transformers' minimax rotates the whole head and always post-norms; this config uses "
                      f"rotary_dim={cfg.rotary_dim} of {cfg.head_dim}, postnorm={cfg.postnorm}, so transformers "
                      "will not reproduce its softmax layers (vLLM/SGLang/xinzhou read rotary_dim)", stacklevel=3)
    d.update(model_type="minimax", architectures=["MiniMaxForCausalLM"], layer_types=list(cfg.layer_types),
             rope_parameters=dict(rope_type="default", rope_theta=cfg.rope_theta), postnorm=cfg.postnorm,
             attn_type_list=[int(t == FULL) for t in cfg.layer_types])
    for part, src in (("linear_attn", "linear_attention"), ("full_attn", "full_attention"), ("mlp", "mlp")):
        for x in ("alpha", "beta"):
            d[f"{part}_{x}_factor"] = d[f"layernorm_{src}_{x}"] = getattr(cfg, f"{part}_{x}")
    return d


# ---------------------------------------------------------------------------------------------- weights
# transformers stores these decay tables as buffers; xinzhou derives them in fp32 from the config instead
_DERIVED = re.compile(r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")
_EXPERT = re.compile(r"^layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")


def _canonical(name: str) -> str:
    """Checkpoint key → xinzhou key space before expert fusion (drops ``model.``, ``mlp`` → ``block_sparse_moe``)."""
    name = name.removeprefix("model.")
    name = name.replace(".mlp.gate.e_score_correction_bias", ".block_sparse_moe.e_score_correction_bias")
    return name.replace(".mlp.", ".block_sparse_moe.")


def hf_to_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map checkpoint tensors (either expert layout) to xinzhou parameter names; expert weights are fused."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in tensors.items():
        key = _canonical(name)
        if _DERIVED.search(key):
            continue
        m = _EXPERT.match(key)
        if m:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = t
        elif key.endswith("block_sparse_moe.experts.gate_up_proj"):
            out[key.replace("experts.gate_up_proj", "gate_up")] = t
        elif key.endswith("block_sparse_moe.experts.down_proj"):
            out[key.replace("experts.down_proj", "down")] = t
        else:
            out[key] = t
    E = cfg.num_experts
    for (layer, w), per in experts.items():
        missing = sorted(set(range(E)) - set(per))
        if missing:
            raise ValueError(f"layer {layer}: expert weight {w} missing for expert(s) {missing} "
                             f"(expected experts 0..{E - 1})")
        experts[(layer, w)] = torch.stack([per[e] for e in range(E)])
    for (layer, w), stacked in list(experts.items()):
        base = f"layers.{layer}.block_sparse_moe"
        if w == "w2":
            out[f"{base}.down"] = stacked
        elif w == "w1":
            if (layer, "w3") not in experts:
                raise ValueError(f"layer {layer}: expert weights w1 present but w3 missing")
            out[f"{base}.gate_up"] = torch.cat([stacked, experts[(layer, "w3")]], dim=1)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """xinzhou parameters → published per-expert checkpoint names (``model.`` prefix, w1/w2/w3 per expert)."""
    out: dict[str, torch.Tensor] = {}
    Fw = cfg.moe_intermediate_size
    for key, t in sd.items():
        if key == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out[key] = t
        elif key.endswith("block_sparse_moe.gate_up"):
            base = "model." + key.removesuffix("gate_up") + "experts"
            for e in range(t.shape[0]):
                out[f"{base}.{e}.w1.weight"] = t[e, :Fw]
                out[f"{base}.{e}.w3.weight"] = t[e, Fw:]
        elif key.endswith("block_sparse_moe.down"):
            base = "model." + key.removesuffix("down") + "experts"
            for e in range(t.shape[0]):
                out[f"{base}.{e}.w2.weight"] = t[e]
        else:
            out["model." + key] = t
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- I/O
def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json "
                         "(pickle .bin checkpoints are not read: convert them to safetensors)")
    tensors = {}
    for f in files:
        if not (path / f).exists():
            raise ValueError(f"weight shard {f} listed in the index is missing from {path}")
        with safe_open(str(path / f), framework="pt") as fh:
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k)
    return tensors


def _config_dtype(raw: dict) -> torch.dtype | None:
    name = raw.get("dtype") or raw.get("torch_dtype")
    t = getattr(torch, name, None) if isinstance(name, str) else None
    return t if isinstance(t, torch.dtype) and t.is_floating_point and t not in (torch.float8_e4m3fn,
                                                                                 torch.float8_e5m2) else None


def from_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a Hugging Face checkpoint directory into a :class:`xinzhou.Model` (eval mode).

    Every weight is checked for presence and shape before the model is built, so a bad checkpoint raises a
    ``ValueError`` that names the key and what was expected, and nothing half-loaded is returned.
    """
    from xinzhou.model.model import Model  # noqa: PLC0415 (model imports this module)

    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a checkpoint directory: config.json not found")
    raw = json.loads((path / "config.json").read_text())
    cfg = ModelConfig.from_dict(raw["xinzhou_config"]) if "xinzhou_config" in raw else config_from_hf(raw)
    tensors = _read_tensors(path)
    if has_mtp(raw):
        tensors = drop_mtp_layers(tensors, cfg.num_layers)
    if is_fp8_checkpoint(raw):  # dequantize to the dtype the checkpoint was trained in (M2: bf16)
        dtype = dtype or _config_dtype(raw) or torch.bfloat16
        tensors = dequantize_fp8(tensors, raw, dtype)
    sd = hf_to_state_dict(tensors, cfg)
    with torch.device("meta"):
        model = Model(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    for k, t in sd.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise ValueError(f"weight {k} has shape {tuple(t.shape)}, expected {tuple(expected[k].shape)} "
                             "from config.json")
    target = dtype or next(iter(sd.values())).dtype
    sd = {k: (t.to(device=device, dtype=torch.float32) if k.endswith("e_score_correction_bias")
              else t.to(device=device, dtype=target)) for k, t in sd.items()}
    model.load_state_dict(sd, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    for layer in model.layers:  # slopes are plain fp32 attributes built on meta: rebuild on the real device
        attn = layer.self_attn
        if hasattr(attn, "slope"):
            from xinzhou.model.layers import lightning_slopes  # noqa: PLC0415

            attn.slope = lightning_slopes(attn.H, attn.layer_idx, cfg.num_layers).to(device)
    return model.eval()


def save_pretrained(model, path: str | os.PathLike, max_shard_bytes: int = 4 << 30,
                    extra_files: dict[str, str] | None = None) -> None:
    """Write ``config.json`` + safetensors (sharded above ``max_shard_bytes``) atomically: everything goes to a
    temporary sibling directory that replaces ``path`` only when complete. ``extra_files`` (name → text) are
    written beside them (tokenizer files, chat template)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    dtype = model.embed_tokens.weight.dtype
    tmp = mkdtemp(path.parent, prefix=f".{path.name}.tmp-")
    try:
        shards, cur, size = [], {}, 0
        for k, t in sd.items():
            nbytes = t.numel() * t.element_size()
            if cur and size + nbytes > max_shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k], size = t, size + nbytes
        shards.append(cur)
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata=meta)
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in sd.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        apply_default_mode(tmp)  # what open() would give: safetensors writes 0600, mkdtemp makes 0700
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
