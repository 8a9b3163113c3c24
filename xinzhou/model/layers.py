"""The building blocks of MiniMax models, in reading order: RMSNorm, partial RoPE, lightning attention,
softmax attention, the MoE feed-forward, and the decoder layer that ties them with the family's residual.

Modules hold parameters and call the pure ops in :mod:`xinzhou.ops`; parameter names follow the Hugging Face
checkpoints so :mod:`xinzhou.model.hf` maps them one to one (experts are stored fused, see ``MoE``).

Letters: B batch, T time, D hidden, H heads, G key/value heads, K head dim, E experts, N tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xinzhou.configs.model import FULL, LINEAR, ModelConfig
from xinzhou.ops.attention import attention
from xinzhou.ops.lightning import lightning_attn
from xinzhou.ops.moe import expert_counts, load_balance_loss, moe_experts, route


class RMSNorm(nn.Module):
    """``w ⊙ x / sqrt(mean(x²) + eps)`` computed in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin`` of shape ``[*positions.shape, rotary_dim]`` (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float64)
                                / rotary_dim))
    ang = positions.to(torch.float64)[..., None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_partial_rope(x_BTHK: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor) -> torch.Tensor:
    """Rotate the first R = rotary_dim channels of each head (rotate-half pairing); pass the rest through."""
    R = cos_BTR.shape[-1]
    x_rot, x_pass = x_BTHK[..., :R].float(), x_BTHK[..., R:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos_BTR[:, :, None, :], sin_BTR[:, :, None, :]
    return torch.cat([(x_rot * cos + rotated * sin).to(x_BTHK.dtype), x_pass], dim=-1)


def lightning_slopes(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Per-head decay rates of one lightning layer, fp32 ``[H]``, exactly as MiniMax's official code.

    ALiBi slopes (``2^(-8(h+1)/H)`` for a power-of-two H, ALiBi's interleave rule otherwise) scaled by
    ``1 - l/(L-1) + 1e-5`` so early layers forget fast and late layers nearly never.
    """

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    def slopes(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return pow2(n)
        closest = 2 ** math.floor(math.log2(n))
        return pow2(closest) + slopes(2 * closest)[0::2][: n - closest]

    depth = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    return torch.tensor(slopes(num_heads), dtype=torch.float32) * (1 - depth + 1e-5)


class LightningAttention(nn.Module):
    """MiniMax lightning attention: ``out_proj(sigmoid(output_gate(x)) ⊙ RMSNorm(lightning(silu(qkv_proj(x)))))``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.H, self.K = cfg.num_heads, cfg.head_dim
        inner = self.H * self.K
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * inner, bias=False)
        self.output_gate = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.out_proj = nn.Linear(inner, cfg.hidden_size, bias=False)
        self.norm = RMSNorm(inner, cfg.lightning_norm_eps)
        # a plain attribute, not a buffer: .to(bf16) must never touch it (decays stay fp32)
        self.slope = lightning_slopes(self.H, layer_idx, cfg.num_layers)

    def forward(self, x_BTD, *, cache=None, cu_seqlens=None, positions=None):
        B, T, _ = x_BTD.shape
        qkv = F.silu(self.qkv_proj(x_BTD)).view(B, T, self.H, 3 * self.K)
        q, k, v = qkv.split(self.K, dim=-1)  # [q|k|v] contiguous within each head, as in the checkpoints
        state = cache.get_state(self.layer_idx) if cache is not None else None
        if self.slope.device != x_BTD.device:
            self.slope = self.slope.to(x_BTD.device)
        o_BTHK, new_state = lightning_attn(q, k, v, self.slope, initial_state=state,
                                           output_final_state=cache is not None, cu_seqlens=cu_seqlens)
        if cache is not None:
            cache.set_state(self.layer_idx, new_state)
        o_BTD = self.norm(o_BTHK.reshape(B, T, self.H * self.K))
        return self.out_proj(torch.sigmoid(self.output_gate(x_BTD)) * o_BTD)


class SoftmaxAttention(nn.Module):
    """GQA softmax attention with partial RoPE and optional QK-norm over the whole q/k projections (M2)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.H, self.G, self.K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rotary_dim, self.theta = cfg.rotary_dim, cfg.rope_theta
        self.q_proj = nn.Linear(cfg.hidden_size, self.H * self.K, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.G * self.K, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.G * self.K, bias=False)
        self.o_proj = nn.Linear(self.H * self.K, cfg.hidden_size, bias=False)
        if cfg.use_qk_norm:
            self.q_norm = RMSNorm(self.H * self.K, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.G * self.K, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x_BTD, *, cache=None, cu_seqlens=None, positions=None):
        B, T, _ = x_BTD.shape
        q, k, v = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q_BTHK, k_BTGK = q.view(B, T, self.H, self.K), k.view(B, T, self.G, self.K)
        cos, sin = rope_cos_sin(positions, self.rotary_dim, self.theta)
        q_BTHK, k_BTGK = apply_partial_rope(q_BTHK, cos, sin), apply_partial_rope(k_BTGK, cos, sin)
        v_BTGK = v.view(B, T, self.G, self.K)
        kv_lengths = None
        if cache is not None:
            k_BTGK, v_BTGK, kv_lengths = cache.append_kv(self.layer_idx, k_BTGK, v_BTGK)
        o_BTHK = attention(q_BTHK, k_BTGK, v_BTGK, causal=True, cu_seqlens=cu_seqlens, kv_lengths=kv_lengths)
        return self.o_proj(o_BTHK.reshape(B, T, self.H * self.K))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. Experts are stored fused (``gate_up [E, 2F, D]`` = w1 over w3,
    ``down [E, D, F]`` = w2) so the fast path needs no per-call stacking; ``model/hf.py`` maps them to and from
    the per-expert checkpoint layout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, D, Fw = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.num_experts, self.top_k, self.router = E, cfg.num_experts_per_tok, cfg.router
        self.gate = nn.Linear(D, E, bias=False)
        self.gate_up = nn.Parameter(torch.empty(E, 2 * Fw, D))
        self.down = nn.Parameter(torch.empty(E, D, Fw))
        if cfg.use_routing_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))
        else:
            self.e_score_correction_bias = None

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(y [B, T, D], load-balance loss (scalar), tokens per expert [E])``."""
        x_ND = x_BTD.reshape(-1, x_BTD.shape[-1])
        w_NK, idx_NK, probs_NE = route(self.gate(x_ND), self.top_k, self.router, self.e_score_correction_bias)
        y_ND = moe_experts(x_ND, w_NK.to(x_ND.dtype), idx_NK, self.gate_up, self.down)
        aux = load_balance_loss(probs_NE, idx_NK, self.num_experts)
        return y_ND.view_as(x_BTD), aux, expert_counts(idx_NK, self.num_experts)


class DecoderLayer(nn.Module):
    """``x = norm(h); h = r·α + attn(x)·β`` then the same around the MoE, where the residual ``r`` is the
    normed ``x`` (Text-01 post-norm / DeepNorm) or the raw ``h`` (pre-norm; M2 with α = β = 1)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = cfg.layer_types[layer_idx]
        self.postnorm = cfg.postnorm
        if self.layer_type == LINEAR:
            self.self_attn = LightningAttention(cfg, layer_idx)
            self.attn_alpha, self.attn_beta = cfg.linear_attn_alpha, cfg.linear_attn_beta
        else:
            assert self.layer_type == FULL
            self.self_attn = SoftmaxAttention(cfg, layer_idx)
            self.attn_alpha, self.attn_beta = cfg.full_attn_alpha, cfg.full_attn_beta
        self.mlp_alpha, self.mlp_beta = cfg.mlp_alpha, cfg.mlp_beta
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.block_sparse_moe = MoE(cfg)

    def forward(self, h_BTD, *, cache=None, cu_seqlens=None, positions=None):
        x = self.input_layernorm(h_BTD)
        r = x if self.postnorm else h_BTD
        a = self.self_attn(x, cache=cache, cu_seqlens=cu_seqlens, positions=positions)
        h_BTD = r * self.attn_alpha + a * self.attn_beta
        x = self.post_attention_layernorm(h_BTD)
        r = x if self.postnorm else h_BTD
        m, aux, counts = self.block_sparse_moe(x)
        return r * self.mlp_alpha + m * self.mlp_beta, aux, counts
