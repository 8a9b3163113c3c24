"""The MiniMax causal language model, reading top to bottom: embed → decoder layers → norm → LM head.

One class serves both families (Text-01/M1 hybrid lightning + softmax, M2 full attention); the config picks the
layer types, residual and router. The model is single-device: parallelism wraps it from outside.

Letters: B batch, T time, D hidden, V vocab, L layers, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from xinzhou.configs.model import LINEAR, ModelConfig
from xinzhou.model.cache import CacheLike, HybridCache
from xinzhou.model.layers import DecoderLayer, MoE, RMSNorm


@dataclass
class ModelOutput:
    """``logits [B, T, V]`` (fp32 with ``fp32_lm_head``); ``aux_loss``: mean over layers of the MoE load-balance
    loss (unscaled: multiply by ``router_aux_loss_coef``); ``expert_counts [L, E]`` tokens routed per expert;
    ``loss``: mean next-token cross-entropy over labels != -100 (when labels were given), aux loss not included."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor
    loss: torch.Tensor | None = None
    cache: CacheLike | None = None


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """Positions that restart at 0 at each packed sequence start, ``[1, T]``."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = cu_seqlens[:-1].long().repeat_interleave(lens, output_size=T)
    return (torch.arange(T, device=cu_seqlens.device) - starts)[None]


class Model(nn.Module):
    """A MiniMax-style MoE causal LM. ``model(input_ids, cache=...)`` → :class:`ModelOutput`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Normal(0, initializer_range) for projections, embeddings, routers and experts; ones for norms."""
        gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or ".q_norm." in name or ".k_norm." in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
        for m in self.modules():
            if isinstance(m, MoE) and m.e_score_correction_bias is not None:
                m.e_score_correction_bias.zero_()

    def new_cache(self, batch_size: int) -> HybridCache:
        return HybridCache(self.config, batch_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: CacheLike | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run the model.

        Args:
            input_ids: ``[B, T]`` token ids in ``[0, vocab_size)``.
            cache: a :class:`HybridCache` (or any :class:`CacheLike`) to continue from and update (inference);
                positions then come from ``cache.positions``.
            position_ids: ``[B, T]`` RoPE positions (default: ``arange``, restarting per packed sequence).
            cu_seqlens: ``[N+1]`` offsets of packed documents in a ``[1, T]`` row: lightning state resets and
                softmax attention is masked at every document start.
            labels: ``[B, T]`` next-token targets already aligned to each position (-100 = ignored).
        """
        B, T = self._check_ids(input_ids)
        if cu_seqlens is not None and cache is not None:
            raise ValueError("cu_seqlens (packed training input) cannot be combined with a cache")
        if position_ids is None:
            if cu_seqlens is not None:
                position_ids = positions_from_cu_seqlens(cu_seqlens.to(input_ids.device), T)
            elif cache is not None:
                position_ids = cache.positions(T, input_ids.device)
            else:
                position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        h = self.embed_tokens(input_ids)
        auxes, counts = [], []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                h, aux, cnt = checkpoint(layer, h, cu_seqlens=cu_seqlens, positions=position_ids,
                                         use_reentrant=False)
            else:
                h, aux, cnt = layer(h, cache=cache, cu_seqlens=cu_seqlens, positions=position_ids)
            auxes.append(aux)
            counts.append(cnt)
        if cache is not None:
            cache.advance(T)
        h = self.norm(h)
        if self.config.fp32_lm_head:
            logits = F.linear(h.float(), self.lm_head.weight.float())
        else:
            logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, aux_loss=torch.stack(auxes).mean(), expert_counts=torch.stack(counts),
                           loss=loss, cache=cache)

    def _check_ids(self, input_ids: torch.Tensor) -> tuple[int, int]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}) (vocab_size); got range "
                                 f"[{lo}, {hi}]")
        return input_ids.shape[0], input_ids.shape[1]

    def count_parameters(self) -> tuple[int, int]:
        """``(total, active_per_token)``. Active counts what one token's forward multiplies through, excluding
        the embedding and LM head (MiniMax's convention: Text-01 456B / 45.9B, M2 ≈230B / ≈10B): attention,
        norms, routers and ``top_k`` of the ``E`` experts in every layer."""
        total = sum(p.numel() for p in self.parameters())
        cfg = self.config
        embed = self.embed_tokens.weight.numel() + (0 if cfg.tie_word_embeddings else self.lm_head.weight.numel())
        expert = sum(m.gate_up.numel() + m.down.numel() for m in self.modules() if isinstance(m, MoE))
        active = total - embed - expert + expert * cfg.num_experts_per_tok // cfg.num_experts
        return total, active

    def cache_bytes(self, dtype: torch.dtype | None = None) -> tuple[int, int]:
        """``(KV bytes per token over all softmax layers, fixed fp32 bytes of all lightning states)`` per sequence."""
        cfg = self.config
        el = torch.empty((), dtype=dtype or self.embed_tokens.weight.dtype).element_size()
        per_token = cfg.num_full_layers * 2 * cfg.num_kv_heads * cfg.head_dim * el
        fixed = cfg.num_linear_layers * cfg.num_heads * cfg.head_dim * cfg.head_dim * 4
        return per_token, fixed

    @property
    def linear_layer_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.config.layer_types) if t == LINEAR]

    def save_pretrained(self, path, **kwargs) -> None:
        """Write a Hugging Face checkpoint (see :func:`xinzhou.model.hf.save_pretrained`)."""
        from xinzhou.model.hf import save_pretrained  # noqa: PLC0415

        save_pretrained(self, path, **kwargs)
