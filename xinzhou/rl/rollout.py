"""The rollout data structures: one episode's tokens (`Trajectory`) and a padded batch of them (`RolloutBatch`).

Why: the engine-driven rollout loop (later) and the trainer must agree on one thing only, this structure.
An episode is prompt tokens, then runs of *sampled* tokens (with the sampler's logprobs) and *forced* tokens
(tool results, the next generation prompt, interruption phrases). Only sampled tokens are trained on, so the loss
mask is exactly "sampled by the policy", and the behaviour logprobs are the sampler's own (ScaleRL's single ratio
against the generator). Invalid samples (the verifier failed) are dropped here with a log line, so the trainer
never sees a reward that is not a number.

Layout: right-padded `[B, T]`; position t holds token t and, for sampled tokens, log π_behaviour(token t).
Letters: B samples, T tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def _relabel(keys: Sequence[Any]) -> Tensor:
    """Group labels 0..n-1 in order of first appearance."""
    order: dict[Any, int] = {}
    return torch.tensor([order.setdefault(k, len(order)) for k in keys], dtype=torch.long)


@dataclass
class Trajectory:
    """One episode, built in order: `add_sampled(ids, logprobs)` for model output, `add_forced(ids)` for the rest.

    `reward=None` marks a sample whose reward could not be computed; `RolloutBatch.from_trajectories` drops it."""

    prompt_ids: list[int]
    group_id: int
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # per completion token; 0.0 for forced tokens
    sampled: list[bool] = field(default_factory=list)
    reward: float | None = None
    truncated: bool = False  # the episode hit a length or turn limit before the model finished
    info: dict[str, Any] = field(default_factory=dict)

    def add_sampled(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        if len(ids) != len(logprobs):
            raise ValueError(f"{len(ids)} sampled ids but {len(logprobs)} logprobs")
        bad = [lp for lp in logprobs if not (math.isfinite(lp) and lp <= 1e-6)]
        if bad:
            raise ValueError(f"behaviour logprobs must be finite and <= 0, got {bad[:5]}")
        self.completion_ids.extend(ids)
        self.logprobs.extend(float(lp) for lp in logprobs)
        self.sampled.extend([True] * len(ids))

    def add_forced(self, ids: Sequence[int]) -> None:
        self.completion_ids.extend(ids)
        self.logprobs.extend([0.0] * len(ids))
        self.sampled.extend([False] * len(ids))


@dataclass
class RolloutBatch:
    """A right-padded batch of episodes. `loss_mask_BT` is 1 exactly on sampled tokens."""

    input_ids_BT: Tensor  # long: prompt + completion (sampled and forced), padded
    attention_mask_BT: Tensor  # bool: real tokens
    loss_mask_BT: Tensor  # float32: 1 on tokens the policy sampled
    behaviour_logp_BT: Tensor  # float32: the sampler's logprob of each sampled token, 0 elsewhere
    rewards_B: Tensor  # float32
    group_ids_B: Tensor  # long: which prompt (group of G samples) each sample answers
    truncated_B: Tensor  # bool
    advantages_B: Tensor | None = None  # float32, set by `with_advantages`
    info: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        b, t = self.input_ids_BT.shape
        for name, value in self._tensors().items():
            want = (b, t) if name.endswith("_BT") else (b,)
            if tuple(value.shape) != want:
                raise ValueError(f"{name} must be {list(want)}, got {list(value.shape)}")
        if not self.info:
            self.info = [{} for _ in range(b)]

    def __len__(self) -> int:
        return self.input_ids_BT.shape[0]

    @property
    def num_groups(self) -> int:
        return int(torch.unique(self.group_ids_B).numel())

    @property
    def truncation_rate(self) -> float:
        """Fraction of truncated samples; ScaleRL treats >10% as an instability alarm."""
        return float(self.truncated_B.float().mean()) if len(self) else 0.0

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)}

    def to_dict(self) -> dict[str, Any]:
        return {**self._tensors(), "info": self.info}

    def with_advantages(self, advantages_B: Tensor) -> RolloutBatch:
        return dataclasses.replace(self, advantages_B=advantages_B.float())

    def select(self, index: Tensor) -> RolloutBatch:
        """The samples at `index` (a bool mask or integer indices), padding columns kept."""
        idx = index.nonzero().flatten() if index.dtype == torch.bool else index.long()
        tensors = {k: v[idx] for k, v in self._tensors().items()}
        return RolloutBatch(**tensors, info=[self.info[i] for i in idx.tolist()])

    def minibatches(self, k: int, *, generator: torch.Generator | None = None,
                    by_group: bool = False) -> list[RolloutBatch]:
        """Split into `k` near-equal minibatches (one optimiser step each), shuffled when `generator` is given.

        `by_group=True` keeps each prompt's samples together, which prompt-level aggregation needs."""
        units = torch.unique(self.group_ids_B) if by_group else torch.arange(len(self))
        if not 1 <= k <= len(units):
            raise ValueError(f"cannot split {len(units)} {'groups' if by_group else 'samples'} into {k} minibatches")
        if generator is not None:
            units = units[torch.randperm(len(units), generator=generator)]
        out = []
        for chunk in torch.tensor_split(units, k):
            index = torch.isin(self.group_ids_B, chunk) if by_group else chunk
            out.append(self.select(index))
        return out

    @classmethod
    def cat(cls, batches: Sequence[RolloutBatch], pad_id: int = 0) -> RolloutBatch:
        """Concatenate, padding to the longest. Group ids are relabelled 0..n-1 in order of appearance, so groups
        of different batches never merge."""
        if not batches:
            raise ValueError("cat needs at least one batch")
        names = batches[0]._tensors().keys()
        if any(b._tensors().keys() != names for b in batches):
            raise ValueError("cat: either all batches have advantages or none")
        t = max(b.input_ids_BT.shape[1] for b in batches)

        def padded(name: str, v: Tensor) -> Tensor:
            fill = pad_id if name == "input_ids_BT" else 0
            return torch.nn.functional.pad(v, (0, t - v.shape[1]), value=fill) if name.endswith("_BT") else v

        tensors = {k: torch.cat([padded(k, getattr(b, k)) for b in batches]) for k in names}
        tensors["group_ids_B"] = _relabel([(i, g) for i, b in enumerate(batches) for g in b.group_ids_B.tolist()])
        return cls(**tensors, info=[i for b in batches for i in b.info])

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Trajectory], *, pad_id: int = 0,
                          min_group_size: int = 2) -> RolloutBatch:
        """Pad episodes into a batch. Samples with `reward=None` are dropped, then groups left with fewer than
        `min_group_size` samples (both with a warning); an empty result is a ValueError."""
        valid = []
        for tr in trajectories:
            if tr.reward is None or not math.isfinite(tr.reward):
                log.warning("skipping sample of group %s: reward %r (%s)", tr.group_id, tr.reward,
                            tr.info.get("error", "no reward"))
            else:
                valid.append(tr)
        sizes: dict[int, int] = {}
        for tr in valid:
            sizes[tr.group_id] = sizes.get(tr.group_id, 0) + 1
        small = sorted(g for g, n in sizes.items() if n < min_group_size)
        if small:
            log.warning("dropping groups %s: fewer than %d valid samples", small, min_group_size)
        kept = [tr for tr in valid if sizes[tr.group_id] >= min_group_size]
        if not kept:
            raise ValueError(f"no valid samples left out of {len(trajectories)} (see the warnings above)")
        t = max(len(tr.prompt_ids) + len(tr.completion_ids) for tr in kept)
        b = len(kept)
        ids = torch.full((b, t), pad_id, dtype=torch.long)
        attn = torch.zeros(b, t, dtype=torch.bool)
        loss_mask = torch.zeros(b, t)
        logp = torch.zeros(b, t)
        for i, tr in enumerate(kept):
            p, n = len(tr.prompt_ids), len(tr.completion_ids)
            ids[i, : p + n] = torch.tensor(tr.prompt_ids + tr.completion_ids, dtype=torch.long)
            attn[i, : p + n] = True
            loss_mask[i, p : p + n] = torch.tensor(tr.sampled, dtype=torch.float32)
            logp[i, p : p + n] = torch.tensor(tr.logprobs, dtype=torch.float32)
        return cls(
            input_ids_BT=ids,
            attention_mask_BT=attn,
            loss_mask_BT=loss_mask,
            behaviour_logp_BT=logp,
            rewards_B=torch.tensor([tr.reward for tr in kept], dtype=torch.float32),
            group_ids_B=_relabel([tr.group_id for tr in kept]),
            truncated_B=torch.tensor([tr.truncated for tr in kept], dtype=torch.bool),
            info=[dict(tr.info, group_id=tr.group_id) for tr in kept],
        )


class RepetitionGuard:
    """M1's repetition early stop: `update(logprob)` returns True once `run` consecutive sampled tokens each had
    probability above `threshold` (M1: 3,000 tokens at p > 0.99; scale `run` down for small models)."""

    def __init__(self, run: int = 3000, threshold: float = 0.99) -> None:
        if run < 1 or not 0 < threshold < 1:
            raise ValueError(f"need run >= 1 and 0 < threshold < 1, got run={run}, threshold={threshold}")
        self.run = run
        self.log_threshold = math.log(threshold)
        self.count = 0

    def update(self, logprob: float) -> bool:
        self.count = self.count + 1 if logprob > self.log_threshold else 0
        return self.count >= self.run

    def reset(self) -> None:
        self.count = 0
