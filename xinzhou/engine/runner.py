"""Running the model on the engine's slots: prefill chunks through the model's own layers, and a lean decode step.

Why a separate decode step: on CPU, and for small models anywhere, decoding one token is bound by per-operation
overhead and by reading the weights, not by arithmetic. ``Model.forward`` is written for clarity and training
(aux losses, generic masks, a cache protocol call per layer); the decode step here computes the same function
for one new token per sequence with about 40% fewer operations: the lightning state is updated in place in its
slot (``S ← λ S + kᵀ v`` as one multiply and one batched outer product), grouped-query heads attend as extra
query rows (no key/value repetition), RoPE tables and the padding mask are built once per step, one sequence's
experts are a short loop with no sorting, and only the last position goes through the LM head. Weights can be
re-laid out input-major (:func:`input_major_`), the layout CPU BLAS streams fastest in matrix-vector products.
``EngineConfig(decode_impl="model")`` runs ``Model``'s layers instead; the tests hold the two together.

Letters: B rows, T time, D hidden, H heads, G key/value heads, R query heads per key/value head, K head dim,
V vocabulary, S slots, L keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xinzhou.configs.model import LINEAR
from xinzhou.engine.cache_manager import CacheManager
from xinzhou.model.layers import RMSNorm, apply_partial_rope, rope_cos_sin
from xinzhou.model.model import Model
from xinzhou.ops.moe import moe_experts, route


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _rms(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """:class:`RMSNorm` with no conversions for fp32 (bit-identical; fewer dispatches than ``F.rms_norm``)."""
    x32 = _f32(x)
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps) * _f32(norm.weight)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def input_major_(model: Model) -> None:
    """Store the projection, expert and LM-head weights input-major, in place: the same values and shapes with
    transposed strides (``W`` becomes a view of a contiguous ``Wᵀ``). A one-token product ``x Wᵀ`` then streams
    ``Wᵀ`` row by row, which CPU BLAS does about 1.3-2x faster than the output-major layout, and decoding is bound
    by exactly these reads. Checkpoint export is unaffected (``state_dict_to_hf`` makes tensors contiguous)."""
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("embed_tokens") or (tied and name.startswith("lm_head")) or ".gate." in name:
                continue  # embedding rows are gathered, not multiplied; routers are tiny
            if p.dim() == 2 and p.is_contiguous():
                p.data = p.data.t().contiguous().t()
            elif p.dim() == 3 and p.is_contiguous():
                p.data = p.data.transpose(1, 2).contiguous().transpose(1, 2)


class ModelRunner:
    """Forward passes over cache slots; every method returns fp32 next-token logits ``[B, V]``."""

    def __init__(self, model: Model, cache: CacheManager, decode_impl: str = "fast",
                 input_major: bool = False) -> None:
        self.model, self.cache, self.decode_impl = model, cache, decode_impl
        if input_major:
            input_major_(model)
        cfg = model.config
        self.full_layers = [i for i, t in enumerate(cfg.layer_types) if t != LINEAR]
        self._decay: dict[int, torch.Tensor] = {}
        self._arange = torch.arange(cache.max_slots, device=cache.device)

    def _head(self, h_BD: torch.Tensor) -> torch.Tensor:
        m = self.model
        h_BD = _rms(h_BD, m.norm)
        if m.config.fp32_lm_head:
            return F.linear(h_BD.float(), m.lm_head.weight.float())
        return m.lm_head(h_BD).float()

    def prefill(self, ids_BT: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Compute ``T`` new tokens for each slot (equal ``T``, any cached lengths); logits at the last one."""
        view = self.cache.view(slots)
        T = ids_BT.shape[1]
        pos_BT = view.positions(T, ids_BT.device)
        h = self.model.embed_tokens(ids_BT)
        for layer in self.model.layers:
            h, _, _ = layer(h, cache=view, positions=pos_BT)
        view.advance(T)
        return self._head(h[:, -1])

    def decode(self, ids_B: torch.Tensor) -> torch.Tensor:
        """One new token for each of slots ``0..B-1``."""
        B = ids_B.shape[0]
        if self.decode_impl == "model":
            return self.prefill(ids_B[:, None], list(range(B)))
        return self._decode_fast(ids_B)

    # ------------------------------------------------------------------------------------- fast decode
    def _decode_fast(self, ids_B: torch.Tensor) -> torch.Tensor:
        m, cache, cfg = self.model, self.cache, self.model.config
        B = ids_B.shape[0]
        lens = cache.lengths[:B]
        pos_B = cache.lengths_t[:B]
        end = max(lens) + 1
        ctx = None
        if self.full_layers:
            cos, sin = rope_cos_sin(pos_B[:, None], cfg.rotary_dim, cfg.rope_theta)
            mask = None
            if min(lens) != max(lens):  # right padding: row b sees its first lens[b] + 1 keys
                mask = (torch.arange(end, device=ids_B.device) <= pos_B[:, None]).view(B, 1, 1, end)
            ctx = (cos, sin, mask, end)
        h = F.embedding(ids_B, m.embed_tokens.weight)
        for i, layer in enumerate(m.layers):
            x = _rms(h, layer.input_layernorm)
            if layer.layer_type == LINEAR:
                a = self._lightning(i, layer.self_attn, x)
            else:
                a = self._softmax(i, layer.self_attn, x, pos_B, ctx)
            h = _residual(x if layer.postnorm else h, layer.attn_alpha, a, layer.attn_beta)
            x = _rms(h, layer.post_attention_layernorm)
            h = _residual(x if layer.postnorm else h, layer.mlp_alpha, self._moe(layer.block_sparse_moe, x),
                          layer.mlp_beta)
        cache.advance_prefix(B)
        return self._head(h)

    def _lightning(self, i: int, attn, x_BD: torch.Tensor) -> torch.Tensor:
        B, H, K = x_BD.shape[0], attn.H, attn.K
        decay = self._decay.get(i)
        if decay is None:
            decay = self._decay[i] = torch.exp(-attn.slope.float().to(x_BD.device)).view(1, H, 1, 1)
        qkv_BHX = _f32(F.silu(F.linear(x_BD, attn.qkv_proj.weight))).view(B * H, 3 * K)
        q, k, v = qkv_BHX.split(K, dim=-1)
        state_BHKV = self.cache.state(i)[:B]
        state_BHKV.mul_(decay)  # S ← λ S + kᵀ v, in place in the slots
        s_NKV = state_BHKV.view(B * H, K, K)
        s_NKV.baddbmm_(k[:, :, None], v[:, None, :])
        o_BD = torch.bmm(q[:, None, :], s_NKV).view(B, H * K)
        o_BD = o_BD if o_BD.dtype == x_BD.dtype else o_BD.to(x_BD.dtype)
        gate_BD = torch.sigmoid(F.linear(x_BD, attn.output_gate.weight))
        return F.linear(gate_BD * _rms(o_BD, attn.norm), attn.out_proj.weight)

    def _softmax(self, i: int, attn, x_BD: torch.Tensor, pos_B: torch.Tensor, ctx) -> torch.Tensor:
        cos, sin, mask, end = ctx
        B, H, G, K = x_BD.shape[0], attn.H, attn.G, attn.K
        q, k = F.linear(x_BD, attn.q_proj.weight), F.linear(x_BD, attn.k_proj.weight)
        v = F.linear(x_BD, attn.v_proj.weight)
        if attn.q_norm is not None:
            q, k = _rms(q, attn.q_norm), _rms(k, attn.k_norm)
        q_B1HK = apply_partial_rope(q.view(B, 1, H, K), cos, sin)
        k_B1GK = apply_partial_rope(k.view(B, 1, G, K), cos, sin)
        kv = self.cache.kv(i)
        rows = self._arange[:B]
        kv[0].index_put_((rows, pos_B), k_B1GK[:, 0])
        kv[1].index_put_((rows, pos_B), v.view(B, G, K))
        k_BGLK = kv[0, :B, :end].transpose(1, 2)
        v_BGLK = kv[1, :B, :end].transpose(1, 2)
        # the R query heads sharing a key/value head attend as R query rows: no key/value repetition
        q_BGRK = q_B1HK.view(B, G, H // G, K)
        o_BGRK = F.scaled_dot_product_attention(q_BGRK, k_BGLK, v_BGLK, attn_mask=mask)
        return F.linear(o_BGRK.reshape(B, H * K), attn.o_proj.weight)

    def _moe(self, moe, x_BD: torch.Tensor) -> torch.Tensor:
        logits_BE = F.linear(x_BD, moe.gate.weight)
        if moe.router == "softmax":  # softmax of the top-k logits = renormalised top-k of the softmax
            top_BK, idx_BK = torch.topk(_f32(logits_BE), moe.top_k, dim=-1)
            w_BK = torch.softmax(top_BK, dim=-1)
        else:
            w_BK, idx_BK, _ = route(logits_BE, moe.top_k, moe.router, moe.e_score_correction_bias)
        if x_BD.shape[0] > 1:
            return moe_experts(x_BD, w_BK.to(x_BD.dtype), idx_BK, moe.gate_up, moe.down)
        out = None
        for e, w in zip(idx_BK[0].tolist(), w_BK[0].tolist()):  # one token: its top-k experts, no sorting
            gate_1F, up_1F = F.linear(x_BD, moe.gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate_1F) * up_1F, moe.down[e])
            out = y.mul_(w) if out is None else out.add_(y, alpha=w)
        return out


def _residual(r: torch.Tensor, alpha: float, a: torch.Tensor, beta: float) -> torch.Tensor:
    """``r·α + a·β`` with as few operations as the constants allow."""
    if alpha == 1.0:
        return torch.add(r, a, alpha=beta) if beta != 1.0 else r + a
    return torch.add(r * alpha, a, alpha=beta)
