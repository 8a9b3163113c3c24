"""Analytic FLOP counts of a forward pass, for "achieved FLOP/s" figures in benchmarks and training logs.

Counts the multiply-adds a token's forward needs (×2 for FLOPs): every projection, ``top_k`` experts and the
router, the LM head; causal softmax attention as ``T·(T+1)/2`` query-key pairs per head (×2 matmuls); lightning
attention as its recurrent form, ``2·K·V`` multiply-adds per token per head (state update and read-out), which
is what any implementation must at least do. Elementwise work (norms, activations, softmax) is not counted,
as is customary. A backward pass costs about twice the forward.
"""

from __future__ import annotations

from xinzhou.configs.model import LINEAR, ModelConfig


def forward_flops(cfg: ModelConfig, seq_len: int, batch: int = 1, context: int = 0) -> float:
    """FLOPs of one forward over ``batch`` sequences of ``seq_len`` new tokens after ``context`` cached ones."""
    D, H, G, K = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    T = seq_len
    macs_tok = 0.0
    attn_macs = 0.0
    for t in cfg.layer_types:
        if t == LINEAR:
            macs_tok += D * 3 * H * K + D * H * K + H * K * D  # qkv, output gate, out_proj
            macs_tok += H * 2 * K * K  # recurrent state update + read-out
        else:
            macs_tok += D * H * K + 2 * D * G * K + H * K * D  # q, k, v, o
            pairs = T * context + T * (T + 1) / 2  # causal (query, key) pairs per head
            attn_macs += H * pairs * 2 * K
        macs_tok += D * cfg.num_experts  # router
        macs_tok += cfg.num_experts_per_tok * 3 * D * cfg.moe_intermediate_size
    macs_tok += D * cfg.vocab_size  # LM head
    return 2.0 * batch * (macs_tok * T + attn_macs)
