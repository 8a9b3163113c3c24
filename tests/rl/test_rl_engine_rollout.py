"""Rollouts on the engine: forced observations masked out, behaviour logprobs equal to the trainer's, the SFT
format reproduced token for token, reproducible and split-invariant sampling, overlong handling, evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from rl_helpers import TwoTurnEnv, save_policy, tiny_tokenizer

from xinzhou.chat import AssistantMessage, ToolMessage, to_ids
from xinzhou.chat.template import render_completion
from xinzhou.engine import LLM, RequestOutput, SamplingParams
from xinzhou.model.hf import from_pretrained
from xinzhou.rl import RolloutBatch, Trajectory, observation_text, probability_correlation, token_logprobs
from xinzhou.rl.evaluate import EvalResult, evaluate, wilson_interval
from xinzhou.rl.rollout_engine import apply_overlong, collect, collect_trajectories
from xinzhou.tasks import get_task


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    path = save_policy(tmp_path_factory.mktemp("policy") / "p")
    return LLM(from_pretrained(path), tiny_tokenizer())


PARAMS = SamplingParams(temperature=1.0, logprobs=True)


def runs(tr: Trajectory) -> list[tuple[bool, list[int]]]:
    """The completion as (sampled?, ids) runs."""
    out: list[tuple[bool, list[int]]] = []
    for tok, s in zip(tr.completion_ids, tr.sampled):
        if out and out[-1][0] == s:
            out[-1][1].append(tok)
        else:
            out.append((s, [tok]))
    return out


def test_forced_observations_are_masked_and_behaviour_logprobs_match_the_trainer(llm: LLM) -> None:
    tok = tiny_tokenizer()
    trajs = collect_trajectories(llm, TwoTurnEnv, [3, 5], 3, PARAMS, max_turns=3, max_tokens=64, max_turn_tokens=16)
    obs = tok.encode(observation_text([ToolMessage("42", tool_call_id="call_0", name="lookup")]))
    two_turn = [t for t in trajs if t.info["end"] == "done"]
    assert len(trajs) == 6 and two_turn, [t.info["end"] for t in trajs]
    for tr in two_turn:
        pieces = runs(tr)
        assert [s for s, _ in pieces] == [True, False, True] and pieces[1][1] == obs
        assert tr.info["turns"] == 2 and tr.reward in (0.0, 1.0)
    assert [t.group_id for t in trajs] == [0, 0, 0, 1, 1, 1]
    batch = RolloutBatch.from_trajectories(trajs, pad_id=tok.pad_id)
    assert int(batch.loss_mask_BT.sum()) == sum(sum(t.sampled) for t in trajs)
    assert (batch.behaviour_logp_BT[batch.loss_mask_BT == 0] == 0).all()
    with torch.no_grad():  # the trainer's fp32-head logprobs of the same tokens
        trainer = token_logprobs(llm.engine.model(batch.input_ids_BT).logits, batch.input_ids_BT)
    m = batch.loss_mask_BT.bool()
    assert (trainer - batch.behaviour_logp_BT)[m].abs().max() < 1e-4
    assert probability_correlation(batch.behaviour_logp_BT, trainer, batch.loss_mask_BT) > 0.9999


def test_sampling_is_reproducible_and_independent_of_how_the_batch_is_split(llm: LLM) -> None:
    kw = dict(max_turns=3, max_tokens=64, max_turn_tokens=16, sample_seed=11)
    whole = collect_trajectories(llm, TwoTurnEnv, [3, 5, 8], 2, PARAMS, **kw)
    part = collect_trajectories(llm, TwoTurnEnv, [5], 2, PARAMS, group_ids=[1], **kw)
    again = collect_trajectories(llm, TwoTurnEnv, [3, 5, 8], 2, PARAMS, **kw)
    assert [t.completion_ids for t in whole] == [t.completion_ids for t in again]
    assert [t.completion_ids for t in whole[2:4]] == [t.completion_ids for t in part]
    other = collect_trajectories(llm, TwoTurnEnv, [3, 5, 8], 2, PARAMS, **{**kw, "sample_seed": 12})
    assert [t.completion_ids for t in whole] != [t.completion_ids for t in other]


class ScriptedLLM:
    """Plays the assistant turns of one arithmetic SFT trace as the engine would return them (mask, logprobs);
    the turn is the number of tool results in the sequence so far."""

    def __init__(self, turns: list[str], tokenizer) -> None:
        self.turns = [tokenizer.encode(t) for t in turns]
        self.tokenizer = tokenizer
        self.engine = type("E", (), {"max_model_len": 4096})()
        self.calls: list[int] = []
        self.prompts: list[str] = []

    def _out(self, prompt: list[int], done: list[int], mask: list[int], lps: list) -> RequestOutput:
        text = self.tokenizer.decode(prompt + done)
        self.prompts.append(text)
        new = self.turns[text.count("<response>")]
        return RequestOutput(0, prompt, done + new, mask + [1] * len(new), lps + [-0.5] * len(new), "", "stop")

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        return [self._out(list(p), [], [], []) for p in prompts]

    def continue_(self, outputs, forced, params):
        self.calls.append(len(outputs))
        return [self._out(o.prompt_token_ids, o.token_ids + f, o.mask + [0] * len(f), o.logprobs + [None] * len(f))
                for o, f in zip(outputs, forced)]


def test_a_tool_episode_reproduces_the_sft_format_token_for_token() -> None:
    tok = tiny_tokenizer()
    task = get_task("arithmetic")
    problem = task.generate(7, 1)
    trace = task.sft_trace(problem)
    turns = [render_completion(m) for m in trace if isinstance(m, AssistantMessage)]
    llm = ScriptedLLM(turns, tok)
    trajs = collect_trajectories(llm, "arithmetic", [7], 2, PARAMS, max_turns=6, max_tokens=1024,
                                 max_turn_tokens=256)
    assert llm.calls == [2, 2, 2]  # every round sends all live episodes in one call
    tr = trajs[0]
    assert tr.reward == 1.0 and tr.info["tool_calls"] == 2 and tr.info["turns"] == 3 and not tr.truncated
    sft = to_ids(trace, tok, [t.spec() for t in task.tools()])
    n = len(tr.prompt_ids) + len(tr.completion_ids)
    assert tr.prompt_ids + tr.completion_ids == sft.ids[:n] and tok.decode(sft.ids[n:]) == "\n"
    mask = [0] * len(tr.prompt_ids) + [int(s) for s in tr.sampled]
    assert all(s <= m for s, m in zip(mask, sft.loss_mask))  # sampled tokens are SFT targets, tool results not
    assert isinstance(tr.info["messages"][-1], AssistantMessage)


def test_overlong_modes() -> None:
    def ep(n: int, truncated: bool) -> Trajectory:
        tr = Trajectory([1], 0, reward=0.0 if truncated else 1.0, truncated=truncated)
        tr.add_sampled([5] * n, [-0.1] * n)
        return tr

    zero = apply_overlong([ep(10, True), ep(4, False)], "zero", max_tokens=10)
    assert [t.reward for t in zero] == [0.0, 1.0] and all(all(t.sampled) for t in zero)
    masked = apply_overlong([ep(10, True), ep(4, False)], "mask", max_tokens=10)
    assert not any(masked[0].sampled) and all(masked[1].sampled) and masked[0].reward == 0.0
    pen = apply_overlong([ep(10, True), ep(7, False), ep(4, False)], "penalty", max_tokens=10, cache=4)
    assert [t.reward for t in pen] == pytest.approx([-1.0, 1.0 - 0.25, 1.0])
    with pytest.raises(ValueError, match="unknown overlong mode"):
        apply_overlong([], "clip", max_tokens=10)


def test_group_size_one_and_unknown_task_are_errors(llm: LLM) -> None:
    with pytest.raises(ValueError, match="no baseline"):
        collect_trajectories(llm, "arithmetic", [1], 1, PARAMS)
    with pytest.raises(ValueError, match="unknown task 'chess'; valid tasks: arithmetic"):
        collect(llm, "chess", [1], 2, PARAMS)


def test_a_raising_environment_skips_the_sample(llm: LLM, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        batch = collect(llm, lambda: TwoTurnEnv(raise_every=2), [2, 3], 3, PARAMS, max_turns=3, max_tokens=64,
                        max_turn_tokens=16)
    assert "reward function failed" in caplog.text and "skipping sample" in caplog.text
    assert all(i["seed"] == 3 for i in batch.info)  # seed 2's group was dropped, seed 3's kept


def test_wilson_interval_and_evaluate(llm: LLM) -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)  # z²/(n + z²)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    tok = tiny_tokenizer()
    task = get_task("arithmetic")
    trace = task.sft_trace(task.generate(1_000_003, 1))
    scripted = ScriptedLLM([render_completion(m) for m in trace if isinstance(m, AssistantMessage)], tok)
    res = evaluate(scripted, "arithmetic", seeds=[1_000_003, 1_000_003])
    assert (res.n, res.successes, res.tool_calls, res.truncated) == (2, 2, 4, 0)
    assert "success 1.000" in str(res)
    for keep in ("chain", "none"):  # the real engine, greedy; keep="none" re-renders each turn
        r = evaluate(llm, TwoTurnEnv, n=3, keep=keep, max_turn_tokens=8, max_tokens=32)
        assert r.n == 3 and 0 <= r.success <= 1
    merged = EvalResult.merge([res, res])
    assert merged.n == 4 and merged.to_dict()["success"] == 1.0


def test_keep_none_drops_earlier_thinking() -> None:
    tok = tiny_tokenizer()
    task = get_task("arithmetic")
    trace = task.sft_trace(task.generate(5, 1))
    for keep, kept in (("chain", 2), ("none", 0)):
        llm = ScriptedLLM([render_completion(m) for m in trace if isinstance(m, AssistantMessage)], tok)
        res = evaluate(llm, "arithmetic", seeds=[5], keep=keep)
        assert res.successes == 1 and len(llm.prompts) == 3
        assert llm.prompts[-1].count("</think>") == kept  # earlier turns' thinking in the last prompt


def test_collect_returns_a_batch_without_invalid_samples(llm: LLM, tmp_path: Path) -> None:
    batch = collect(llm, TwoTurnEnv, [1, 2], 2, PARAMS, max_turns=3, max_tokens=64, max_turn_tokens=16)
    assert len(batch) == 4 and batch.num_groups == 2
