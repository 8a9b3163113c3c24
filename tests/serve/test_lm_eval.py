"""lm-evaluation-harness's own clients against `xinzhou serve` (slow; skipped unless `lm_eval` is installed:
`pip install "lm_eval[api]"`). `local-completions`: its loglikelihood requests (token-id prompts, `echo`,
`max_tokens: 1`, `logprobs: 1`) give the engine's own scores of the continuation and `generate_until` the engine's
greedy text, with the checkpoint's tokenizer loaded by lm-eval or with the server's (auto-detected).
`local-chat-completions`: the answer without the thinking."""

from __future__ import annotations

import pytest

from xinzhou.engine import SamplingParams

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

PAIRS = [("The sea is", " calm"), ("A robot and", " a cat"), ("Tea", " is hot and sweet")]


@pytest.mark.parametrize("backend", ["huggingface", "auto"])  # auto: the server's /tokenize (vLLM's endpoints)
def test_lm_eval_local_completions_scores_and_generates_like_the_engine(tiny_server, tiny_checkpoint, backend):
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from xinzhou.engine import LLM

    server, _ = tiny_server
    kw = {"tokenizer": str(tiny_checkpoint)} if backend == "huggingface" else {}
    lm = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model="tiny", tokenizer_backend=backend,
                             batch_size=2, max_retries=1, **kw)
    assert lm.tokenizer_backend == ("remote" if backend == "auto" else backend)
    local = LLM(str(tiny_checkpoint))
    tok = local.engine.tokenizer
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)])
    for (ctx, cont), (ll, greedy) in zip(PAIRS, got):
        ctx_ids, cont_ids = tok.encode(ctx), tok.encode(cont)
        s = local.engine.score(ctx_ids + cont_ids, top_logprobs=1)
        n = len(ctx_ids)
        assert ll == pytest.approx(sum(s.logprobs[n:]), abs=1e-4)
        assert greedy == all(t == top[0][0] for t, top in zip(cont_ids, s.top_logprobs[n:]))
    gen = lm.generate_until([Instance("generate_until", {}, ("The sea is", {"until": ["\n"], "max_gen_toks": 8}), 0)])
    want = local.generate(["The sea is"], SamplingParams(max_tokens=8, temperature=0, stop=["\n"]))[0].text
    assert gen == [want]


def test_lm_eval_local_chat_completions_reads_the_answer_not_the_thinking(scripted):
    """``local-chat-completions`` (chat tasks, ``--apply_chat_template``) over a scripted model that thinks, then
    answers: lm-eval's ``generate_until`` gets the answer alone (the thinking goes to ``reasoning_content``), the
    server rendered lm-eval's messages with the chat template, and lm-eval's ``until`` reached the engine as stop
    strings."""
    import json

    from lm_eval.api.instance import Instance
    from lm_eval.models.api_models import JsonChatStr
    from lm_eval.models.openai_completions import LocalChatCompletion

    from tests.serve.scripted import completion

    server, backend = scripted([completion("The user asks about the sea.", "The sea is wide.")], model_id="tiny")
    lm = LocalChatCompletion(base_url=server.url + "/v1/chat/completions", model="tiny", max_retries=1)
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    got = lm.generate_until([Instance("generate_until", {}, (JsonChatStr(json.dumps(messages)),
                                                             {"until": ["Q:"], "max_gen_toks": 64}), 0)])
    assert got == ["The sea is wide."]
    assert "Tell me about the sea." in backend.prompts[-1] and backend.prompts[-1].endswith("<think>\n")
    assert "Q:" in backend.params[-1].stop_strings and backend.params[-1].max_tokens == 64
