"""What the published MiniMax checkpoints carry besides plain weights: FP8 block-quantized tensors and MTP layers.

Why: MiniMax-M2 is released in FP8 (``quantization_config``: ``quant_method "fp8"``, ``fmt "float8_e4m3fn"``,
``weight_block_size [128, 128]``, dynamic activation scales). Its attention projections and expert weights are
``float8_e4m3fn`` tensors, each with a ``<name>_scale_inv`` tensor of one fp32 factor per 128 x 128 block (despite
the name, the factor the FP8 values are *multiplied* by, as in DeepSeek-V3); the router, norms, embedding and LM
head are stored unquantized. xinzhou computes in bf16/fp32, so the loader dequantizes once:
``W[i, j] = W_fp8[i, j] · scale_inv[i // bo, j // bi]`` (the last block of a dimension may be partial). The
checkpoint also holds its multi-token-prediction modules as extra decoder layers past ``num_hidden_layers``
(``use_mtp`` / ``num_mtp_modules``); xinzhou does not run MTP, so those are set aside with a warning, and only
when the config declares them (anything else unexpected stays an error).
"""

from __future__ import annotations

import math
import re
import warnings

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIX = "_scale_inv"
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")


def is_fp8_checkpoint(config: dict) -> bool:
    """Whether ``config.json`` declares FP8 weights; other quantization methods raise ``ValueError``."""
    q = config.get("quantization_config")
    if not q:
        return False
    method = q.get("quant_method")
    if method != "fp8":
        raise ValueError(f"quantization_config.quant_method {method!r} is not supported; valid options: 'fp8' "
                         "(block-scaled float8 weights, as MiniMax-M2 is published), or an unquantized checkpoint")
    if q.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError(f"quantization_config.activation_scheme {q['activation_scheme']!r} is not supported; "
                         "valid options: 'dynamic' (weights are dequantized on load, activations stay in bf16/fp32)")
    return True


def dequantize_fp8(tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Replace every FP8 weight and its ``_scale_inv`` by the dequantized weight in ``dtype`` (in place; returns
    ``tensors``). ``ValueError`` names a scale without a weight, a mis-shaped scale, or an FP8 tensor left with no
    scale."""
    block = config["quantization_config"].get("weight_block_size", [128, 128])
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"quantization_config.weight_block_size must be two positive ints, e.g. [128, 128]; got "
                         f"{block!r}")
    bo, bi = block
    for key in [k for k in tensors if k.endswith(SCALE_SUFFIX)]:
        name = key.removesuffix(SCALE_SUFFIX)
        if name not in tensors:
            raise ValueError(f"checkpoint has {key} but no weight {name} for it to scale")
        w, s = tensors.pop(name), tensors.pop(key)
        if w.dim() != 2:
            raise ValueError(f"FP8 weight {name} must be 2-D [out, in], got shape {tuple(w.shape)}")
        O, I = w.shape
        want = (math.ceil(O / bo), math.ceil(I / bi))
        if tuple(s.shape) != want:
            raise ValueError(f"{key} has shape {tuple(s.shape)}; a [{O}, {I}] weight in {bo} x {bi} blocks "
                             f"needs {want}")
        factor = s.float().repeat_interleave(bo, dim=0)[:O].repeat_interleave(bi, dim=1)[:, :I]
        tensors[name] = (w.float() * factor).to(dtype)
    left = [k for k, t in tensors.items() if t.dtype in FP8_DTYPES]
    if left:
        raise ValueError(f"FP8 tensors without a {SCALE_SUFFIX} block scale: {left[:8]}"
                         f"{' ...' if len(left) > 8 else ''}")
    return tensors


def has_mtp(config: dict) -> bool:
    return bool(config.get("use_mtp") or config.get("num_mtp_modules") or config.get("num_nextn_predict_layers"))


def drop_mtp_layers(tensors: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Set aside the decoder layers past ``num_layers`` (and any ``mtp.`` tensors): the MTP modules."""
    extra = [k for k in tensors if k.startswith(("mtp.", "model.mtp."))
             or ((m := _LAYER.match(k)) is not None and int(m[1]) >= num_layers)]
    if extra:
        warnings.warn(f"skipping {len(extra)} multi-token-prediction tensors (layers past num_hidden_layers="
                      f"{num_layers}): xinzhou does not run MTP", stacklevel=3)
    for k in extra:
        del tensors[k]
    return tensors
