"""Malformed and refused requests get 4xx JSON errors in the shape of the API they were sent to, and the server
keeps serving: bad JSON, wrong types, unknown model and route, body size, API key, limits, context length, and a
failure inside one request while others run."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.serve.scripted import FAIL, completion
from xinzhou.serve import ServerConfig

ANSWER = completion("Thinking.", "Answer.")
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
MSGS = {"model": "scripted", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
OPENAI, ANTHROPIC = "/v1/chat/completions", "/v1/messages"


def assert_error(r: httpx.Response, status: int, path: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    if path == ANTHROPIC:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        return body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]["message"]


@pytest.fixture
def server(scripted):
    srv, _ = scripted([ANSWER], config=ServerConfig(max_body_bytes=20_000, max_tokens_limit=1000, max_n=4),
                      max_model_len=2000)
    return srv


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_malformed_bodies(server, path):
    url = server.url + path
    json_headers = {"content-type": "application/json"}
    assert "not valid JSON" in assert_error(httpx.post(url, content=b'{"model": ', headers=json_headers), 400, path)
    assert "JSON object" in assert_error(httpx.post(url, content=b"[1, 2]", headers=json_headers), 400, path)
    assert_error(httpx.post(url, content=b"plain text"), 400, path)
    good = CHAT if path == OPENAI else MSGS
    for field, value in [("messages", "hi"), ("messages", []), ("model", 3), ("temperature", "hot"),
                         ("max_tokens", -1), ("stream", {"x": 1}), ("top_p", 0)]:
        msg = assert_error(httpx.post(url, json={**good, field: value}), 400, path)
        assert field in msg
    bad_role = {**good, "messages": [{"role": "robot", "content": "hi"}]}
    assert_error(httpx.post(url, json=bad_role), 400, path)
    assert httpx.post(url, json=good).status_code == 200  # and it keeps serving


def test_conversation_errors_are_400(server):
    url = server.url + OPENAI
    orphan_tool = {**CHAT, "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}
    assert "tool" in assert_error(httpx.post(url, json=orphan_tool), 400, OPENAI)
    bad_args = {**CHAT, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}
    assert "JSON" in assert_error(httpx.post(url, json=bad_args), 400, OPENAI)
    image = {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert "image_url" in assert_error(httpx.post(url, json=image), 400, OPENAI)
    unknown_tool = {**CHAT, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    assert "tool" in assert_error(httpx.post(url, json=unknown_tool), 400, OPENAI)
    image = {**MSGS, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}
    assert "image" in assert_error(httpx.post(server.url + ANTHROPIC, json=image), 400, ANTHROPIC)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_unknown_model_and_route(server, path):
    good = CHAT if path == OPENAI else MSGS
    assert "does not exist" in assert_error(httpx.post(server.url + path, json={**good, "model": "gpt-9"}), 404, path)
    assert_error(httpx.get(server.url + path), 405, path)
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_limits(server, path):
    good = CHAT if path == OPENAI else MSGS
    url = server.url + path
    big = {**good, "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert "limit" in assert_error(httpx.post(url, json=big), 413, path)

    def chunked():  # no Content-Length: the limit holds while reading
        body = json.dumps(big).encode()
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    assert_error(httpx.post(url, content=chunked(), headers={"content-type": "application/json"}), 413, path)
    assert "at most 1000" in assert_error(httpx.post(url, json={**good, "max_tokens": 5000}), 400, path)
    long = {**good, "messages": [{"role": "user", "content": "y" * 9000}]}  # ~2250 "tokens" > 2000
    assert "context" in assert_error(httpx.post(url, json=long), 400, path)
    fits_alone = {**good, "messages": [{"role": "user", "content": "y" * 6000}], "max_tokens": 900}
    assert "maximum context length" in assert_error(httpx.post(url, json=fits_alone), 400, path)
    if path == OPENAI:
        assert "n is 5" in assert_error(httpx.post(url, json={**good, "n": 5}), 400, path)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_api_key(scripted, path):
    server, _ = scripted([ANSWER], config=ServerConfig(api_key="k3y"))
    url, good = server.url + path, (CHAT if path == OPENAI else MSGS)
    assert_error(httpx.post(url, json=good), 401, path)
    assert_error(httpx.post(url, json=good, headers={"authorization": "Bearer wrong"}), 401, path)
    assert_error(httpx.get(server.url + "/v1/models"), 401, OPENAI)
    assert httpx.post(url, json=good, headers={"authorization": "Bearer k3y"}).status_code == 200
    assert httpx.post(url, json=good, headers={"x-api-key": "k3y"}).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # liveness stays open
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_concurrency_limit_is_429_and_frees_up(scripted):
    server, backend = scripted([ANSWER * 20], config=ServerConfig(max_concurrent_requests=2), delay=0.05)

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            async with c.stream("POST", OPENAI, json={**CHAT, "stream": True}) as r1, \
                    c.stream("POST", ANTHROPIC, json={**MSGS, "max_tokens": 500, "stream": True}) as r2:
                assert r1.status_code == r2.status_code == 200
                third = await c.post(OPENAI, json=CHAT)
                fourth = await c.post(ANTHROPIC, json=MSGS)
            await asyncio.sleep(0.2)  # both streams were closed early: their places are free again
            return third, fourth, await c.post(OPENAI, json={**CHAT, "max_tokens": 5})

    third, fourth, later = asyncio.run(go())
    assert "concurrent" in assert_error(third, 429, OPENAI)
    assert_error(fourth, 429, ANTHROPIC)
    assert later.status_code == 200
    assert backend.counts["aborted"] == 2


def test_a_failing_request_does_not_take_others_down(scripted):
    server, _ = scripted(lambda prompt: FAIL if "boom" in prompt else ANSWER, delay=0.01)
    ok = {**CHAT, "stream": True}
    boom = {**CHAT, "messages": [{"role": "user", "content": "boom"}]}

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(c.post(OPENAI, json=ok), c.post(OPENAI, json=boom),
                                        c.post(OPENAI, json={**boom, "stream": True}),
                                        c.post(ANTHROPIC, json={**MSGS, "messages": boom["messages"], "stream": True}),
                                        c.post(ANTHROPIC, json=MSGS))

    good, failed, failed_stream, failed_anthropic, good2 = asyncio.run(go())
    assert good.status_code == good2.status_code == 200 and "[DONE]" in good.text
    assert "generation failed" in assert_error(failed, 500, OPENAI)
    assert '"error"' in failed_stream.text and failed_stream.text.rstrip().endswith("[DONE]")
    assert "event: error" in failed_anthropic.text
    assert httpx.post(server.url + OPENAI, json=CHAT).status_code == 200


def test_malformed_tool_schemas_are_400(server):
    for params in [{"properties": []}, {"properties": {"a": {"anyOf": 3}}}, {"properties": {"a": {"enum": 3}}},
                   {"type": 5}, {"properties": {"a": 5}}]:
        body = {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}]}
        assert "parameters" in assert_error(httpx.post(server.url + OPENAI, json=body), 400, OPENAI)
        body = {**MSGS, "tools": [{"name": "f", "input_schema": params}]}
        assert "parameters" in assert_error(httpx.post(server.url + ANTHROPIC, json=body), 400, ANTHROPIC)
