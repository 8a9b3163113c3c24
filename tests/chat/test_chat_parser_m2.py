"""M2 streaming parser: round trips under every chunking, typed values, delimiter ambiguity, garbage never raises."""

from __future__ import annotations

import random

import pytest
from chat_strategies import assistant_turn, garbage, split_at
from hypothesis import given, settings
from hypothesis import strategies as st

from xinzhou.chat import (
    AssistantMessage,
    ContentDelta,
    M2StreamParser,
    ParseIssue,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
    coalesce,
    collect,
    parse_m2,
    render_completion,
)
from xinzhou.chat.template import GENERATION_PROMPT

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "s": {"type": "string"}, "n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
    "o": {"type": "object"}, "a": {"type": "array"}, "ns": {"type": ["string", "null"]},
    "e": {"enum": ["none", "auto"]}, "any": {}}}}}]


def feed_chunks(text: str, chunks: list[str], tools=None, **kw) -> list:
    p = M2StreamParser(tools, **kw)
    events = []
    for c in chunks:
        events += p.feed(c)
    return events + p.finish()


def whole(text: str, tools=None, **kw) -> list:
    return feed_chunks(text, [text], tools, **kw)


def assert_chunk_invariant(text: str, tools=None, sizes: list[int] | None = None) -> list:
    ref = coalesce(whole(text, tools))
    assert coalesce(feed_chunks(text, list(text), tools)) == ref  # one character at a time
    if sizes:
        assert coalesce(feed_chunks(text, split_at(text, sizes), tools)) == ref
    return ref


# ---------------------------------------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None, derandomize=True)
@given(turn=assistant_turn(), sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5), end=st.booleans())
def test_round_trip_under_every_chunking(turn, sizes, end) -> None:
    specs, message = turn
    text = render_completion(message, end=end)
    events = assert_chunk_invariant(text, specs, sizes)
    r = collect(events)
    assert r.issues == []
    assert r.reasoning == message.reasoning_content
    assert r.content == message.content
    assert r.tool_calls == message.tool_calls  # names, typed values, order (ids are None)


def test_reference_example_parses() -> None:
    out = ('Need two cities.\n</think>\n\nChecking.\n<minimax:tool_call>\n<invoke name="f">\n'
           '<parameter name="s">Paris</parameter>\n<parameter name="n">3</parameter>\n</invoke>\n'
           '<invoke name="f">\n<parameter name="s">Lyon</parameter>\n</invoke>\n</minimax:tool_call>[e~[')
    r = parse_m2(out, TOOLS)
    assert (r.reasoning, r.content) == ("Need two cities.", "Checking.")
    assert r.tool_calls == [ToolCall("f", {"s": "Paris", "n": 3}), ToolCall("f", {"s": "Lyon"})]
    # the events stream: reasoning first, then content, then each call when its </invoke> arrives
    kinds = [type(e) for e in coalesce(whole(out, TOOLS))]
    assert kinds == [ReasoningDelta, ContentDelta, ToolCallEvent, ToolCallEvent]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('<parameter name="s">02134</parameter>', {"s": "02134"}),  # string stays verbatim
        ('<parameter name="s">true</parameter>', {"s": "true"}),
        ('<parameter name="s"> padded \n</parameter>', {"s": " padded \n"}),
        ('<parameter name="n">-12</parameter>', {"n": -12}),
        ('<parameter name="n">3.0</parameter>', {"n": 3}),
        ('<parameter name="x">2.5e3</parameter>', {"x": 2500.0}),
        ('<parameter name="x">7</parameter>', {"x": 7}),
        ('<parameter name="b">false</parameter>', {"b": False}),
        ('<parameter name="o">{"k": [1, null]}</parameter>', {"o": {"k": [1, None]}}),
        ('<parameter name="a">[1, "two"]</parameter>', {"a": [1, "two"]}),
        ('<parameter name="ns">keep-me</parameter>', {"ns": "keep-me"}),  # nullable string stays a string
        ('<parameter name="ns">null</parameter>', {"ns": None}),  # only a literal null is null
        ('<parameter name="ns">None</parameter>', {"ns": "None"}),
        ('<parameter name="e">none</parameter>', {"e": "none"}),  # enum value "none" is not None
        ('<parameter name="any">42</parameter>', {"any": "42"}),  # no type in the schema: string
        ('<parameter name="unknown">{"a": 1}</parameter>', {"unknown": '{"a": 1}'}),
    ],
)
def test_typed_values(raw: str, expected: dict) -> None:
    r = parse_m2(f'x\n</think>\n\n<minimax:tool_call>\n<invoke name="f">\n{raw}\n</invoke>\n</minimax:tool_call>',
                 TOOLS)
    assert r.issues == []
    assert r.tool_calls == [ToolCall("f", expected)]


def test_value_that_does_not_fit_its_schema_is_reported() -> None:
    r = parse_m2('</think><minimax:tool_call><invoke name="f"><parameter name="n">many</parameter>'
                 '<parameter name="b">[1]</parameter></invoke></minimax:tool_call>', TOOLS)
    assert r.tool_calls == [ToolCall("f", {"n": "many", "b": [1]})]
    assert [i.kind for i in r.issues] == ["invalid_value", "invalid_value"]


def test_delimiters_inside_string_values() -> None:
    """A `</parameter>` closes a value only when `<parameter` or `</invoke>` follows (docs/chat.md)."""
    code = 'x = "</parameter>"\n<invoke name="g">\nprint("</invoke>", "<parameter name=\\"k\\">")'
    msg = AssistantMessage("", "r", [ToolCall("f", {"s": code, "n": 1})])
    text = render_completion(msg)
    assert_chunk_invariant(text, TOOLS, [3, 1, 7])
    assert parse_m2(text, TOOLS).tool_calls == msg.tool_calls
    # the documented limit: the exact closing sequence inside a value ends the value there
    bad = AssistantMessage("", "r", [ToolCall("f", {"s": "a</parameter>\n<parameter name=\"n\">2"})])
    assert parse_m2(render_completion(bad), TOOLS).tool_calls != bad.tool_calls


def test_thinking_edge_cases() -> None:
    # a re-emitted <think> opener is skipped; </think> with fewer newlines is accepted
    assert (parse_m2("<think>\nhm\n</think>answer").reasoning, parse_m2("<think>\nhm\n</think>answer").content) == (
        "hm", "answer")
    # without starts_in_think the output may open <think> itself (M2 served with a prompt lacking it)
    r = parse_m2("<think>a</think>\n\nb", starts_in_think=False)
    assert (r.reasoning, r.content) == ("a", "b")
    r = parse_m2("plain answer", starts_in_think=False)
    assert (r.reasoning, r.content, r.issues) == ("", "plain answer", [])
    # <minimax:tool_call> inside the reasoning is thinking about calls, not a call
    r = parse_m2("maybe <minimax:tool_call><invoke name=\"f\"></invoke></minimax:tool_call>\n</think>\n\nno")
    assert r.tool_calls == [] and r.content == "no"


def test_prompt_thinking_is_never_the_end_of_this_turns_reasoning() -> None:
    """vLLM treats any </think> in the prompt as 'reasoning ended'; our parser only sees this turn's output."""
    prompt_tail = "<think>\nold\n</think>\n\ndone[e~[\n]~b]user\nagain[e~[\n" + GENERATION_PROMPT
    assert "</think>" in prompt_tail
    r = parse_m2("new thought\n</think>\n\nnew answer")
    assert (r.reasoning, r.content) == ("new thought", "new answer")


# ---------------------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "text, kinds, content",
    [
        ("no close", ["unclosed_reasoning"], ""),
        ("r</think>\n\nc\n<minimax:tool_call>\n<invoke name=\"f\">\n<parameter name=\"s\">abc",
         ["truncated_tool_call"], 'c\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="s">abc'),
        ("r</think><minimax:tool_call><invoke name=\"f\">\n<oops>", ["malformed_tool_call"],
         '<minimax:tool_call><invoke name="f">\n<oops>'),
        ("r</think><minimax:tool_call><invoke name=\"f\"></invoke>garbage", ["malformed_tool_call"], "garbage"),
        ("r</think><minimax:tool_call><invoke name=\"nope\"></invoke></minimax:tool_call>", ["unknown_tool"], ""),
        ("r</think>c[e~[ after", ["trailing_text"], "c"),
        ("r</think><minimax:tool_call><invoke name=\"f\"><parameter name=\"s\">x[e~[", ["truncated_tool_call"],
         '<minimax:tool_call><invoke name="f"><parameter name="s">x'),
        ("r</think><minimax:tool_call><invoke name=\"f\"><parameter name=\"n\">1</parameter>"
         "<parameter name=\"n\">2</parameter></invoke></minimax:tool_call>", ["duplicate_parameter"], ""),
    ],
)
def test_malformed_output_degrades_to_content(text: str, kinds: list[str], content: str) -> None:
    events = assert_chunk_invariant(text, TOOLS, [2, 5])
    r = collect(events)
    assert [i.kind for i in r.issues] == kinds
    assert r.content == content


def test_ten_thousand_garbage_inputs_never_raise() -> None:
    rng = random.Random(0)
    for i in range(10_000):
        text = garbage(rng)
        events = whole(text, TOOLS if i % 2 else None, starts_in_think=bool(i % 3))
        assert all(isinstance(e, (ReasoningDelta, ContentDelta, ToolCallEvent, ParseIssue)) for e in events)
        if i % 10 == 0:  # chunk invariance on garbage too
            sizes = [rng.randint(1, 6) for _ in range(3)]
            chunked = feed_chunks(text, split_at(text, sizes), TOOLS if i % 2 else None, starts_in_think=bool(i % 3))
            assert coalesce(chunked) == coalesce(events), text


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(max_size=60) | st.lists(st.sampled_from(
    ["<minimax:tool_call>", "</minimax:tool_call>", "<invoke name=\"f\">", "</invoke>", "<parameter name=\"n\">",
     "</parameter>", "</think>", "[e~[", "\n", " ", "x", "1", "<", "<think>"]), max_size=20).map("".join),
       sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_arbitrary_text_is_chunk_invariant(text: str, sizes: list[int]) -> None:
    assert_chunk_invariant(text, TOOLS, sizes)


def test_feed_after_finish_is_an_error() -> None:
    p = M2StreamParser()
    p.finish()
    with pytest.raises(ValueError, match="after finish"):
        p.feed("x")
    with pytest.raises(TypeError, match="takes text"):
        M2StreamParser().feed(b"x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- sloppy schemas

CALL = ('x\n</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="a">{a}</parameter>\n'
        '<parameter name="b">{b}</parameter>\n</invoke>\n</minimax:tool_call>[e~[')


def _cyclic() -> dict:
    schema: dict = {"anyOf": [{"type": "integer"}]}
    schema["anyOf"] += [schema, schema]
    return schema


def _deep() -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(5000):
        schema = {"anyOf": [schema]}
    return schema


@pytest.mark.parametrize(("parameters", "a", "b", "want_a", "want_b"), [
    # the tool schema itself is not an object: every value stays a string
    (["a", "b"], "42", "null", "42", "null"),
    ("object", "42", "true", "42", "true"),
    (None, "42", "[1]", "42", "[1]"),
    (7, "42", "x", "42", "x"),
    # properties missing or malformed
    ({"type": "object"}, "42", "true", "42", "true"),
    ({"type": "object", "properties": None}, "42", "1.5", "42", "1.5"),
    ({"type": "object", "properties": ["a", "b"]}, "42", "{}", "42", "{}"),
    ({"type": "object", "properties": "a"}, "42", "x", "42", "x"),
    # a type list, and lists mixing unknown or non-string entries
    ({"properties": {"a": {"type": ["integer", "null"]}, "b": {"type": ["integer", "null"]}}}, "42", "null", 42, None),
    ({"properties": {"a": {"type": [{"x": 1}, 5, None, "integer"]}, "b": {"type": [[], {}]}}}, "42", "7", 42, "7"),
    # unknown type names are ignored; common aliases and capitalised names are understood
    ({"properties": {"a": {"type": "int"}, "b": {"type": "Boolean"}}}, "42", "false", 42, False),
    ({"properties": {"a": {"type": "float"}, "b": {"type": "str"}}}, "2.5", "007", 2.5, "007"),
    ({"properties": {"a": {"type": "dict"}, "b": {"type": "list"}}}, '{"k": 1}', "[1]", {"k": 1}, [1]),
    ({"properties": {"a": {"type": "decimal"}, "b": {"type": "uuid"}}}, "42", "null", "42", "null"),
    # a bare type name (or list of names) in place of a parameter schema
    ({"properties": {"a": "integer", "b": ["number", "null"]}}, "42", "null", 42, None),
    # enum / anyOf / type of the wrong JSON kind
    ({"properties": {"a": {"enum": 3}, "b": {"enum": "abc"}}}, "42", "abc", "42", "abc"),
    ({"properties": {"a": {"anyOf": 3}, "b": {"oneOf": "integer"}}}, "42", "42", "42", "42"),
    ({"properties": {"a": {"anyOf": {"type": "integer"}}, "b": {"type": 5}}}, "42", "42", 42, "42"),
    ({"properties": {"a": {"$ref": "#/$defs/n"}, "b": {"nullable": "yes"}}}, "42", "null", "42", "null"),
    # self-referencing and very deeply nested schemas
    ({"properties": {"a": _cyclic(), "b": _deep()}}, "42", "42", 42, "42"),
])
def test_sloppy_schemas_never_raise(parameters, a: str, b: str, want_a, want_b) -> None:
    text = CALL.format(a=a, b=b)
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    for chunking in ([text], list(text)):  # whole and one character at a time
        p = M2StreamParser(tools)
        events = [e for c in chunking for e in p.feed(c)] + p.finish()
        r = collect(events)
        assert r.tool_calls == [ToolCall("f", {"a": want_a, "b": want_b})]
        assert r.issues == [] and r.reasoning == "x" and r.content == ""
    assert parse_m2(text, [{"name": "f", "parameters": parameters}]).tool_calls == r.tool_calls


def test_a_value_that_fits_no_readable_type_is_still_reported() -> None:
    tools = [{"name": "f", "parameters": {"properties": {"a": {"type": "INTEGER"}, "b": {"type": ["bool", 3]}}}}]
    r = parse_m2(CALL.format(a="many", b="maybe"), tools)
    assert r.tool_calls == [ToolCall("f", {"a": "many", "b": "maybe"})]
    assert [i.kind for i in r.issues] == ["invalid_value", "invalid_value"]
