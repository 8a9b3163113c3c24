"""The unmodified `anthropic` SDK against a real server over a scripted model: thinking / text / tool_use blocks,
the full SSE event sequence, stop reasons, and the tool round trip where tool_result blocks keep the chain's
thinking in the second prompt."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.serve.scripted import completion

TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"},
                                     "days": {"type": "integer"}}, "required": ["city"]}}]
ARGS = {"city": "Paris", "zip": "02134", "days": 3}
THINK1 = "The user wants the weather; call get_weather."
CALL = completion(THINK1, "Let me check.", [("get_weather", ARGS)])
ANSWER = completion("Sunny per the tool.", "It is sunny in Paris.")
USER = [{"role": "user", "content": "Weather in Paris?"}]


def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=30)


def test_non_streaming_blocks_and_stop_reason(scripted):
    server, _ = scripted([CALL])
    m = client(server).messages.create(model="scripted", max_tokens=200, messages=USER, tools=TOOLS)
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool = m.content
    assert thinking.thinking == THINK1 and thinking.signature
    assert text.text == "Let me check."
    assert tool.id.startswith("toolu_") and tool.name == "get_weather" and tool.input == ARGS
    assert m.stop_reason == "tool_use" and m.usage.output_tokens > 0 and m.usage.input_tokens > 0


def test_stream_event_sequence_and_final_message(scripted):
    server, _ = scripted([CALL], chunk=2)
    c = client(server)
    with c.messages.stream(model="scripted", max_tokens=200, messages=USER, tools=TOOLS) as stream:
        events = [e for e in stream]
        final = stream.get_final_message()
    raw = [e.type if e.type != "content_block_delta" else e.delta.type for e in events
           if e.type in ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop")]
    compact = [t for i, t in enumerate(raw) if i == 0 or t != raw[i - 1]]
    assert compact == ["message_start", "content_block_start", "thinking_delta", "signature_delta",
                       "content_block_stop", "content_block_start", "text_delta", "content_block_stop",
                       "content_block_start", "input_json_delta", "content_block_stop", "message_delta",
                       "message_stop"]
    whole = c.messages.create(model="scripted", max_tokens=200, messages=USER, tools=TOOLS)
    assert [b.type for b in final.content] == [b.type for b in whole.content]
    assert final.content[0].thinking == THINK1 and final.content[2].input == ARGS
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_keeps_thinking(scripted, stream):
    server, backend = scripted([CALL, ANSWER])
    c = client(server)
    first = c.messages.create(model="scripted", max_tokens=300, messages=USER, tools=TOOLS)
    tool = first.content[-1]
    history = USER + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id,
                                                    "content": [{"type": "text", "text": "sunny"}]}]}]
    if stream:
        with c.messages.stream(model="scripted", max_tokens=300, messages=history, tools=TOOLS) as s:
            final = s.get_final_message()
    else:
        final = c.messages.create(model="scripted", max_tokens=300, messages=history, tools=TOOLS)
    assert final.content[-1].text == "It is sunny in Paris." and final.stop_reason == "end_turn"
    p1, p2 = backend.prompts
    assert f"<think>\n{THINK1}\n</think>\n\nLet me check." in p2
    assert p2.startswith(p1 + CALL) and "<response>sunny</response>" in p2


def test_unsigned_thinking_blocks_are_accepted(scripted):
    server, backend = scripted([ANSWER])
    history = USER + [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Mini-Agent style, no signature"},
                                          {"type": "tool_use", "id": "t1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}]
    client(server).messages.create(model="scripted", max_tokens=100, messages=history, tools=TOOLS,
                                   system="Be brief.")
    prompt = backend.prompts[0]
    assert "<think>\nMini-Agent style, no signature\n</think>" in prompt and "]~b]system\nBe brief." in prompt


def test_stop_reasons_max_tokens_and_stop_sequence(scripted):
    server, backend = scripted([ANSWER])
    c = client(server)
    m = c.messages.create(model="scripted", max_tokens=3, messages=USER)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3
    m = c.messages.create(model="scripted", max_tokens=300, messages=USER, stop_sequences=["Paris"])
    assert (m.stop_reason, m.stop_sequence, m.content[-1].text) == ("stop_sequence", "Paris", "It is sunny in ")


def test_thinking_disabled_hides_thinking_and_tool_choice_none(scripted):
    server, backend = scripted([ANSWER])
    m = client(server).messages.create(model="scripted", max_tokens=100, messages=USER, tools=TOOLS,
                                       thinking={"type": "disabled"}, tool_choice={"type": "none"})
    assert [b.type for b in m.content] == ["text"] and "<tools>" not in backend.prompts[0]


def test_both_auth_headers_and_error_shape(scripted):
    from xinzhou.serve import ServerConfig

    server, _ = scripted([ANSWER], config=ServerConfig(api_key="sekret"))
    assert client(server).with_options(api_key="sekret").messages.create(
        model="scripted", max_tokens=10, messages=USER).content
    r = httpx.post(server.url + "/v1/messages", headers={"x-api-key": "sekret", "anthropic-version": "2023-06-01"},
                   json={"model": "scripted", "max_tokens": 5, "messages": USER})
    assert r.status_code == 200 and r.json()["type"] == "message"
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(server).messages.create(model="scripted", max_tokens=10, messages=USER)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        client(server).with_options(api_key="sekret").messages.create(model="claude-x", max_tokens=10, messages=USER)


def test_sampling_extensions_reach_the_engine():
    """``seed``, ``top_k`` and vLLM's ``ignore_eos`` are accepted on Messages as on Chat Completions."""
    from xinzhou.serve import ServerConfig
    from xinzhou.serve.anthropic_protocol import MessagesRequest, to_job

    body = {"model": "m", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}], "seed": 3, "top_k": 5,
            "ignore_eos": True, "temperature": 0.5}
    params = to_job(MessagesRequest.model_validate(body), ServerConfig()).params
    assert (params.max_tokens, params.seed, params.top_k, params.ignore_eos, params.temperature) == (7, 3, 5, True, 0.5)
    del body["ignore_eos"]
    assert to_job(MessagesRequest.model_validate(body), ServerConfig()).params.ignore_eos is False
