"""Print a model's architecture summary: layer pattern, parameters (total / active per token), cache cost.

`xinzhou info minimax-text-01` (a registry name, built on the meta device: no memory) or
`xinzhou info PATH` (a Hugging Face checkpoint directory: only config.json is read).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="PATH_OR_NAME", help="registry name (see --list) or checkpoint directory")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="KV-cache dtype for the per-token cost (lightning states are always fp32)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _fmt_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def summarize(model_or_name: str, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Architecture summary of a registry name or checkpoint directory (no weights are loaded)."""
    from xinzhou.configs.model import ModelConfig, get_config, list_configs
    from xinzhou.model.hf import config_from_hf
    from xinzhou.model.model import Model

    path = Path(model_or_name)
    if (path / "config.json").exists():
        raw = json.loads((path / "config.json").read_text())
        cfg = ModelConfig.from_dict(raw["xinzhou_config"]) if "xinzhou_config" in raw else config_from_hf(raw)
        cfg.name = path.resolve().name
    elif model_or_name in list_configs():
        cfg = get_config(model_or_name)
    else:
        raise ValueError(f"{model_or_name!r} is neither a checkpoint directory (with config.json) nor a registered "
                         f"config; registered: {', '.join(list_configs())}")
    with torch.device("meta"):
        model = Model(cfg)
    total, active = model.count_parameters()
    per_token, fixed = model.cache_bytes(dtype)
    pattern = "".join("L" if t == "linear_attention" else "S" for t in cfg.layer_types)
    return {
        "name": cfg.name, "family": cfg.family, "layers": cfg.num_layers, "pattern": pattern,
        "lightning_layers": cfg.num_linear_layers, "softmax_layers": cfg.num_full_layers,
        "hidden": cfg.hidden_size, "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "rotary_dim": cfg.rotary_dim, "rope_theta": cfg.rope_theta,
        "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok, "router": cfg.router,
        "params_total": total, "params_active": active,
        "kv_bytes_per_token": per_token, "lightning_state_bytes": fixed,
    }


def main(args: argparse.Namespace) -> int:
    dtype = getattr(torch, args.dtype)
    try:
        s = summarize(args.model, dtype)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    pattern = s["pattern"]
    for n in range(1, 9):  # compress a repeating pattern, e.g. (LLLLLLLS) x 10
        unit, reps = pattern[:n], len(pattern) // n
        if reps > 1 and unit * reps == pattern:
            pattern = f"({unit}) x {reps}"
            break
    print(f"{s['name']} ({s['family']})")
    print(f"  layers        {s['layers']}: {s['lightning_layers']} lightning (L) + {s['softmax_layers']} softmax (S)"
          f"  pattern {pattern}")
    print(f"  attention     hidden {s['hidden']}, {s['heads']} heads x {s['head_dim']} ({s['kv_heads']} KV heads), "
          f"RoPE on {s['rotary_dim']} dims, theta {s['rope_theta']:g}")
    print(f"  MoE           {s['experts']} experts, top-{s['top_k']}, {s['router']} router")
    print(f"  parameters    {_fmt_count(s['params_total'])} total, {_fmt_count(s['params_active'])} active per token "
          "(without embeddings)")
    print(f"  cache         {_fmt_bytes(s['kv_bytes_per_token'])} per token (softmax KV, {args.dtype}) + "
          f"{_fmt_bytes(s['lightning_state_bytes'])} fixed (lightning fp32 states)")
    return 0
