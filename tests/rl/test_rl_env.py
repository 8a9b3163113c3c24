"""The environment interface: task episodes at the message level, tool observations, a broken verifier skipped,
and the token-level layout the engine rollout will build (forced observations excluded from the loss)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from xinzhou.chat import AssistantMessage, Message, ToolCall, ToolMessage, render
from xinzhou.chat.template import render_completion
from xinzhou.rl import RolloutBatch, TaskEnv, Trajectory, observation_text, run_episode
from xinzhou.tasks import get_task


def replay(trace: list[Message]) -> Callable[[list[Message]], AssistantMessage]:
    """A policy that plays the assistant turns of `trace` in order."""
    turns = iter(m for m in trace if isinstance(m, AssistantMessage))
    return lambda _messages: next(turns)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_arithmetic_sft_trace_replays_through_the_env(difficulty: int) -> None:
    env = TaskEnv("arithmetic", difficulty)
    seed = 11
    trace = env.task.sft_trace(env.task.generate(seed, difficulty))
    ep = run_episode(env, seed, replay(trace))
    assert ep.reward == 1.0
    assert [type(m) for m in ep.messages] == [type(m) for m in trace]
    for got, want in zip(ep.messages, trace):  # the env's tool results are exactly the trace's
        if isinstance(want, ToolMessage):
            assert (got.content, got.tool_call_id, got.name) == (want.content, want.tool_call_id, want.name)
    assert sum(isinstance(m, ToolMessage) for m in ep.messages) >= 2


def test_wrong_answer_unknown_tool_and_turn_limit() -> None:
    env = TaskEnv("arithmetic", 1, max_turns=2)
    env.reset(0)
    result = env.step(AssistantMessage("", "hmm", [ToolCall("python", {"code": "1"})]))
    assert not result.done and result.observation[0].content.startswith("Error: unknown tool 'python'")
    result = env.step(AssistantMessage("", "", [ToolCall("calculator", {"expression": "1+1"})]))
    assert result.done and result.reward == 0.0 and result.info["truncated"]
    env.reset(0)
    assert env.step(AssistantMessage("Answer: -1")).reward == 0.0
    assert env.tools[0].name == "calculator"
    assert TaskEnv("countdown").tools == []


def test_a_raising_verifier_skips_the_sample(caplog: pytest.LogCaptureFixture) -> None:
    task = get_task("countdown")
    task.verify = lambda problem, content: 1 / 0  # type: ignore[method-assign]
    env = TaskEnv(task, 1)
    env.reset(3)
    with caplog.at_level(logging.WARNING):
        result = env.step(AssistantMessage("Answer: 1 + 2"))
    assert result.done and result.reward is None and "ZeroDivisionError" in result.info["error"]
    assert "verifier raised" in caplog.text


def test_bad_env_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task 'sudoku'; valid tasks: arithmetic, countdown, knights_knaves"):
        TaskEnv("sudoku")
    with pytest.raises(ValueError, match="unknown difficulty 9; valid: 1, 2, 3, 4"):
        TaskEnv("countdown", 9)
    with pytest.raises(RuntimeError, match="reset"):
        TaskEnv("countdown").step(AssistantMessage("Answer: 1"))


class CharTokenizer:
    """One id per character: enough to check where the loss mask falls."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_token_level_episode_masks_only_model_output() -> None:
    """What the engine rollout will do: prompt ids, then per turn the sampled completion (with logprobs) and the
    forced observation. The text equals rendering the whole transcript (append-only), and the loss mask covers
    exactly the model's completions."""
    tok = CharTokenizer()
    env = TaskEnv("arithmetic", 1)
    seed = 5
    trace = env.task.sft_trace(env.task.generate(seed, 1))
    policy = replay(trace)
    messages = env.reset(seed)
    traj = Trajectory(tok.encode(render(messages, env.tools, add_generation_prompt=True)), group_id=0)
    completions = []
    while True:
        turn = policy(messages)
        text = render_completion(turn)
        completions.append(text)
        traj.add_sampled(tok.encode(text), [-0.5] * len(text))
        result = env.step(turn)
        messages += [turn, *result.observation]
        if result.done:
            traj.reward = result.reward
            break
        traj.add_forced(tok.encode(observation_text(result.observation)))
    full = "".join(map(chr, traj.prompt_ids + traj.completion_ids))
    assert full == render(messages, env.tools).rstrip("\n")
    batch = RolloutBatch.from_trajectories([traj, traj])
    ids = batch.input_ids_BT[0][batch.loss_mask_BT[0].bool()].tolist()
    assert "".join(map(chr, ids)) == "".join(completions)
    assert batch.rewards_B.tolist() == [1.0, 1.0]


def test_mixed_difficulties_pick_by_seed_and_validate() -> None:
    from xinzhou.rl.env import TaskEnv

    env = TaskEnv("arithmetic", (1, 2))
    calls = {}
    for seed in range(6):
        env.reset(seed)
        assert env.difficulty == (1, 2)[seed % 2]
        calls[seed] = len(env.task.steps(env.problem))
    assert {calls[s] for s in range(0, 6, 2)} == {2} and {calls[s] for s in range(1, 6, 2)} == {3}
    with pytest.raises(ValueError):
        TaskEnv("arithmetic", ())
    with pytest.raises(ValueError):
        TaskEnv("arithmetic", (1, 99))
