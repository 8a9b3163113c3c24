"""Legacy M1 parser: `<tool_calls>` JSON lines, reasoning split, robustness and chunk invariance."""

from __future__ import annotations

import json
import random

import pytest
from chat_strategies import garbage, split_at
from hypothesis import given, settings
from hypothesis import strategies as st

from xinzhou.chat import M1StreamParser, ToolCall, coalesce, collect, parse_m1


def events_of(text: str, chunks: list[str]) -> list:
    p = M1StreamParser([{"name": "get_weather", "parameters": {}}])
    out = []
    for c in chunks:
        out += p.feed(c)
    return coalesce(out + p.finish())


def m1_output(reasoning: str, content: str, calls: list[tuple[str, dict]]) -> str:
    lines = "".join(json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + "\n" for n, a in calls)
    block = f"\n<tool_calls>\n{lines}</tool_calls>" if calls else ""
    return f"<think>\n{reasoning}\n</think>\n\n{content}{block}<end_of_sentence>"


def test_m1_output_parses() -> None:
    text = m1_output("think <tool_calls> here", "Checking.", [("get_weather", {"location": "Paris", "days": 3}),
                                                                ("get_weather", {"location": "Lyon"})])
    r = parse_m1(text)
    assert (r.reasoning, r.content, r.issues) == ("think <tool_calls> here", "Checking.", [])
    assert r.tool_calls == [ToolCall("get_weather", {"location": "Paris", "days": 3}),
                            ToolCall("get_weather", {"location": "Lyon"})]


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"name": "f", "arguments": "{\\"a\\": 1}"}', ToolCall("f", {"a": 1})),  # arguments as a JSON string
        ('{"name": "f", "arguments": {"a": 1}}}', ToolCall("f", {"a": 1})),  # doubled closing brace trimmed
        ('{"name": "f"}', ToolCall("f", {})),
    ],
)
def test_m1_lenient_lines(line: str, expected: ToolCall) -> None:
    assert parse_m1(f"<tool_calls>\n{line}\n</tool_calls>").tool_calls == [expected]


def test_m1_bad_lines_go_to_content() -> None:
    r = parse_m1('ok\n<tool_calls>\n{"name": "f", "arguments": {}}\nnot json\n{"arguments": {}}\n</tool_calls>')
    assert r.tool_calls == [ToolCall("f", {})]
    assert [i.kind for i in r.issues] == ["malformed_tool_call", "malformed_tool_call"]
    assert r.content == 'oknot json{"arguments": {}}'
    r = parse_m1("a<tool_calls>\n{\"name\": \"f\"")
    assert r.content == 'a<tool_calls>\n{"name": "f"' and [i.kind for i in r.issues] == ["truncated_tool_call"]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(reasoning=st.text(max_size=20), content=st.text(max_size=20),
       calls=st.lists(st.tuples(st.sampled_from(["get_weather", "f"]),
                                st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                                                max_size=3)), max_size=3),
       sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_m1_round_trip_under_chunking(reasoning, content, calls, sizes) -> None:
    markers = ("<think>", "</think>", "<tool_calls>", "</tool_calls>", "<end_of_sentence>")
    if any(m in s for m in markers for s in (reasoning, content)) or reasoning.startswith("<think"):
        return
    text = m1_output(reasoning, content, calls)
    ref = events_of(text, [text])
    assert events_of(text, split_at(text, sizes)) == ref
    r = collect(ref)
    assert (r.reasoning, r.content) == (reasoning, content)
    assert r.tool_calls == [ToolCall(n, a) for n, a in calls]
    assert [i.kind for i in r.issues] == ["unknown_tool" for n, _ in calls if n == "f"]


def test_m1_garbage_never_raises() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        text = garbage(rng)
        assert events_of(text, split_at(text, [rng.randint(1, 5)])) == events_of(text, [text])
