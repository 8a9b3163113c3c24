"""Which sequences run in the next step: continuous batching with chunked prefill.

Every step (1) admits waiting requests into free cache slots, restoring a cached prefix when one matches,
(2) picks one prefill group: sequences with several uncomputed tokens, each advancing by the same chunk of ``T``
tokens, at most ``max_prefill_tokens`` in all, and (3) decodes every sequence that has exactly one uncomputed
token (its last sample). Sequences join and leave the decode batch at every step; a long prompt advances one
chunk per step, so it delays running decodes by one chunk's compute, never by its whole length.

The decode batch is kept in cache slots ``0..B-1`` (``decoding[i].slot == i``), so the decode step reads slot
buffers through slices; a sequence moves into place when it starts decoding, and the last decoder moves into
the hole a finished one leaves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from xinzhou.engine.cache_manager import CacheManager
from xinzhou.engine.params import EngineConfig
from xinzhou.engine.prefix_cache import PrefixCache
from xinzhou.engine.sequence import Sequence, Status


@dataclass
class Plan:
    """One step's work: restored sequences to sample without a forward (``ready``), a prefill group advancing
    ``chunk`` tokens each, and the decode batch (slots ``0..len(decode)-1``)."""

    ready: list[Sequence] = field(default_factory=list)
    prefill: list[Sequence] = field(default_factory=list)
    chunk: int = 0
    decode: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, cache: CacheManager, prefix: PrefixCache, config: EngineConfig) -> None:
        self.cache, self.prefix, self.config = cache, prefix, config
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []  # in a slot, several tokens (or a restored sample) pending
        self.decoding: list[Sequence] = []  # decoding[i] is in slot i

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def schedule(self) -> Plan:
        self._admit()
        for seq in [s for s in self.prefilling if s.num_uncomputed == 1]:
            self.promote(seq)
        plan = Plan(ready=[s for s in self.prefilling if s.num_uncomputed == 0], decode=list(self.decoding))
        candidates = [s for s in self.prefilling if s.num_uncomputed > 1]
        if candidates:
            T = min(self.config.prefill_chunk_size, candidates[0].num_uncomputed)
            rows = max(1, self.config.max_prefill_tokens // T)
            plan.prefill = [s for s in candidates if s.num_uncomputed >= T][:rows]
            plan.chunk = T
        return plan

    def _admit(self) -> None:
        while self.waiting and len(self.prefilling) + len(self.decoding) < self.config.max_num_seqs:
            seq = self.waiting.popleft()
            seq.slot = self.cache.allocate()
            seq.status = Status.RUNNING
            self._restore(seq)
            self.prefilling.append(seq)

    def _restore(self, seq: Sequence) -> None:
        if self.prefix.max_bytes <= 0:
            return
        hit = self.prefix.lookup(seq.token_ids)
        if hit is None:
            return
        entry, cp = hit
        self.cache.write(seq.slot, cp.state, entry.kv, cp.pos)
        seq.num_computed = seq.num_cached_tokens = cp.pos
        if cp.pos == len(seq.token_ids):
            seq.pending_logits = cp.logits

    def promote(self, seq: Sequence) -> None:
        """Move a sequence into the decode batch (slot ``len(decoding)``)."""
        target = len(self.decoding)
        if seq.slot != target:
            other = next((s for s in self.prefilling if s.slot == target), None)
            if other is None:
                self.cache.move(seq.slot, target)
            else:
                self.cache.swap(seq.slot, target)
                other.slot = seq.slot
            seq.slot = target
        self.prefilling.remove(seq)
        self.decoding.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its slot, keeping decoders in ``0..B-1``."""
        if seq.status == Status.WAITING:
            self.waiting.remove(seq)
            return
        if any(s is seq for s in self.prefilling):
            self.prefilling.remove(seq)
            self.cache.release(seq.slot)
            return
        i = seq.slot
        assert self.decoding[i] is seq
        self.cache.release(seq.slot)
        last = self.decoding.pop()
        if last is not seq:
            self.cache.move(last.slot, i)
            last.slot = i
            self.decoding[i] = last
