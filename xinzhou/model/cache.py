"""The hybrid inference cache: a fixed-size fp32 state per lightning layer and a growing KV buffer per softmax
layer, so prefill-then-decode equals one full forward.

Lightning layers keep ``[B, H, K, V]`` fp32 whatever the context length — the architecture's point. Softmax
layers append keys/values into a buffer whose capacity doubles, so decoding T tokens costs O(T) copies, not
O(T²). ``seq_len`` counts the tokens already seen; the model derives RoPE positions from it (transformers'
``MiniMaxCache.get_seq_length()`` returns 0 when layer 0 is a lightning layer, which misplaces continuations).

Letters: B batch, T time, G key/value heads, K head dim, H heads.
"""

from __future__ import annotations

from typing import Protocol

import torch

from xinzhou.configs.model import LINEAR, ModelConfig


class CacheLike(Protocol):
    """What the model needs from a cache. :class:`HybridCache` holds a batch of equally long sequences; the
    engine's cache manager implements the same protocol over slots of different lengths (ragged decode)."""

    def positions(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """``[B, T]`` RoPE positions of the next ``num_tokens`` tokens of every row."""

    def get_state(self, layer: int) -> torch.Tensor | None:
        """``[B, H, K, V]`` fp32 lightning state of a lightning layer (None before the first token)."""

    def set_state(self, layer: int, state_BHKV: torch.Tensor) -> None: ...

    def append_kv(
        self, layer: int, k_BTGK: torch.Tensor, v_BTGK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store new keys/values; return all keys/values ``[B, Tk, G, K]`` and per-row valid lengths ``[B]``
        (None when every row is full, i.e. no right padding)."""

    def advance(self, num_tokens: int) -> None:
        """Called once per forward, after all layers, to commit ``num_tokens`` new positions."""


class HybridCache:
    """Per-layer inference state for a batch of equally long sequences."""

    def __init__(self, config: ModelConfig, batch_size: int) -> None:
        self.config = config
        self.batch_size = batch_size
        self.layer_types = config.layer_types
        self.seq_len = 0
        self._state: dict[int, torch.Tensor] = {}
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}

    # lightning layers -------------------------------------------------------------------------------
    def positions(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(self.seq_len, self.seq_len + num_tokens, device=device)
        return pos[None].expand(self.batch_size, num_tokens)

    def get_state(self, layer: int) -> torch.Tensor | None:
        return self._state.get(layer)

    def set_state(self, layer: int, state_BHKV: torch.Tensor) -> None:
        assert self.layer_types[layer] == LINEAR and state_BHKV.dtype in (torch.float32, torch.float64)
        self._state[layer] = state_BHKV

    # softmax layers ---------------------------------------------------------------------------------
    def append_kv(self, layer: int, k_BTGK: torch.Tensor, v_BTGK: torch.Tensor):
        """Append new keys/values after ``seq_len`` and return all keys/values so far (views), no padding."""
        T = k_BTGK.shape[1]
        end = self.seq_len + T
        buf_k = self._k.get(layer)
        if buf_k is None or buf_k.shape[1] < end:
            cap = max(end, 2 * (buf_k.shape[1] if buf_k is not None else 0), 16)
            new_k = k_BTGK.new_empty(k_BTGK.shape[0], cap, *k_BTGK.shape[2:])
            new_v = v_BTGK.new_empty(v_BTGK.shape[0], cap, *v_BTGK.shape[2:])
            if buf_k is not None:
                new_k[:, : self.seq_len] = buf_k[:, : self.seq_len]
                new_v[:, : self.seq_len] = self._v[layer][:, : self.seq_len]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, self.seq_len : end] = k_BTGK
        self._v[layer][:, self.seq_len : end] = v_BTGK
        return self._k[layer][:, :end], self._v[layer][:, :end], None

    def advance(self, num_tokens: int) -> None:
        """Commit ``num_tokens`` new positions (the model calls this after each forward)."""
        self.seq_len += num_tokens

    # accounting -------------------------------------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Bytes in use: fixed lightning states and the used part of the KV buffers (``capacity`` is allocated)."""
        state = sum(t.numel() * t.element_size() for t in self._state.values())
        kv_used = sum(2 * t[:, : self.seq_len].numel() * t.element_size() for t in self._k.values())
        kv_cap = sum(2 * t.numel() * t.element_size() for t in self._k.values())
        return {"lightning_state": state, "kv": kv_used, "kv_capacity": kv_cap, "total": state + kv_used}

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (beam search, dropping finished rows)."""
        for d in (self._state, self._k, self._v):
            for layer, t in d.items():
                d[layer] = t.index_select(0, index.to(t.device))
        self.batch_size = int(index.numel())
