"""Advantages, zero-variance filtering, DAPO dynamic sampling and the overlong penalty, on hand-computed values."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from xinzhou.rl import (
    RolloutBatch,
    Trajectory,
    dynamic_sampling,
    group_advantages,
    overlong_penalty,
    zero_variance_groups,
)

# group 7: rewards 1, 0, 0, 1 (mean 0.5); group 3: 0.1 three times (zero variance, with float noise in the mean)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1], dtype=torch.float64)
GROUPS = torch.tensor([7, 7, 7, 7, 3, 3, 3])


def test_group_scale_hand_computed() -> None:
    adv = group_advantages(REWARDS, GROUPS, scale="group", eps=0.0)
    s = math.sqrt(4 * 0.25 / 3)  # unbiased std of 1, 0, 0, 1
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected)
    assert adv.dtype == torch.float32
    assert (adv[4:] == 0).all()  # exactly zero, not 1e-17 / eps


def test_batch_and_none_scale_hand_computed() -> None:
    centred = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0]
    assert group_advantages(REWARDS, GROUPS, scale="none").tolist() == pytest.approx(centred)
    s = math.sqrt(sum(c * c for c in centred) / 6)  # ScaleRL: std of all advantages in the batch
    assert group_advantages(REWARDS, GROUPS, scale="batch", eps=0.0).tolist() == pytest.approx(
        [c / s for c in centred])


def test_all_flat_batch_gives_zero_advantages_never_nan() -> None:
    for scale in ("group", "batch", "none"):
        for eps in (0.0, 1e-6):
            adv = group_advantages(torch.tensor([0.3, 0.3, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), scale=scale, eps=eps)
            assert adv.tolist() == [0.0] * 4


def test_zero_variance_groups() -> None:
    assert zero_variance_groups(REWARDS, GROUPS).tolist() == [False] * 4 + [True] * 3


def test_bad_advantage_input() -> None:
    with pytest.raises(ValueError, match="group size 1"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="rewards must be finite; samples \\[1\\]"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        group_advantages(REWARDS, GROUPS, scale="std")


def test_overlong_penalty_hand_computed() -> None:
    # L_max = 10, L_cache = 4: no penalty up to 6, linear to -1 at 10, -1 beyond
    got = overlong_penalty(torch.tensor([5, 6, 8, 10, 11]), max_len=10, cache_len=4)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache_len=5)


def batch_of(rewards: list[list[float]]) -> RolloutBatch:
    trajs = []
    for g, group in enumerate(rewards):
        for r in group:
            tr = Trajectory([1, 2], group_id=g, reward=r)
            tr.add_sampled([3, 4], [-0.5, -0.25])
            trajs.append(tr)
    return RolloutBatch.from_trajectories(trajs)


def test_dynamic_sampling_keeps_drawing_until_full(caplog: pytest.LogCaptureFixture) -> None:
    draws = iter([batch_of([[1, 1], [0, 1]]), batch_of([[0, 0], [0, 0]]), batch_of([[1, 0], [0, 0], [1, 0]])])
    out = dynamic_sampling(lambda: next(draws), target_groups=3)
    assert out.num_groups == 3 and len(out) == 6
    assert out.group_ids_B.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.rewards_B.tolist() == [0, 1, 1, 0, 1, 0]
    with caplog.at_level(logging.WARNING):
        out = dynamic_sampling(lambda: batch_of([[1, 0], [1, 1]]), target_groups=3, max_draws=2)
    assert out.num_groups == 2 and "2 of 3 informative groups" in caplog.text
    with pytest.raises(RuntimeError, match="no group with reward variance"):
        dynamic_sampling(lambda: batch_of([[1, 1]]), target_groups=1, max_draws=2)
