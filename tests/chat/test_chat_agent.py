"""The agent loop end to end with a scripted stand-in model: tools run, thinking kept, prompts append-only."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from xinzhou.chat import (
    Agent,
    AssistantMessage,
    ToolMessage,
    ToolRegistry,
    UserMessage,
    builtin_tools,
    render,
)
from xinzhou.chat.console import ConsolePrinter


@dataclass
class Output:
    text: str
    finish_reason: str = "stop"


class ScriptedLLM:
    """Returns canned outputs in order and records every prompt and params it was given."""

    def __init__(self, *outputs: str | Output) -> None:
        self.outputs = [o if isinstance(o, Output) else Output(o) for o in outputs]
        self.prompts: list[str] = []
        self.params: list[object] = []

    def generate(self, prompts: list[str], params: object = None) -> list[Output]:
        assert len(prompts) == 1
        self.prompts.append(prompts[0])
        self.params.append(params)
        return [self.outputs[min(len(self.prompts), len(self.outputs)) - 1]]


def invoke(name: str, **params: str) -> str:
    body = "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in params.items())
    return f'<invoke name="{name}">\n{body}</invoke>\n'


def call(name: str, **params: str) -> str:
    return f"\n<minimax:tool_call>\n{invoke(name, **params)}</minimax:tool_call>[e~["


STEPS = [
    "I should compute 2**100 exactly.\n</think>\n\nLet me calculate." + call("calculator", expression="2**100"),
    "Now check the digit count with Python.\n</think>\n\n" + call("python", code="print(len(str(2**100)))"),
    "Both agree.\n</think>\n\n2**100 = 1267650600228229401496703205376, which has 31 digits.[e~[",
]


def test_agent_end_to_end_with_tools_and_kept_thinking() -> None:
    llm = ScriptedLLM(*STEPS)
    result = Agent(llm, builtin_tools(), keep="chain", params={"temperature": 1.0}).run(
        [{"role": "user", "content": "How many digits does 2**100 have?"}])
    assert result.stop_reason == "final" and len(result.steps) == 3
    assert result.answer == "2**100 = 1267650600228229401496703205376, which has 31 digits."
    roles = [type(m).__name__ for m in result.messages]
    assert roles == ["UserMessage", "AssistantMessage", "ToolMessage", "AssistantMessage", "ToolMessage",
                     "AssistantMessage"]
    a1, t1, a2, t2 = result.messages[1:5]
    assert a1.reasoning_content == "I should compute 2**100 exactly." and a1.content == "Let me calculate."
    assert a1.tool_calls[0].arguments == {"expression": "2**100"}
    assert t1.content == "1267650600228229401496703205376" and t1.tool_call_id == a1.tool_calls[0].id
    assert t2.content == "31\n" and t2.name == "python"
    assert llm.params == [{"temperature": 1.0}] * 3
    # interleaved thinking: every earlier step's reasoning is in the last prompt
    assert "I should compute 2**100 exactly." in llm.prompts[2]
    assert "Now check the digit count with Python." in llm.prompts[2]


@pytest.mark.parametrize("strip_eos", [False, True])
def test_prompts_are_append_only(strip_eos: bool) -> None:
    outputs = [s.removesuffix("[e~[") if strip_eos else s for s in STEPS]
    llm = ScriptedLLM(*outputs)
    result = Agent(llm, builtin_tools()).run([UserMessage("How many digits does 2**100 have?")])
    for n in range(len(llm.prompts) - 1):
        assert llm.prompts[n + 1].startswith(llm.prompts[n] + outputs[n])  # prefill only the new tokens
    # and the incremental prompt is exactly what rendering the transcript gives (canonical model output)
    assert llm.prompts[-1] == render(result.messages[:-1], builtin_tools().specs(), add_generation_prompt=True)


def test_history_thinking_follows_the_keep_mode() -> None:
    history = [UserMessage("first"), AssistantMessage("old answer", "OLD THOUGHT"), UserMessage("second")]
    chain, none = ScriptedLLM(*STEPS), ScriptedLLM(*STEPS)
    Agent(chain, builtin_tools(), keep="chain").run(history)
    Agent(none, builtin_tools(), keep="none").run(history)
    assert all("OLD THOUGHT" not in p for p in chain.prompts)
    assert "I should compute 2**100 exactly." in chain.prompts[1]
    assert all("I should compute" not in p for p in none.prompts)  # dropped between steps
    assert none.prompts[1] == render([*history, *Agent(ScriptedLLM(*STEPS), builtin_tools(), keep="none").run(
        history).messages[3:5]], builtin_tools().specs(), add_generation_prompt=True, keep="none")
    with pytest.raises(ValueError, match="keep must be one of"):
        Agent(chain, keep="last")  # type: ignore[arg-type]


def test_tool_errors_come_back_as_results() -> None:
    reg = ToolRegistry()

    @reg.register
    def fail(x: int) -> str:
        """Fails."""
        raise RuntimeError("broken tool")

    llm = ScriptedLLM(
        f"t\n</think>\n\n<minimax:tool_call>\n{invoke('fail', x='1')}{invoke('nope')}</minimax:tool_call>[e~[",
        "t\n</think>\n\n" + call("fail", x="not a number"),
        "t\n</think>\n\ngave up[e~[",
    )
    result = Agent(llm, reg).run([UserMessage("go")])
    results = [m.content for m in result.messages if isinstance(m, ToolMessage)]
    assert results[0] == "Error: RuntimeError: broken tool"
    assert results[1].startswith("Error: unknown tool 'nope'")
    assert results[2].startswith("Error: fail: argument 'x' must be of type integer")
    assert [i.kind for i in result.steps[1].issues] == ["invalid_value"]
    assert result.stop_reason == "final" and result.answer == "gave up"


def test_step_limit_and_truncation() -> None:
    looping = ScriptedLLM("again\n</think>\n\n" + call("calculator", expression="1+1"))
    result = Agent(looping, builtin_tools(), max_steps=3).run([UserMessage("loop")])
    assert result.stop_reason == "max_steps" and len(result.steps) == 3 and len(looping.prompts) == 3
    cut = ScriptedLLM(Output("thinking forever and", "length"))
    result = Agent(cut, builtin_tools()).run([UserMessage("x")])
    assert result.stop_reason == "length" and result.messages[-1].reasoning_content == "thinking forever and"
    assert [i.kind for i in result.steps[0].issues] == ["unclosed_reasoning"]
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        Agent(cut, max_steps=0)


def test_malformed_call_is_a_final_answer_with_issues() -> None:
    llm = ScriptedLLM('t\n</think>\n\nok\n<minimax:tool_call>\n<invoke name="calculator">\n<parameter name="exp')
    result = Agent(llm, builtin_tools()).run([UserMessage("x")])
    assert result.stop_reason == "final"
    assert result.answer.startswith("ok\n<minimax:tool_call>")
    assert [i.kind for i in result.steps[0].issues] == ["truncated_tool_call"]


def test_console_printer_shows_thinking_calls_and_results() -> None:
    out = io.StringIO()
    Agent(ScriptedLLM(*STEPS), builtin_tools(), on_event=ConsolePrinter(out, color=True)).run([UserMessage("q")])
    text = out.getvalue()
    assert "\x1b[2mI should compute 2**100 exactly.\x1b[0m" in text  # dimmed thinking
    assert '→ calculator({"expression": "2**100"})' in text
    assert "← 1267650600228229401496703205376" in text
    assert "which has 31 digits." in text
