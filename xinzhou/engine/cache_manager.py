"""Per-sequence inference state held in numbered slots: a fixed-size fp32 state per lightning layer and a growing
key/value buffer per softmax layer, for sequences of different lengths in one batch.

Why slots and not one :class:`~xinzhou.model.cache.HybridCache` per batch: with continuous batching, sequences join
and leave at every step and each has its own length. A slot keeps one sequence's state for its whole life; the
lightning part never grows (the architecture's point), the softmax part is a row of a right-padded buffer whose
capacity doubles when the longest sequence outgrows it.

The engine keeps decoding sequences in slots ``0..B-1`` so a decode step reads the buffers through plain slices
(no gather of the whole KV history per step); :meth:`CacheManager.move` and :meth:`CacheManager.swap` keep it so.
:class:`SlotView` implements the model's :class:`~xinzhou.model.cache.CacheLike` protocol over any set of slots,
so ``Model``'s own layers can run prefill chunks (and the reference decode) on the same storage.

Letters: S slots, C capacity (tokens), G key/value heads, K head dim, V value dim (= K), H heads, L layers.
"""

from __future__ import annotations

import torch

from xinzhou.configs.model import FULL, LINEAR, ModelConfig


class CacheManager:
    """Slot storage. ``state[j]`` is ``[S, H, K, V]`` fp32 for the j-th lightning layer; ``kv[j]`` is
    ``[2, S, C, G, K]`` (keys, values) for the j-th softmax layer; ``lengths[s]`` counts the tokens of slot ``s``."""

    def __init__(self, config: ModelConfig, *, max_slots: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.max_slots, self.dtype, self.device = config, max_slots, dtype, torch.device(device)
        self.linear_index = {l: j for j, l in enumerate(i for i, t in enumerate(config.layer_types) if t == LINEAR)}
        self.full_index = {l: j for j, l in enumerate(i for i, t in enumerate(config.layer_types) if t == FULL)}
        H, G, K = config.num_heads, config.num_kv_heads, config.head_dim
        self._state_LSHKV = torch.zeros(len(self.linear_index), 0, H, K, K, dtype=torch.float32, device=self.device)
        self._kv_L2SCGK = torch.zeros(len(self.full_index), 2, 0, 0, G, K, dtype=dtype, device=self.device)
        self.lengths: list[int] = []
        self.lengths_t = torch.zeros(0, dtype=torch.long, device=self.device)
        self._free: list[int] = []
        self._used: set[int] = set()

    # ---------------------------------------------------------------------------------------------- slots
    @property
    def num_slots(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self._kv_L2SCGK.shape[3]

    def allocate(self) -> int:
        """A free slot (the lowest), zeroed; raises ``RuntimeError`` when all ``max_slots`` are in use."""
        if not self._free:
            n = self.num_slots
            if n >= self.max_slots:
                raise RuntimeError(f"all {self.max_slots} cache slots are in use")
            self._grow(slots=min(self.max_slots, max(2 * n, 1)))
        slot = min(self._free)
        self._free.remove(slot)
        self._used.add(slot)
        self._state_LSHKV[:, slot].zero_()
        self._set_length(slot, 0)
        return slot

    def release(self, slot: int) -> None:
        assert slot in self._used, f"slot {slot} is not in use"
        self._used.remove(slot)
        self._free.append(slot)
        self._set_length(slot, 0)

    @property
    def num_free(self) -> int:
        return self.max_slots - len(self._used)

    def reserve(self, num_tokens: int) -> None:
        """Make every slot able to hold ``num_tokens`` tokens (capacity doubles, so growth is amortised O(1))."""
        if self.full_index and num_tokens > self.capacity:
            self._grow(capacity=max(num_tokens, 2 * self.capacity, 16))

    def _grow(self, *, slots: int | None = None, capacity: int | None = None) -> None:
        S, C = self.num_slots, self.capacity
        S2, C2 = slots or S, capacity or C
        if S2 > S:
            state = self._state_LSHKV.new_zeros(self._state_LSHKV.shape[0], S2, *self._state_LSHKV.shape[2:])
            state[:, :S] = self._state_LSHKV
            self._state_LSHKV = state
            self._free.extend(range(S, S2))
            self.lengths.extend([0] * (S2 - S))
            self.lengths_t = torch.cat([self.lengths_t, self.lengths_t.new_zeros(S2 - S)])
        if self.full_index and (S2 > S or C2 > C):
            kv = self._kv_L2SCGK.new_zeros(self._kv_L2SCGK.shape[0], 2, S2, C2, *self._kv_L2SCGK.shape[4:])
            kv[:, :, :S, :C] = self._kv_L2SCGK
            self._kv_L2SCGK = kv

    def _set_length(self, slot: int, n: int) -> None:
        self.lengths[slot] = n
        self.lengths_t[slot] = n

    # --------------------------------------------------------------------------------------- tensors
    def state(self, layer: int) -> torch.Tensor:
        """``[S, H, K, V]`` fp32 state buffer of lightning layer ``layer`` (a view: write through it)."""
        return self._state_LSHKV[self.linear_index[layer]]

    def kv(self, layer: int) -> torch.Tensor:
        """``[2, S, C, G, K]`` key/value buffer of softmax layer ``layer`` (a view)."""
        return self._kv_L2SCGK[self.full_index[layer]]

    def advance(self, slots: list[int], num_tokens: int) -> None:
        for s in slots:
            self.lengths[s] += num_tokens
        if len(slots) == 1:
            self.lengths_t[slots[0]] += num_tokens
        else:
            self.lengths_t[_index(slots, self.device)] += num_tokens

    def advance_prefix(self, num_slots: int) -> None:
        """One decode step of slots ``0..num_slots-1``."""
        for s in range(num_slots):
            self.lengths[s] += 1
        self.lengths_t[:num_slots] += 1

    # ------------------------------------------------------------------------------ moving and copying
    def move(self, src: int, dst: int) -> None:
        """Move slot ``src``'s contents into the free slot ``dst``; ``src`` becomes free."""
        assert src in self._used and dst not in self._used
        self._free.remove(dst)
        self._used.add(dst)
        n = self.lengths[src]
        self._state_LSHKV[:, dst] = self._state_LSHKV[:, src]
        if self.full_index and n:
            self._kv_L2SCGK[:, :, dst, :n] = self._kv_L2SCGK[:, :, src, :n]
        self._set_length(dst, n)
        self.release(src)

    def swap(self, a: int, b: int) -> None:
        """Exchange the contents of two used slots."""
        if a == b:
            return
        na, nb = self.lengths[a], self.lengths[b]
        self._state_LSHKV[:, [a, b]] = self._state_LSHKV[:, [b, a]]
        n = max(na, nb)
        if self.full_index and n:
            self._kv_L2SCGK[:, :, [a, b], :n] = self._kv_L2SCGK[:, :, [b, a], :n]
        self._set_length(a, nb)
        self._set_length(b, na)

    def read(self, slot: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Copies of a slot's state ``[L_lin, H, K, V]`` and keys/values ``[L_full, 2, n, G, K]`` (or None)."""
        n = self.lengths[slot]
        kv = self._kv_L2SCGK[:, :, slot, :n].clone() if self.full_index else None
        return self._state_LSHKV[:, slot].clone(), kv

    def read_state(self, slot: int) -> torch.Tensor:
        return self._state_LSHKV[:, slot].clone()

    def write(self, slot: int, state_LHKV: torch.Tensor, kv_L2NGK: torch.Tensor | None, n: int) -> None:
        """Load ``n`` tokens of saved state into ``slot`` (the first ``n`` positions of ``kv``)."""
        self.reserve(n)
        self._state_LSHKV[:, slot] = state_LHKV
        if self.full_index and n:
            self._kv_L2SCGK[:, :, slot, :n] = kv_L2NGK[:, :, :n]
        self._set_length(slot, n)

    # -------------------------------------------------------------------------------------- accounting
    def bytes_per_token(self) -> int:
        """Softmax KV bytes one token adds to a sequence (all softmax layers)."""
        return int(self._kv_L2SCGK[:, :, :1, :1].numel()) * self._kv_L2SCGK.element_size()

    def state_bytes(self) -> int:
        """Fixed fp32 lightning-state bytes of one sequence (all lightning layers)."""
        return int(self._state_LSHKV[:, :1].numel()) * 4

    def nbytes(self) -> dict[str, int]:
        """Bytes in use by live sequences (``lightning_state`` fixed per sequence, ``kv`` growing with length) and
        bytes allocated (``allocated``: all slots at the current capacity)."""
        state = len(self._used) * self.state_bytes()
        kv = sum(self.lengths[s] for s in self._used) * self.bytes_per_token()
        allocated = (self._state_LSHKV.numel() * 4 + self._kv_L2SCGK.numel() * self._kv_L2SCGK.element_size())
        return {"lightning_state": state, "kv": kv, "total": state + kv, "allocated": allocated,
                "sequences": len(self._used)}

    def view(self, slots: list[int]) -> SlotView:
        return SlotView(self, slots)


def _index(slots: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(slots, dtype=torch.long, device=device)


class SlotView:
    """The model's ``CacheLike`` protocol over some slots (one row per slot, any lengths).

    Contiguous slots are read through slices; others are gathered and scattered back. Keys of rows shorter than the
    longest are right padding, hidden from attention by the per-row ``kv_lengths`` it returns."""

    def __init__(self, manager: CacheManager, slots: list[int]) -> None:
        self.m, self.slots = manager, slots
        a = slots[0]
        self.rows: slice | torch.Tensor = (slice(a, a + len(slots)) if slots == list(range(a, a + len(slots)))
                                           else _index(slots, manager.device))
        self.start = [manager.lengths[s] for s in slots]
        self.start_t = manager.lengths_t[self.rows].clone()

    def _rows(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[self.rows] if isinstance(self.rows, slice) else buf.index_select(0, self.rows)

    def positions(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        return self.start_t[:, None] + torch.arange(num_tokens, device=device)

    def get_state(self, layer: int) -> torch.Tensor:
        return self._rows(self.m.state(layer))

    def set_state(self, layer: int, state_BHKV: torch.Tensor) -> None:
        buf = self.m.state(layer)
        if isinstance(self.rows, slice):
            buf[self.rows].copy_(state_BHKV)
        else:
            buf.index_copy_(0, self.rows, state_BHKV.to(buf.dtype))

    def append_kv(self, layer: int, k_BTGK: torch.Tensor, v_BTGK: torch.Tensor):
        kv = self.m.kv(layer)
        B, T = k_BTGK.shape[:2]
        end = max(self.start) + T
        assert end <= kv.shape[2], "reserve() capacity before the forward"
        if B == 1:
            s, a = self.slots[0], self.start[0]
            kv[0, s, a : a + T] = k_BTGK[0]
            kv[1, s, a : a + T] = v_BTGK[0]
        else:
            rows_B1 = _index(self.slots, k_BTGK.device)[:, None]
            pos_BT = self.positions(T, k_BTGK.device)
            kv[0].index_put_((rows_B1, pos_BT), k_BTGK)
            kv[1].index_put_((rows_B1, pos_BT), v_BTGK)
        k_all, v_all = self._rows(kv[0, :, :end]), self._rows(kv[1, :, :end])
        ragged = min(self.start) != max(self.start)
        return k_all, v_all, (self.start_t + T if ragged else None)

    def advance(self, num_tokens: int) -> None:
        self.m.advance(self.slots, num_tokens)
