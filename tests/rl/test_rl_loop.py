"""The RL loop end to end on a tiny random policy: metrics (rollout-vs-trainer agreement at step 0), plots,
checkpoints and bit-identical resume, k > 1 separating CISPO from DAPO, staleness, the NaN guard, bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from rl_helpers import TwoTurnEnv, rl_config, save_policy

from xinzhou.configs.rl import RLConfig, resolve
from xinzhou.rl import OBJECTIVES, NonFiniteLossError, PolicyTerms
from xinzhou.rl.loop import train_rl
from xinzhou.train.metrics import read_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return save_policy(tmp_path_factory.mktemp("policy") / "p")


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    last = sorted((out / "checkpoints").iterdir())[-1]
    return torch.load(last / "model.pt", weights_only=True)


def test_a_tiny_run_logs_agrees_with_the_sampler_and_resumes_bit_identically(policy: Path, tmp_path: Path) -> None:
    cfg = rl_config(policy, tmp_path / "run", minibatches=2, max_steps=3, eval_every=2, save_every=1, export=True)
    res = train_rl(cfg, env=TwoTurnEnv)
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in recs if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and res.steps == 3
    first = steps[0]
    for key in ("reward", "success_rate", "clip_frac", "is_weight", "entropy", "approx_kl", "zero_grad_frac",
                "prob_corr", "rollout_tokens_per_s", "truncation_rate", "grad_norm", "tool_calls", "step_s"):
        assert key in first, key
    assert first["updates"] == 2 and first["policy_age"] == 0
    assert first["prob_corr"] > 0.9999 and first["logp_maxdiff"] < 1e-4  # behaviour == trainer logprobs at step 0
    assert [e["step"] for e in res.evals] == [0, 2, 3] and 0 <= res.final_eval["success"] <= 1
    for name in ("reward.png", "clip.png", "export/config.json", "export/tokenizer.json"):
        assert (tmp_path / "run" / name).is_file(), name
    # resume from step 2 in a copy: the same step-3 record and weights as the uninterrupted run
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "step_00000003")
    again = train_rl(rl_config(policy, tmp_path / "again", minibatches=2, max_steps=3, eval_every=2, save_every=1,
                               resume=True), env=TwoTurnEnv)
    assert again.resumed_from == 2 and again.steps == 3
    redo = [r for r in read_jsonl(tmp_path / "again" / "metrics.jsonl") if "reward" in r]
    timing = ("rollout_s", "update_s", "step_s", "rollout_tokens_per_s", "train_tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in redo] == \
        [{k: v for k, v in r.items() if k not in timing} for r in steps]
    a, b = final_weights(tmp_path / "run"), final_weights(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="already holds a run"):
        train_rl(cfg, env=TwoTurnEnv)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_rollouts_at_a_temperature_are_scored_under_that_temperature(policy: Path, tmp_path: Path,
                                                                     temperature: float) -> None:
    """Behaviour logprobs are the tempered sampling distribution's and the trainer divides its logits by the same
    T, so the first (on-policy) update sees ratio 1: the same agreement as at T = 1. With either side left at
    T = 1 (raw-model behaviour logprobs, the usual bug: TRL #4159) the correlation here drops to about 0.93.
    That the engine's logprobs are the tempered distribution's is tested in tests/engine."""
    train_rl(rl_config(policy, tmp_path / "run", max_steps=1, temperature=temperature), env=TwoTurnEnv)
    first = next(r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "reward" in r)
    assert first["prob_corr"] > 0.9999 and first["logp_maxdiff"] < 1e-4, first
    assert abs(first["is_weight"] - 1) < 1e-4 and first["clip_frac"] == 0


def test_k_minibatches_separate_cispo_from_dapo(policy: Path, tmp_path: Path) -> None:
    def weights(objective: str, k: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"{objective}{k}"
        train_rl(rl_config(policy, out, objective=objective, minibatches=k, max_steps=1, aggregation="token",
                           lr=3e-2, prompts_per_batch=4, group_size=4), env=TwoTurnEnv)
        return final_weights(out)

    c1, d1 = weights("cispo", 1), weights("dapo", 1)
    assert all(torch.allclose(c1[k], d1[k], atol=1e-6) for k in c1)  # on-policy: the same gradient
    c4, d4 = weights("cispo", 4), weights("dapo", 4)
    assert max(float((c4[k] - d4[k]).abs().max()) for k in c4) > 1e-4  # off-policy: clipped tokens differ
    recs = {o: [r for r in read_jsonl(tmp_path / f"{o}4" / "metrics.jsonl") if "reward" in r][0]
            for o in ("cispo", "dapo")}
    assert recs["dapo"]["zero_grad_frac"] > 0 and recs["cispo"]["zero_grad_frac"] == 0


def test_kl_penalty_holds_the_policy_near_its_start(policy: Path, tmp_path: Path) -> None:
    """`kl_coef` scores every update against a frozen copy of the starting policy and logs that KL (`ref_kl`, on
    the sampled tokens). A negligible coefficient only measures it: the policy drifts (KL 0.28 at step 2 here); a
    strong one keeps it near the start (0.06)."""
    def run(kl: float) -> list[dict]:
        out = tmp_path / f"kl{kl}"
        train_rl(rl_config(policy, out, kl_coef=kl, minibatches=4, max_steps=3, lr=3e-3, aggregation="token"),
                 env=TwoTurnEnv)
        return [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r]

    measured, held = run(1e-9), run(20.0)
    assert measured[0]["ref_kl"] < 1e-2 and held[0]["ref_kl"] < 1e-2  # step 1 starts at the reference
    drift, kept = sum(r["ref_kl"] for r in measured[1:]), sum(r["ref_kl"] for r in held[1:])
    assert kept < 0.5 * drift, (drift, kept)
    train_rl(rl_config(policy, tmp_path / "none", max_steps=1), env=TwoTurnEnv)
    assert all("ref_kl" not in r for r in read_jsonl(tmp_path / "none" / "metrics.jsonl"))  # kl_coef 0: no reference


def test_staleness_generates_with_old_weights(policy: Path, tmp_path: Path) -> None:
    res = train_rl(rl_config(policy, tmp_path / "stale", staleness=1, max_steps=3), env=TwoTurnEnv)
    assert [h["policy_age"] for h in res.history] == [0, 1, 0]
    assert res.history[0]["prob_corr"] > 0.9999


def test_nan_loss_stops_the_run_with_the_batch_saved(policy: Path, tmp_path: Path, monkeypatch) -> None:
    def nan_objective(logp, logp_old, adv, mask, *, eps_high: float = 1.0) -> PolicyTerms:
        z = torch.zeros_like(logp)
        return PolicyTerms(logp * float("nan"), z + 1, z + 1, z.bool(), z.bool())

    monkeypatch.setitem(OBJECTIVES, "nan", nan_objective)
    with pytest.raises(NonFiniteLossError) as info:
        train_rl(rl_config(policy, tmp_path / "nan", objective="nan"), env=TwoTurnEnv)
    saved = torch.load(info.value.path, weights_only=False)
    assert info.value.path.parent == tmp_path / "nan" and saved["batch"]["input_ids_BT"].shape[0] > 0
    assert not any(r.get("step", 0) > 0 and "reward" in r for r in read_jsonl(tmp_path / "nan" / "metrics.jsonl"))


def test_a_raising_reward_function_is_logged_and_skipped(policy: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        res = train_rl(rl_config(policy, tmp_path / "raise", max_steps=1), env=lambda: TwoTurnEnv(raise_every=2))
    assert "reward function failed" in caplog.text and "skipping sample" in caplog.text
    assert res.history[0]["skipped"] > 0 and res.steps == 1


@pytest.mark.parametrize(("override", "message"), [
    ({"objective": "ppo"}, "unknown objective 'ppo'; valid objectives: cispo, dapo, grpo, gspo"),
    ({"task": "chess"}, "unknown task 'chess'; valid tasks: arithmetic"),
    ({"group_size": 1}, "group_size must be >= 2: a group of 1 has no baseline"),
    ({"objective": "dapo", "eps_high": -1.0}, "eps_high must be >= 0"),
    ({"difficulty": 9}, "unknown difficulty 9"),
    ({"overlong": "cut"}, "overlong must be one of"),
    ({"kl_coef": -0.1}, "kl_coef must be >= 0"),
    ({"lrr": 1.0}, "unknown RL config key 'lrr'"),
])
def test_bad_configs_are_clear_errors(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve("default", override)


def test_missing_model_and_config_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need a Hugging Face checkpoint directory"):
        train_rl(RLConfig(model=str(tmp_path / "none"), out_dir=str(tmp_path / "o"), progress=False))
    cfg = resolve("rl-tiny", {"minibatches": "8", "eps_high": "none", "filter_zero_variance": "false"})
    assert cfg.minibatches == 8 and cfg.eps_high is None and not cfg.filter_zero_variance
    assert RLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.fp32_lm_head) == (0.9, 0.95, 1e-15, True)
