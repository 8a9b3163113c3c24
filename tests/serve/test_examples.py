"""The example clients run unmodified (as ``__main__``) against a server: a scripted model makes a forced tool call,
then answers."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.serve.scripted import completion
from xinzhou.chat import GENERATION_PROMPT

ROOT = Path(__file__).resolve().parents[2]
THINK = "I should look up the weather."
CALL_REST = '<parameter name="city">Paris</parameter>\n</invoke>\n</minimax:tool_call>[e~['


def reply(prompt: str) -> str:
    """A model that thinks, then (forced or not) calls get_weather, then answers once it has the result."""
    if "<response>" in prompt:
        return completion("The tool answered.", "Sunny and 21 °C in Paris.")
    if prompt.endswith(GENERATION_PROMPT):
        return completion(THINK, "", [("get_weather", {"city": "Paris"})])
    return ('get_weather">\n' if prompt.endswith('<invoke name="') else "") + CALL_REST


@pytest.mark.parametrize("script", ["openai_client.py", "anthropic_client.py"])
def test_example_tool_round_trip(scripted, script, monkeypatch, capsys):
    server, backend = scripted(reply)
    base = server.url + ("/v1" if script.startswith("openai") else "")
    monkeypatch.setattr(sys, "argv", [script, "--base-url", base])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    out = capsys.readouterr().out
    assert f"thinking: {THINK}" in out and "→ get_weather" in out
    assert "Sunny and 21 °C in Paris." in out
    assert THINK in backend.prompts[-1]  # the answer's prompt still holds the first turn's thinking


def test_demo_client_runs_the_calculator_loop(scripted, capsys):
    """`examples/demo_client.py` against a scripted model that solves each problem the way the demo's SFT traces
    do (one calculator call per step, read from the problem and the tool results in the prompt)."""
    import re

    from xinzhou.tasks import get_task

    task = get_task("arithmetic")
    problems = {p.prompt: p for p in (task.generate(2_000_000 + i, 2) for i in range(2))}

    def solver(prompt: str) -> str:
        question = next(q for q in problems if q in prompt)
        steps = task.steps(problems[question])
        done = len(re.findall(r"<response>", prompt))
        if done < len(steps):
            return completion(steps[done][0], "", [("calculator", {"expression": steps[done][1]})])
        return completion("So that is the answer.", f"Answer: {problems[question].answer}")

    server, backend = scripted(solver)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import demo_client
    finally:
        sys.path.pop(0)
    assert demo_client.main(["--base-url", server.url + "/v1", "--problems", "2", "--difficulty", "2"]) == 0
    out = capsys.readouterr().out
    assert "2/2 correct" in out and out.count("→ calculator(") == 6
    assert steps_thought(task, problems) in backend.prompts[-1]  # earlier thinking stays in the prompt


def steps_thought(task, problems) -> str:
    last = list(problems.values())[-1]
    return task.steps(last)[0][0]
