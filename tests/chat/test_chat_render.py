"""Golden renderings written from the M2 format spec, and byte parity of our Jinja template with the renderer."""

from __future__ import annotations

import json

import pytest
from chat_strategies import conversation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xinzhou.chat import (
    AssistantMessage,
    ToolCall,
    ToolSpec,
    UserMessage,
    chat_template,
    messages_to_dicts,
    render,
    render_jinja,
    save_chat_template,
)
from xinzhou.chat.template import TOOLS_FOOTER, TOOLS_HEADER

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["location"]},
    },
}
WEATHER_JSON = (
    '{"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": '
    '{"location": {"type": "string"}, "days": {"type": "integer"}}, "required": ["location"]}}'
)
SYS = "]~!b[]~b]system\nYou are a helpful assistant.[e~[\n"


def call(name: str, **args: object) -> dict:
    return {"id": f"c_{name}", "type": "function", "function": {"name": name, "arguments": args}}


# ---------------------------------------------------------------------------------------------- goldens

GOLDEN: dict[str, tuple[list[dict], list[dict] | None, bool, str]] = {
    "default system + generation prompt": (
        [{"role": "user", "content": "Hi"}], None, True,
        SYS + "]~b]user\nHi[e~[\n]~b]ai\n<think>\n",
    ),
    "system + tools": (
        [{"role": "system", "content": "Be brief.", "current_date": "2025-11-03", "current_location": "Paris"},
         {"role": "user", "content": "Weather?"}], [WEATHER], True,
        "]~!b[]~b]system\nBe brief.\nCurrent date: 2025-11-03\nCurrent location: Paris\n\n# Tools\n"
        "You may call one or more tools to assist with the user query.\n"
        "Here are the tools available in JSONSchema format:\n\n<tools>\n"
        f"<tool>{WEATHER_JSON}</tool>\n</tools>\n\n"
        "When making tool calls, use XML format to invoke tools and pass parameters:\n\n<minimax:tool_call>\n"
        '<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n'
        '<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>[e~[\n'
        "]~b]user\nWeather?[e~[\n]~b]ai\n<think>\n",
    ),
    "multi-turn: thinking of earlier user turns dropped": (
        [{"role": "user", "content": "A"},
         {"role": "assistant", "reasoning_content": "old thought", "content": "a"},
         {"role": "user", "content": "B"},
         {"role": "assistant", "reasoning_content": "new thought", "content": "b"}], None, False,
        SYS + "]~b]user\nA[e~[\n]~b]ai\na[e~[\n]~b]user\nB[e~[\n]~b]ai\n<think>\nnew thought\n</think>\n\nb[e~[\n",
    ),
    "parallel tool calls, typed values, a run of tool results": (
        [{"role": "user", "content": "Paris and Lyon, 3 days"},
         {"role": "assistant", "reasoning_content": "two cities", "content": "",
          "tool_calls": [call("get_weather", location="Paris", days=3),
                         call("get_weather", location="Lyon", days=None, extra={"k": [1, 2.5, True]})]},
         {"role": "tool", "content": '{"t": 20}'},
         {"role": "tool", "content": [{"type": "text", "text": "rain"}, "wind"]}], None, True,
        SYS + "]~b]user\nParis and Lyon, 3 days[e~[\n]~b]ai\n<think>\ntwo cities\n</think>\n\n\n<minimax:tool_call>\n"
        '<invoke name="get_weather">\n<parameter name="location">Paris</parameter>\n'
        '<parameter name="days">3</parameter>\n</invoke>\n'
        '<invoke name="get_weather">\n<parameter name="location">Lyon</parameter>\n'
        '<parameter name="days">null</parameter>\n<parameter name="extra">{"k": [1, 2.5, true]}</parameter>\n'
        "</invoke>\n</minimax:tool_call>[e~[\n"
        ']~b]tool\n<response>{"t": 20}</response>\n<response>rain\n</response>\n<response>wind\n</response>[e~[\n'
        "]~b]ai\n<think>\n",
    ),
    "the chain keeps every step's thinking; inline <think> split out of content": (
        [{"role": "user", "content": "Q"},
         {"role": "assistant", "content": "<think>\nstep 1\n</think>\n\ncalling", "tool_calls": [call("f")]},
         {"role": "tool", "content": "r1"},
         {"role": "assistant", "reasoning": "step 2", "content": "", "tool_calls": [call("f", x="1")]},
         {"role": "tool", "content": "r2"},
         {"role": "assistant", "reasoning_details": [{"type": "reasoning.text", "text": "step "},
                                                     {"type": "reasoning.text", "text": "3"}], "content": "done"}],
        None, False,
        SYS + "]~b]user\nQ[e~[\n"
        "]~b]ai\n<think>\nstep 1\n</think>\n\ncalling\n<minimax:tool_call>\n<invoke name=\"f\">\n</invoke>\n"
        "</minimax:tool_call>[e~[\n]~b]tool\n<response>r1</response>[e~[\n"
        "]~b]ai\n<think>\nstep 2\n</think>\n\n\n<minimax:tool_call>\n<invoke name=\"f\">\n"
        '<parameter name="x">1</parameter>\n</invoke>\n</minimax:tool_call>[e~[\n]~b]tool\n<response>r2</response>'
        "[e~[\n]~b]ai\n<think>\nstep 3\n</think>\n\ndone[e~[\n",
    ),
    "inline <think> of an old turn dropped, list content flattened": (
        [{"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "image"}, "here"]},
         {"role": "assistant", "content": "<think>old</think>\n\nanswer"},
         {"role": "user", "content": "next"}], None, False,
        SYS + "]~b]user\nlook here[e~[\n]~b]ai\nanswer[e~[\n]~b]user\nnext[e~[\n",
    ),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden(case: str) -> None:
    messages, tools, gen, expected = GOLDEN[case]
    assert render(messages, tools, add_generation_prompt=gen) == expected
    assert render_jinja(messages, tools, add_generation_prompt=gen) == expected


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_transformers(case: str, hf_tokenizer) -> None:
    messages, tools, gen, expected = GOLDEN[case]
    got = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
    assert got == expected


def test_tools_block_constants_match_spec() -> None:
    assert TOOLS_HEADER.endswith("<tools>\n") and TOOLS_FOOTER.endswith("</minimax:tool_call>")


def test_keep_modes() -> None:
    msgs = GOLDEN["multi-turn: thinking of earlier user turns dropped"][0]
    assert render(msgs, keep="all").count("<think>") == 2
    assert render(msgs, keep="none").count("<think>") == 0
    assert render(msgs, keep="chain").count("<think>") == 1
    for keep in ("chain", "all", "none"):
        assert render(msgs, keep=keep) == render_jinja(msgs, keep=keep)
    with pytest.raises(ValueError, match="keep must be one of 'chain', 'all', 'none'"):
        render(msgs, keep="last")


def test_json_string_arguments_are_parsed() -> None:
    as_string = [{"role": "user", "content": "x"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"type": "function", "function": {"name": "f", "arguments": '{"a": 1, "b": "two"}'}}]}]
    as_dict = [as_string[0], {"role": "assistant", "content": "", "tool_calls": [call("f", a=1, b="two")]}]
    assert render(as_string) == render(as_dict)
    assert '<parameter name="a">1</parameter>\n<parameter name="b">two</parameter>' in render(as_string)
    with pytest.raises(ValueError, match="not valid JSON"):
        render([as_string[0], {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}])


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}], "no previous assistant message"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}],
         "no previous assistant message"),
        ([{"role": "tool", "content": "r"}], "no previous assistant message"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "s"}], "only the first message"),
        ([{"role": "robot", "content": "x"}], "valid roles: system, user, assistant, tool"),
    ],
)
def test_invalid_conversations_raise(messages: list[dict], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render(messages)
    from jinja2 import TemplateError

    with pytest.raises(TemplateError):
        render_jinja(messages)


def test_typed_inputs_equal_dict_inputs() -> None:
    typed = [UserMessage("hi"), AssistantMessage("ok", "why", [ToolCall("get_weather", {"location": "Rome"})])]
    assert render(typed, [ToolSpec.from_dict(WEATHER)]) == render(messages_to_dicts(typed), [WEATHER])


# ---------------------------------------------------------------------------------------------- parity


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv=conversation(), gen=st.booleans(), keep=st.sampled_from(["chain", "all", "none"]))
def test_jinja_matches_renderer_on_random_conversations(conv, gen, keep, hf_tokenizer) -> None:
    messages, tools = conv
    dicts, tool_dicts = messages_to_dicts(messages), [t.to_dict() for t in tools] or None
    expected = render(messages, tools, add_generation_prompt=gen, keep=keep)
    if not dicts:  # transformers refuses an empty conversation
        assert render_jinja(dicts, tool_dicts, add_generation_prompt=gen, keep=keep) == expected
        return
    got = hf_tokenizer.apply_chat_template(dicts, tools=tool_dicts, tokenize=False, add_generation_prompt=gen,
                                           keep=keep)
    assert got == expected


@settings(max_examples=60, deadline=None, derandomize=True)
@given(conv=conversation(), style=st.sampled_from(["reasoning", "thinking", "details", "inline", "json_args"]))
def test_jinja_matches_renderer_on_client_shapes(conv, style) -> None:
    """Clients send reasoning under other names or inline; the template reads them like the renderer."""
    messages, tools = conv
    dicts = messages_to_dicts(messages)
    for d in dicts:
        r = d.pop("reasoning_content", None) if d["role"] == "assistant" else None
        if r is None:
            continue
        if style == "reasoning":
            d["reasoning"] = r
        elif style == "thinking":
            d["thinking"] = r
        elif style == "details":
            d["reasoning_details"] = [{"type": "reasoning.text", "text": r[: len(r) // 2]},
                                      {"type": "reasoning.text", "text": r[len(r) // 2 :]}]
        elif style == "inline":
            d["content"] = f"<think>\n{r}\n</think>\n\n{d['content']}"
        else:
            d["reasoning_content"] = r
    py_input = json.loads(json.dumps(dicts))
    if style == "json_args":  # OpenAI clients send arguments as JSON strings; the renderer parses them
        for d in py_input:
            for c in d.get("tool_calls", []):
                c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    assert render_jinja(dicts, [t.to_dict() for t in tools]) == render(py_input, tools)


def test_saved_template_loads_with_transformers(tmp_path, hf_tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    hf_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    path = save_chat_template(tmp_path)
    assert path.read_text() == chat_template()
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages, tools, gen, expected = GOLDEN["parallel tool calls, typed values, a run of tool results"]
    assert loaded.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen) == expected
