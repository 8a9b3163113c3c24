"""Bundled tasks: registry, deterministic generators, exact and robust verifiers, SFT traces that render."""

from __future__ import annotations

import json

import pytest

from xinzhou.chat import AssistantMessage, ToolMessage, to_ids
from xinzhou.chat.tools.calculator import calculator
from xinzhou.tasks import TASKS, extract_answer, get_task, parse_number
from xinzhou.tasks.countdown import evaluate_countdown
from xinzhou.tasks.knights import solutions

ALL = sorted(TASKS)


def test_registry() -> None:
    assert ALL == ["arithmetic", "countdown", "knights_knaves"]
    with pytest.raises(ValueError, match="unknown task 'gsm8k'; valid tasks: arithmetic, countdown, knights_knaves"):
        get_task("gsm8k")
    assert get_task("countdown", format_score=0.1).format_score == 0.1
    with pytest.raises(TypeError):
        get_task("arithmetic", format_score=0.1)


@pytest.mark.parametrize("name", ALL)
def test_generators_are_deterministic_and_varied(name: str) -> None:
    task = get_task(name)
    for d in task.difficulties:
        a, b = task.dataset(30, d), task.dataset(30, d)
        assert a == b
        assert len({p.prompt for p in a}) >= (8 if (name, d) == ("knights_knaves", 1) else 25)
        assert all(p.task == name and p.difficulty == d for p in a)
    assert task.generate(3, 2) != task.generate(3, 1)
    with pytest.raises(ValueError, match="unknown difficulty 0; valid: 1, 2, 3, 4"):
        task.generate(0, 0)


@pytest.mark.parametrize("name", ALL)
def test_sft_traces_are_correct_and_render(name: str) -> None:
    task = get_task(name)
    tools = [t.spec() for t in task.tools()]

    class CharTokenizer:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    for d in task.difficulties:
        for problem in task.dataset(20, d, start_seed=100):
            trace = task.sft_trace(problem)
            assert task.verify(problem, trace[-1].content) == 1.0
            assert task.verify(problem, "Answer: 7") == 0.0
            tokens = to_ids(trace, CharTokenizer(), tools)
            trained = "".join(chr(i) for i, m in zip(tokens.ids, tokens.loss_mask) if m)
            assert trace[-1].content in trained and problem.prompt not in trained
            record = json.loads(json.dumps(task.sft_record(problem)))  # the SFT JSONL line renders the same
            assert to_ids(record["messages"], CharTokenizer(), record["tools"]) == tokens


def test_arithmetic_traces_call_the_calculator_at_least_twice() -> None:
    task = get_task("arithmetic")
    for d, calls in zip(task.difficulties, (2, 3, 5, 6)):
        for problem in task.dataset(20, d):
            trace = task.sft_trace(problem)
            turns = [m for m in trace if isinstance(m, AssistantMessage)]
            results = [m for m in trace if isinstance(m, ToolMessage)]
            assert sum(len(t.tool_calls) for t in turns) == calls
            for turn, result in zip(turns, results):  # think, call, read the result (in the next turn), answer
                assert turn.reasoning_content and turn.tool_calls[0].name == "calculator"
                assert result.content == calculator(**turn.tool_calls[0].arguments)
            for prev, nxt in zip(results, turns[1:]):
                assert prev.content in nxt.reasoning_content
            assert turns[-1].content == f"Answer: {problem.answer}" and not turns[-1].tool_calls


def test_arithmetic_mental_last_trace_does_the_last_step_in_its_thinking() -> None:
    """The demonstrator that does the last step in its head: one call fewer, the same earlier turns and results,
    and a final thought that states the last step's expression and its (correct) value; it replays through the
    environment to reward 1."""
    from xinzhou.rl import TaskEnv, run_episode

    task = get_task("arithmetic")
    for d, calls in zip(task.difficulties, (2, 3, 5, 6)):
        for problem in task.dataset(10, d, start_seed=300):
            full, mental = task.sft_trace(problem), task.sft_trace(problem, mental_last=True)
            assert mental[:-1] == full[:-3]  # everything before the last call is the same
            turns = [m for m in mental if isinstance(m, AssistantMessage)]
            assert sum(len(t.tool_calls) for t in turns) == calls - 1
            thought, expr = task.steps(problem)[-1]
            assert f"{thought[:-1]}: {expr} = {problem.answer}. So that is the answer." in turns[-1].reasoning_content
            assert turns[-1].content == f"Answer: {problem.answer}" and task.verify(problem, turns[-1].content) == 1
            env = TaskEnv(task, d)
            steps = iter(turns)
            assert run_episode(env, problem.seed, lambda _m, it=steps: next(it)).reward == 1.0
    problem = task.generate(0, 2)
    assert task.sft_record(problem, mental_last=False) == task.sft_record(problem)


@pytest.mark.parametrize(
    ("content", "reward"),
    [
        ("Answer: 1234", 1.0), ("answer: 1,234", 1.0), ("**Answer:** 1234.", 1.0), ("Final answer: 1234 cents", 1.0),
        ("The result is \\boxed{1234}", 1.0), ("Each person pays 1234 cents.", 1.0), ("Answer: 1234.0", 1.0),
        ("Answer: 12345", 0.0), ("Answer: 1234/2", 0.0), ("Answer: unsure", 0.0), ("1234 or 1235", 0.0), ("", 0.0),
        ("Answer: 1234\nAnswer: 99", 0.0),
    ],
)
def test_arithmetic_verifier_reads_answers_robustly(content: str, reward: float) -> None:
    task = get_task("arithmetic")
    problem = task.generate(0, 1)
    problem = type(problem)(problem.task, 0, 1, problem.prompt, "1234", problem.data)
    assert task.verify(problem, content) == reward


def test_answer_helpers() -> None:
    assert extract_answer("blah\nAnswer: 42.\n") == "42"
    assert extract_answer("\\boxed{7} and Answer: 8") == "7"
    assert extract_answer("no marker") is None
    assert parse_number("-1,234.5 cents") == parse_number("−1234.5") == pytest.approx(-1234.5)
    assert parse_number("7 / 2") == pytest.approx(3.5) and parse_number("none") is None


def test_countdown_verifier() -> None:
    task = get_task("countdown")
    problem = task.generate(0, 2)
    nums, target = problem.data["numbers"], problem.data["target"]
    assert evaluate_countdown(problem.answer) == (target, evaluate_countdown(problem.answer)[1])
    assert sorted(evaluate_countdown(problem.answer)[1]) == sorted(nums)
    assert task.verify(problem, f"Answer: {problem.answer} = {target}") == 1.0
    assert task.verify(problem, problem.answer.replace("*", "×")) == 1.0  # last line, unicode operator
    p = type(problem)("countdown", 0, 1, "", "(6 + 4) * 3", {"numbers": [3, 4, 6], "target": 30})
    for text, reward in [("Answer: 3 * (4 + 6)", 1.0), ("Answer: (6 + 4) * 3 * 1", 0.0),
                         ("Answer: (6 + 4) * 3 + 0", 0.0), ("Answer: 6 * 4 + 3 + 3", 0.0), ("Answer: 10 * 3", 0.0),
                         ("Answer: -(6 + 4) * -3", 0.0),
                         ("Answer: (6 + 4) ** 3", 0.0), ("Answer: 6 // 4 * 3", 0.0), ("Answer: thirty", 0.0),
                         ("Answer: (6 + 4) * 3 / 0", 0.0), ("", 0.0)]:
        assert task.verify(p, text) == reward, text
    assert get_task("countdown", format_score=0.1).verify(p, "Answer: 6 + 4 + 3") == 0.1
    assert get_task("countdown", format_score=0.1).verify(p, "Answer: 6 + 4 + 3 + 3") == 0.1
    with pytest.raises(ValueError, match="format_score"):
        get_task("countdown", format_score=1.5)


def test_knights_puzzles_have_unique_solutions_and_verify() -> None:
    task = get_task("knights_knaves")
    for d in task.difficulties:
        for problem in task.dataset(10, d):
            sols = solutions([tuple(s) for s in problem.data["statements"]])
            assert sols == [tuple(problem.data["roles"])]
    p = type(problem)("knights_knaves", 0, 2, "", "", {"names": ["Ada", "Ben", "Cleo"], "roles": [True, False, True]})
    for text, reward in [
        ("Answer: Ada is a knight, Ben is a knave, Cleo is a knight", 1.0),
        ("Answer: Ben is a knave; Cleo is a Knight; Ada is a knight.", 1.0),
        ("Answer: Ada: knight, Ben: knave, Cleo: knight", 1.0),
        ("Ada and Cleo are knights, Ben is a knave.", 1.0),
        ("Answer: Ada is a knight, Ben is a knight, Cleo is a knight", 0.0),
        ("Answer: Ada is a knight, Cleo is a knight", 0.0),
        ("Answer: Ada is a knight or a knave, Ben is a knave, Cleo is a knight", 0.0),
        ("I do not know", 0.0),
    ]:
        assert task.verify(p, text) == reward, text
