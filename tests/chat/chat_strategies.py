"""Hypothesis strategies for chat tests: conversations, assistant turns with typed tool calls, garbage output."""

from __future__ import annotations

import random
import re
from typing import Any

from hypothesis import strategies as st

from xinzhou.chat.template import EOS, SPECIAL_TOKENS, render_value
from xinzhou.chat.types import AssistantMessage, SystemMessage, ToolCall, ToolMessage, ToolSpec, UserMessage

# Text that stresses the format: tag fragments, newlines, quotes, non-ASCII; plus a little arbitrary text.
FRAGMENTS = ["</parameter>", "<parameter", "<invoke", "</invoke>", '<invoke name="f">', "<", ">", "\n", "\n\n",
             " ", "  ", "\t", '"', "'", "{", "}", "é", "中", "🙂", "null", "true", "42", "<think", "</think", "\\n",
             "a", "b", "x", "0", "1", "Paris", "\r", "\u2028", "\x00"]
text = st.one_of(st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join), st.text(max_size=4))
plain = st.text(st.sampled_from("abcxyz 019é中🙂\"\\\n<>/{}"), max_size=6)  # inside JSON values
# Any text, markers included: what the renderers must agree on.
any_text = st.lists(st.one_of(text, st.sampled_from(SPECIAL_TOKENS)), max_size=3).map("".join)
name = st.from_regex(r"[a-z][a-z0-9_\-\.]{0,8}", fullmatch=True)

_AMBIGUOUS = re.compile(r"</parameter>(\s*)(<parameter|</invoke>)")


def make_representable(s: str) -> str:
    """Edit `s` so M2 output can carry it: no markers, no `</parameter>` + `<parameter`/`</invoke>` sequence."""
    while not marker_free(s):
        for t in SPECIAL_TOKENS:
            s = s.replace(t, "")
    return _AMBIGUOUS.sub(r"</parameter>\1x\2", s)


def representable(rendered_value: str) -> bool:
    """What M2's unescaped format can carry in a parameter (docs/chat.md): no closing sequence, no end marker."""
    return not _AMBIGUOUS.search(rendered_value) and EOS not in rendered_value


def marker_free(s: str) -> bool:
    return not any(t in s for t in SPECIAL_TOKENS)


safe_text = text.map(make_representable)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                        st.floats(allow_nan=False, allow_infinity=False), plain)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=2),
                                                                st.dictionaries(plain, inner, max_size=2)),
                          max_leaves=3)

# (schema, strategy of values that round-trip unambiguously under it)
TYPED: list[tuple[dict[str, Any], Any]] = [
    ({"type": "string"}, safe_text),
    ({"type": "integer"}, st.integers(-(10**30), 10**30)),
    ({"type": "number"}, st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-1000, 1000))),
    ({"type": "boolean"}, st.booleans()),
    ({"type": "null"}, st.none()),
    ({"type": "array"}, st.lists(json_value, max_size=3)),
    ({"type": "object"}, st.dictionaries(plain, json_value, max_size=3)),
    ({"type": ["string", "null"]}, st.one_of(st.none(), safe_text.filter(lambda s: s.strip() != "null"))),
    ({"type": ["integer", "null"]}, st.one_of(st.none(), st.integers())),
    ({"anyOf": [{"type": "number"}, {"type": "null"}]}, st.one_of(st.none(), st.floats(allow_nan=False))),
    ({"enum": ["none", "low", "02134"]}, st.sampled_from(["none", "low", "02134"])),
    ({"type": "string", "nullable": True}, st.one_of(st.none(), st.sampled_from(["nil", "None", "x"]))),
]


@st.composite
def tool_with_call(draw: Any) -> tuple[ToolSpec, ToolCall]:
    """A tool spec with typed parameters and one call of it whose values fit."""
    params = draw(st.lists(name, max_size=3, unique=True))
    props, args = {}, {}
    for p in params:
        schema, values = draw(st.sampled_from(TYPED))
        props[p] = schema
        if draw(st.booleans()):
            args[p] = draw(values.filter(lambda v: representable(render_value(v)) and marker_free(render_value(v))))
    spec = ToolSpec(draw(name), draw(st.none() | plain), {"type": "object", "properties": props})
    return spec, ToolCall(spec.name, args)


@st.composite
def assistant_turn(draw: Any) -> tuple[list[ToolSpec], AssistantMessage]:
    """An assistant message (reasoning, content, parallel typed calls) that M2 output can represent exactly."""
    pairs = draw(st.lists(tool_with_call(), max_size=2, unique_by=lambda p: p[0].name))
    calls = [c for _, c in pairs] + [c for _, c in pairs[: draw(st.integers(0, 1))]]  # repeats = parallel calls
    reasoning = draw(safe_text)
    content = draw(safe_text)
    return [s for s, _ in pairs], AssistantMessage(content, reasoning, calls)


@st.composite
def conversation(draw: Any, *, raw_text: bool = True) -> tuple[list[Any], list[ToolSpec]]:
    """A valid conversation (dataclasses) and its tools: system?, user/assistant turns, runs of tool results."""
    t = any_text if raw_text else text
    msgs: list[Any] = []
    if draw(st.booleans()):
        msgs.append(SystemMessage(draw(t), draw(st.none() | st.just("2025-11-03")), draw(st.none() | t)))
    tools: list[ToolSpec] = []
    for _ in range(draw(st.integers(0, 3))):
        msgs.append(UserMessage(draw(t)))
        for _ in range(draw(st.integers(0, 2))):
            specs, turn = draw(assistant_turn())
            tools += [s for s in specs if s.name not in {x.name for x in tools}]
            turn.content = draw(st.sampled_from([turn.content, draw(t)]))
            turn.reasoning_content = draw(st.sampled_from([turn.reasoning_content, None, ""]))
            msgs.append(turn)
            if turn.tool_calls:
                for _ in range(draw(st.integers(1, 2))):
                    content = draw(st.one_of(t, st.lists(t, min_size=1, max_size=2)))
                    msgs.append(ToolMessage(content))
    return msgs, tools


def garbage(rng: random.Random, n_pieces: int = 12) -> str:
    """Random model-output-like garbage: markers, tag pieces, broken tags and random characters."""
    pieces = [*SPECIAL_TOKENS, *FRAGMENTS, '<parameter name="a">', '<parameter name=', "<invoke name='x'>",
              "<tool_calls>", "</tool_calls>", '{"name": "f", "arguments": {}}', "<end_of_sentence>", "}}", "[e~"]
    out = []
    for _ in range(rng.randint(0, n_pieces)):
        if rng.random() < 0.6:
            out.append(rng.choice(pieces))
        else:
            out.append("".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0x2FFF)]))
                               for _ in range(rng.randint(1, 5))))
    return "".join(out)


def split_at(s: str, sizes: list[int]) -> list[str]:
    """Cut `s` into chunks of the given sizes (cycled); the last chunk takes the rest."""
    chunks, i, k = [], 0, 0
    while i < len(s):
        n = sizes[k % len(sizes)] if sizes else len(s)
        chunks.append(s[i : i + n])
        i, k = i + n, k + 1
    return chunks
