"""`/v1/completions` (OpenAI's legacy text completions) through the official SDK on a real tiny model: prompt
scoring with ``echo`` (what lm-evaluation-harness's loglikelihood requests send) against a full forward computed
here, generation and its logprobs against the engine run directly, streaming equal to non-streaming, batched
prompts with ``n``, token-id prompts, and 4xx errors for requests that cannot run."""

from __future__ import annotations

import openai
import pytest
import torch

import xinzhou
from xinzhou.engine import LLM, SamplingParams

PROMPT = "The sea is calm and the"


@pytest.fixture(scope="module")
def client(tiny_server) -> openai.OpenAI:
    server, _ = tiny_server
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(tiny_checkpoint) -> LLM:
    return LLM(str(tiny_checkpoint))


def test_echo_scores_the_prompt_like_a_full_forward(client, local, tiny_checkpoint):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)
    c = r.choices[0]
    tok = local.engine.tokenizer
    ids = tok.encode(PROMPT)
    model = xinzhou.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    ref = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert c.text == PROMPT and "".join(c.logprobs.tokens) == PROMPT and c.finish_reason == "length"
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    assert torch.allclose(torch.tensor(c.logprobs.token_logprobs[1:]), ref, atol=1e-5)
    vals, top = logp[:-1].topk(3, dim=-1)
    for t in range(1, len(ids)):
        want = {tok.decode([i]): v for i, v in zip(top[t - 1].tolist(), vals[t - 1].tolist())}
        assert c.logprobs.top_logprobs[t].keys() == want.keys()
        assert all(abs(c.logprobs.top_logprobs[t][k] - v) < 1e-5 for k, v in want.items())
    offsets = [0]
    for t in c.logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(t))
    assert c.logprobs.text_offset == offsets
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0


def test_generation_and_its_logprobs_equal_the_engines(client, local):
    kw = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2,
          "extra_body": {"ignore_eos": True}}
    r = client.completions.create(**kw)
    c = r.choices[0]
    ref = local.generate([PROMPT], SamplingParams(max_tokens=8, temperature=0, logprobs=True, top_logprobs=2,
                                                  ignore_eos=True))[0]
    assert c.text == ref.text and c.finish_reason == "length" and r.usage.completion_tokens == 8
    assert torch.allclose(torch.tensor(c.logprobs.token_logprobs), torch.tensor(ref.logprobs), atol=1e-5)
    assert "".join(c.logprobs.tokens) == ref.text
    text, tokens = "", []
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        for ch in chunk.choices:
            text += ch.text
            tokens += ch.logprobs.tokens if ch.logprobs else []
        if chunk.usage:
            assert chunk.usage.completion_tokens == 8
    assert text == c.text and tokens == c.logprobs.tokens
    echoed = client.completions.create(**{**kw, "echo": True}).choices[0]
    assert echoed.text == PROMPT + c.text and echoed.logprobs.token_logprobs[0] is None
    assert echoed.logprobs.token_logprobs[-8:] == c.logprobs.token_logprobs


def test_batched_prompts_with_n_and_token_id_prompts(client, local):
    r = client.completions.create(model="tiny", prompt=["One", "Two words"], n=2, max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for i, p in enumerate(["One", "Two words"]):
        want = local.generate([p], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0].text
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == want
    ids = local.engine.tokenizer.encode(PROMPT)
    e = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True)
    assert e.choices[0].text == PROMPT and e.usage.prompt_tokens == len(ids) and e.choices[0].logprobs is None
    t = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True)  # tokenizer only, no forward
    assert t.choices[0].text == PROMPT and t.usage.prompt_tokens == len(ids) and t.choices[0].logprobs is None


@pytest.mark.parametrize("kw, status, match", [
    ({"max_tokens": 0}, 400, "only valid with echo"),
    ({"n": 9}, 400, "at most 8 choices"),
    ({"prompt": []}, 400, "prompt is empty"),
    ({"model": "other"}, 404, "does not exist"),
    ({"prompt": [10 ** 9]}, 400, "vocab_size"),
    ({"logprobs": 21}, 400, "logprobs"),
    ({"stop": [""]}, 400, "stop strings must be non-empty"),
])
def test_bad_completion_requests_are_4xx(client, kw, status, match):
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(**{"model": "tiny", "prompt": PROMPT, "max_tokens": 4, **kw})
    assert err.value.status_code == status and match in str(err.value)


def test_score_choices_example_matches_the_engine(tiny_server, local, monkeypatch, capsys):
    """``examples/score_choices.py`` (lm-evaluation-harness's loglikelihood request) prints, per choice, the sum of
    the answer tokens' logprobs that the engine's own scoring gives."""
    import runpy
    import sys
    from pathlib import Path

    server, _ = tiny_server
    script = Path(__file__).resolve().parents[2] / "examples" / "score_choices.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--base-url", server.url + "/v1"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    ns = runpy.run_path(str(script))
    tok = local.engine.tokenizer
    for choice in ns["CHOICES"]:
        s = local.engine.score(ns["QUESTION"] + choice)
        offset, total, n = 0, 0.0, 0
        for t, lp in zip(s.token_ids, s.logprobs):
            if offset + 1 > len(ns["QUESTION"]) and lp is not None:
                total, n = total + lp, n + 1
            offset += len(tok.decode([t]))
        assert f"{choice!r:>12}  log p = {total:9.4f}  ({n} tokens)" in out
    assert "best: " in out
