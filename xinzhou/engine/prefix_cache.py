"""State reuse for append-only conversations: finished sequences leave their state behind, and a new request
that starts with the same tokens restarts from it instead of prefilling the shared prefix again.

Why checkpoints: a softmax layer's keys/values for the first ``p`` tokens are simply the first ``p`` rows of a
longer buffer, but a lightning layer's state exists only at the positions where it was saved. An entry therefore
keeps one key/value buffer for its whole token sequence plus lightning-state *checkpoints* at a few positions
(the end of the prompt and the end of the sequence, each with the next-token logits there, so a request that
exactly equals a checkpoint needs no forward at all). The next turn of a chat or agent loop extends the previous
sequence; if its re-tokenised text differs from the sampled ids after some point, the end-of-prompt checkpoint
still matches and only the rest is prefilled.

Entries whose tokens are a prefix of a newer entry are merged into it, so a growing conversation holds one
key/value buffer. Memory is bounded by ``max_bytes``; the least recently used entries are evicted first.

Letters: L layers (lightning or softmax), N tokens, G key/value heads, K head dim, H heads, V vocabulary.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class Checkpoint:
    """The lightning states after ``pos`` tokens (``[L_lin, H, K, V]`` fp32) and the next-token logits ``[V]``."""

    pos: int
    state: torch.Tensor
    logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.state.numel() * self.state.element_size() + self.logits.numel() * self.logits.element_size()


@dataclass
class Entry:
    tokens: torch.Tensor  # [N] int64, the tokens the key/values cover
    kv: torch.Tensor | None  # [L_full, 2, N, G, K] or None without softmax layers
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        kv = 0 if self.kv is None else self.kv.numel() * self.kv.element_size()
        return kv + sum(c.nbytes for c in self.checkpoints.values()) + self.tokens.numel() * 8


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D integer tensors."""
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


class PrefixCache:
    """LRU store of finished sequences' states, keyed by their token ids."""

    def __init__(self, max_bytes: int, max_checkpoints: int = 4) -> None:
        self.max_bytes, self.max_checkpoints = max_bytes, max_checkpoints
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._next_id = 0
        self.hits = self.misses = self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def lookup(self, ids: list[int]) -> tuple[Entry, Checkpoint] | None:
        """The entry and checkpoint that cover the longest prefix of ``ids`` (at most all of them), or None."""
        if not self._entries:
            self.misses += 1
            return None
        ids_t = torch.tensor(ids, dtype=torch.long)
        best: tuple[int, int, Checkpoint] | None = None
        for key, e in self._entries.items():
            n = common_prefix(e.tokens, ids_t)
            usable = [c for p, c in e.checkpoints.items() if p <= n and p > 0]
            if usable:
                c = max(usable, key=lambda c: c.pos)
                if best is None or c.pos > best[2].pos:
                    best = (key, n, c)
        if best is None:
            self.misses += 1
            return None
        self._entries.move_to_end(best[0])
        self.hits += 1
        self.reused_tokens += best[2].pos
        return self._entries[best[0]], best[2]

    def insert(self, tokens: list[int], kv: torch.Tensor | None, checkpoints: list[Checkpoint]) -> None:
        """Store a finished sequence: ``kv`` covers ``tokens``; checkpoints at positions ``<= len(tokens)``."""
        if self.max_bytes <= 0 or not checkpoints:
            return
        new = Entry(torch.tensor(tokens, dtype=torch.long), kv, {c.pos: c for c in checkpoints})
        n = len(tokens)
        for key in list(self._entries):
            e = self._entries[key]
            m = e.tokens.numel()
            shared = common_prefix(e.tokens, new.tokens)
            if shared == m <= n:  # an older, shorter turn of this conversation: fold it in
                for p, c in e.checkpoints.items():
                    new.checkpoints.setdefault(p, c)
                del self._entries[key]
            elif shared == n < m:  # the new one is a prefix of a longer entry: add its checkpoints there
                for c in checkpoints:
                    e.checkpoints.setdefault(c.pos, c)
                self._trim(e)
                self._entries.move_to_end(key)
                self._evict()
                return
        self._trim(new)
        if new.nbytes > self.max_bytes:
            return
        self._entries[self._next_id] = new
        self._next_id += 1
        self._evict()

    def _trim(self, e: Entry) -> None:
        keep = sorted(e.checkpoints, reverse=True)[: self.max_checkpoints]
        e.checkpoints = {p: e.checkpoints[p] for p in sorted(keep)}

    def _evict(self) -> None:
        total = self.nbytes
        while total > self.max_bytes and self._entries:
            _, e = self._entries.popitem(last=False)
            total -= e.nbytes

    def clear(self) -> None:
        self._entries.clear()
