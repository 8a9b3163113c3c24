"""The rollout batch (sampled-only loss mask, behaviour logprobs, invalid samples skipped), fp32 logprobs, the
rollout-vs-trainer correlation, the repetition guard and the NaN guard."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from xinzhou.rl import (
    NonFiniteLossError,
    RepetitionGuard,
    RolloutBatch,
    Trajectory,
    check_finite,
    policy_loss,
    probability_correlation,
    token_entropy,
    token_logprobs,
)


def episode(group: int, reward: float | None, n_tool: int = 2) -> Trajectory:
    """Prompt [1, 2], a sampled turn, a forced tool observation, a sampled answer."""
    tr = Trajectory([1, 2], group_id=group, reward=reward)
    tr.add_sampled([10, 11], [-0.1, -0.2])
    tr.add_forced([90] * n_tool)
    tr.add_sampled([12], [-0.3])
    return tr


def test_batch_layout_masks_only_sampled_tokens() -> None:
    batch = RolloutBatch.from_trajectories([episode(4, 1.0), episode(4, 0.0, n_tool=0)], pad_id=-1)
    assert batch.input_ids_BT.tolist() == [[1, 2, 10, 11, 90, 90, 12], [1, 2, 10, 11, 12, -1, -1]]
    assert batch.loss_mask_BT.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0, 0]]
    assert batch.attention_mask_BT.tolist() == [[True] * 7, [True] * 5 + [False] * 2]
    assert batch.behaviour_logp_BT[0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0, 0, -0.3])
    assert batch.group_ids_B.tolist() == [0, 0] and batch.info[0]["group_id"] == 4
    assert batch.rewards_B.tolist() == [1.0, 0.0] and batch.truncation_rate == 0.0


def test_invalid_samples_and_small_groups_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    trajs = [episode(0, 1.0), episode(0, 0.0), episode(1, 1.0), episode(1, None), episode(2, math.nan),
             episode(2, 0.5), episode(2, 0.0)]
    trajs[3].info["error"] = "ZeroDivisionError: verifier bug"
    with caplog.at_level(logging.WARNING):
        batch = RolloutBatch.from_trajectories(trajs)
    assert "verifier bug" in caplog.text and "dropping groups [1]" in caplog.text
    assert batch.rewards_B.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert batch.group_ids_B.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no valid samples"):
        RolloutBatch.from_trajectories([episode(0, None), episode(0, 1.0)])


def test_trajectory_rejects_bad_behaviour_logprobs() -> None:
    tr = Trajectory([1], group_id=0)
    with pytest.raises(ValueError, match="2 sampled ids but 1 logprobs"):
        tr.add_sampled([1, 2], [-0.1])
    with pytest.raises(ValueError, match="finite and <= 0"):
        tr.add_sampled([1], [math.nan])


def test_select_cat_and_minibatches() -> None:
    batch = RolloutBatch.from_trajectories([episode(g, float(i % 2)) for g in range(3) for i in range(4)])
    batch = batch.with_advantages(torch.arange(12.0))
    halves = batch.minibatches(2, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat([h.advantages_B for h in halves]).tolist()) == list(range(12))
    groups = batch.minibatches(3, by_group=True)
    assert [g.group_ids_B.unique().tolist() for g in groups] == [[0], [1], [2]]
    merged = RolloutBatch.cat([groups[2], groups[0]])
    assert merged.group_ids_B.tolist() == [0] * 4 + [1] * 4  # relabelled, never merged across batches
    assert merged.advantages_B.tolist() == list(range(8, 12)) + list(range(4))
    with pytest.raises(ValueError, match="cannot split 12 samples into 13"):
        batch.minibatches(13)
    with pytest.raises(ValueError, match="all batches have advantages or none"):
        RolloutBatch.cat([groups[0], RolloutBatch.from_trajectories([episode(0, 1.0), episode(0, 0.0)])])
    assert set(batch.to_dict()) >= {"input_ids_BT", "loss_mask_BT", "behaviour_logp_BT", "rewards_B", "info"}
    with pytest.raises(ValueError, match=r"behaviour_logp_BT must be \[12, 7\], got \[12, 6\]"):
        RolloutBatch(**{**batch.to_dict(), "behaviour_logp_BT": batch.behaviour_logp_BT[:, :6]})


def test_token_logprobs_are_fp32_and_aligned() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    logp = token_logprobs(logits.bfloat16(), ids)
    assert logp.dtype == torch.float32 and logp.shape == (2, 5) and (logp[:, 0] == 0).all()
    naive = torch.log_softmax(logits.bfloat16().float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(logp[:, 1:], naive, atol=1e-6)
    ent = token_entropy(logits)
    p = torch.softmax(logits[:, :-1], -1)
    assert torch.allclose(ent[:, 1:], -(p * p.log()).sum(-1), atol=1e-6)


def test_probability_correlation() -> None:
    logp = torch.log(torch.tensor([[0.1, 0.5, 0.9, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert probability_correlation(logp, logp, mask) == pytest.approx(1.0)
    noisy = logp + torch.tensor([[0.2, -0.1, 0.0, 5.0]])  # the masked-out token does not count
    assert 0.9 < probability_correlation(logp, noisy, mask) < 1.0
    assert math.isnan(probability_correlation(logp, logp, torch.zeros_like(mask)))


def test_repetition_guard() -> None:
    guard = RepetitionGuard(run=3, threshold=0.99)
    confident, unsure = math.log(0.995), math.log(0.5)
    assert [guard.update(lp) for lp in (confident, confident, unsure, confident, confident)] == [False] * 5
    assert guard.update(confident) is True
    with pytest.raises(ValueError):
        RepetitionGuard(run=0)


def test_nonfinite_loss_stops_with_the_batch_saved(tmp_path: Path) -> None:
    batch = RolloutBatch.from_trajectories([episode(0, 1.0), episode(0, 0.0)])
    logp = batch.behaviour_logp_BT.clone()
    logp[0, 2] = math.nan  # e.g. a model that produced NaN logits
    loss, _ = policy_loss("cispo", logp, batch.behaviour_logp_BT, torch.tensor([1.0, -1.0]), batch.loss_mask_BT)
    check_finite(torch.tensor(0.5), batch, step=1, save_dir=tmp_path)  # finite: nothing happens
    assert not list(tmp_path.iterdir())
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 7") as info:
        check_finite(loss, batch, step=7, save_dir=tmp_path)
    assert info.value.path == tmp_path / "nonfinite_step7.pt"
    saved = torch.load(info.value.path, weights_only=False)
    assert saved["step"] == 7 and torch.equal(saved["batch"]["input_ids_BT"], batch.input_ids_BT)
    assert [p.name for p in tmp_path.iterdir()] == ["nonfinite_step7.pt"]  # no temporary file left
