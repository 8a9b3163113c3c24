"""The unmodified `openai` SDK against a real server over a scripted model: exact outputs, streaming deltas as the
SDK parses them, the tool round trip with the first turn's thinking in the second prompt, typed arguments,
every input shape of prior reasoning, n, stop, length and tool_choice."""

from __future__ import annotations

import json

import openai
import pytest

from tests.serve.scripted import completion
from xinzhou.chat import GENERATION_PROMPT

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "zip": {"type": "string"}, "days": {"type": "integer"},
        "metric": {"type": "boolean"}, "note": {"type": ["string", "null"]}}, "required": ["city"]}}}]
ARGS = {"city": "Paris", "zip": "02134", "days": 3, "metric": True, "note": "none"}
THINK1 = "The user wants the weather. I should call get_weather for Paris."
CALL = completion(THINK1, "", [("get_weather", ARGS)])
ANSWER = completion("The tool says sunny, 21 degrees.", "It is sunny in Paris (21 °C).")
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def accumulate(stream):
    """Reassemble a streamed completion the way SDK users do: text, reasoning and tool calls by index."""
    out = {"content": "", "reasoning_content": "", "reasoning": "", "details": "", "calls": {}, "finish": None,
           "usage": None, "roles": 0}
    for chunk in stream:
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for ch in chunk.choices:
            d = ch.delta
            out["roles"] += d.role == "assistant"
            out["content"] += d.content or ""
            extra = d.model_extra or {}
            out["reasoning_content"] += extra.get("reasoning_content") or ""
            out["reasoning"] += extra.get("reasoning") or ""
            out["details"] += "".join(x["text"] for x in extra.get("reasoning_details") or [])
            for tc in d.tool_calls or []:
                slot = out["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert slot["id"] is None, "the id comes once, in the first delta of a call"
                    slot["id"], slot["name"] = tc.id, tc.function.name
                    assert tc.type == "function"
                slot["arguments"] += tc.function.arguments or ""
            out["finish"] = ch.finish_reason or out["finish"]
    return out


def test_non_streaming_tool_call_with_reasoning_and_typed_arguments(scripted):
    server, _ = scripted([CALL])
    r = client(server).chat.completions.create(model="scripted", messages=USER, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    msg = choice.message
    assert msg.content is None
    assert msg.model_extra["reasoning_content"] == msg.model_extra["reasoning"] == THINK1
    assert msg.model_extra["reasoning_details"] == [{"type": "reasoning.text", "text": THINK1, "index": 0}]
    (call,) = msg.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGS  # "02134" stays a string, 3 an int, "none" a string
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming(scripted):
    server, _ = scripted([CALL], chunk=2)
    c = client(server)
    whole = c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS).choices[0].message
    s = accumulate(c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS, stream=True,
                                             stream_options={"include_usage": True}))
    assert s["roles"] == 1 and s["finish"] == "tool_calls"
    assert s["reasoning_content"] == s["reasoning"] == s["details"] == whole.model_extra["reasoning_content"]
    assert s["content"] == ""
    assert [(v["name"], json.loads(v["arguments"])) for v in s["calls"].values()] == [("get_weather", ARGS)]
    assert s["usage"].completion_tokens > 0 and s["usage"].prompt_tokens > 0


def test_streaming_with_the_sdk_helper(scripted):
    server, _ = scripted([ANSWER])
    with client(server).chat.completions.stream(model="scripted", messages=USER) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "It is sunny in Paris (21 °C)."
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_keeps_the_first_turns_thinking(scripted, stream):
    server, backend = scripted([CALL, ANSWER])
    c = client(server)
    first = c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS).choices[0].message
    call = first.tool_calls[0]
    history = USER + [first.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"}]
    if stream:
        out = accumulate(c.chat.completions.create(model="scripted", messages=history, tools=TOOLS, stream=True))
        content, finish = out["content"], out["finish"]
    else:
        r = c.chat.completions.create(model="scripted", messages=history, tools=TOOLS).choices[0]
        content, finish = r.message.content, r.finish_reason
    assert (content, finish) == ("It is sunny in Paris (21 °C).", "stop")
    p1, p2 = backend.prompts
    assert THINK1 in p2 and f"<think>\n{THINK1}\n</think>" in p2
    # append-only: the second prompt extends the first prompt plus what the model wrote (engine state reuse)
    assert p2.startswith(p1 + CALL)
    assert p2.endswith("<response>sunny, 21 degrees</response>[e~[\n" + GENERATION_PROMPT)


@pytest.mark.parametrize("shape", ["reasoning_content", "reasoning", "reasoning_details", "inline"])
def test_prior_thinking_is_read_from_every_shape(scripted, shape):
    server, backend = scripted([ANSWER])
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    if shape == "reasoning_details":
        assistant["reasoning_details"] = [{"type": "reasoning.text", "text": THINK1[:20]},
                                          {"type": "reasoning.text", "text": THINK1[20:]}]
    elif shape == "inline":
        assistant["content"] = f"<think>\n{THINK1}\n</think>\n\n"
    else:
        assistant[shape] = THINK1
    messages = USER + [assistant, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client(server).chat.completions.create(model="scripted", messages=messages, tools=TOOLS)
    assert f"<think>\n{THINK1}\n</think>\n\n\n<minimax:tool_call>" in backend.prompts[0]


def test_thinking_of_earlier_user_turns_is_dropped(scripted):
    server, backend = scripted([ANSWER])
    messages = USER + [{"role": "assistant", "content": "Sunny.", "reasoning_content": "OLD THOUGHT"},
                       {"role": "user", "content": "And tomorrow?"}]
    client(server).chat.completions.create(model="scripted", messages=messages)
    assert "OLD THOUGHT" not in backend.prompts[0] and "Sunny." in backend.prompts[0]


def test_n_choices_get_distinct_seeds(scripted):
    server, backend = scripted([ANSWER])
    r = client(server).chat.completions.create(model="scripted", messages=USER, n=3, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == "It is sunny in Paris (21 °C)." for c in r.choices)
    assert [p.seed for p in backend.params] == [5, 6, 7]
    s = accumulate(client(server).chat.completions.create(model="scripted", messages=USER, n=2, stream=True))
    assert s["roles"] == 2 and s["content"] == 2 * "It is sunny in Paris (21 °C)."


def test_stop_length_and_sampling_parameters_reach_the_backend(scripted):
    server, backend = scripted([ANSWER])
    c = client(server)
    r = c.chat.completions.create(model="scripted", messages=USER, stop=["Paris"], temperature=0.3, top_p=0.9,
                                  max_completion_tokens=500)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "It is sunny in "
    p = backend.params[0]
    assert (p.temperature, p.top_p, p.max_tokens, p.stop_strings) == (0.3, 0.9, 500, ("Paris",))
    r = c.chat.completions.create(model="scripted", messages=USER, max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def test_tool_choice(scripted):
    plain = completion("No tool needed, I know this.", "Sunny.")
    server, backend = scripted([plain])
    c = client(server)
    # none: the tools are not offered to the model
    r = c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS, tool_choice="none")
    assert "<tools>" not in backend.prompts[-1] and r.choices[0].message.content == "Sunny."
    # named: the server writes the call header after the thinking, the model continues with the arguments
    def reply(prompt: str) -> str:
        if prompt.endswith(GENERATION_PROMPT):
            return plain
        rest = '<parameter name="city">Rome</parameter>\n</invoke>\n</minimax:tool_call>[e~['
        return rest if prompt.endswith('">\n') else 'get_weather">\n' + rest

    backend.replies = reply
    r = c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS,
                                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.model_extra["reasoning_content"] == "No tool needed, I know this."
    assert [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls] == [("get_weather",
                                                                                              {"city": "Rome"})]
    assert backend.prompts[-1].endswith('</think>\n\n\n<minimax:tool_call>\n<invoke name="get_weather">\n')
    s = accumulate(c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS, tool_choice="required",
                                             stream=True))
    assert backend.prompts[-1].endswith('<invoke name="')
    assert s["finish"] == "tool_calls" and s["reasoning_content"] == "No tool needed, I know this."
    assert [(v["name"], json.loads(v["arguments"])) for v in s["calls"].values()] == [("get_weather", {"city": "Rome"})]


def test_parallel_tool_calls_false_keeps_the_first_call(scripted):
    two = completion("Two cities.", "", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])
    server, _ = scripted([two])
    c = client(server)
    assert len(c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS).choices[0].message.tool_calls) == 2
    r = c.chat.completions.create(model="scripted", messages=USER, tools=TOOLS, parallel_tool_calls=False)
    assert [json.loads(t.function.arguments)["city"] for t in r.choices[0].message.tool_calls] == ["Paris"]


def test_models_and_health(scripted):
    server, _ = scripted([ANSWER])
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["scripted"]
    import httpx

    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "scripted"
