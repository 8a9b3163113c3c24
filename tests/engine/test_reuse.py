"""State reuse for append-only conversations: a request that extends an earlier one prefills only its new tokens
and gets exactly what a cold start gets; forced tokens (tool results) carry mask 0; the prefix cache stays within
its memory bound."""

from __future__ import annotations

import torch

from tests.engine.conftest import ByteTokenizer, greedy_reference, prompts_of
from xinzhou.engine import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=True)


def _cold(model, prompt, params):
    return LLM(model, prefix_cache_bytes=0).generate([prompt], params)[0]


def test_next_turn_prefills_only_new_tokens_and_equals_cold_start(text01):
    llm = LLM(text01)
    p1 = prompts_of([12])[0]
    o1 = llm.generate([p1], GREEDY)[0]
    assert o1.num_cached_tokens == 0
    p2 = o1.all_token_ids + prompts_of([5], seed=9)[0]  # the next turn: history + new user tokens
    o2 = llm.generate([p2], GREEDY)[0]
    assert o2.num_cached_tokens == len(o1.all_token_ids) - 1  # the last sampled token was never computed
    cold = _cold(text01, p2, GREEDY)
    assert o2.token_ids == cold.token_ids == greedy_reference(text01, p2, 8)
    assert torch.allclose(torch.tensor(o2.logprobs), torch.tensor(cold.logprobs), atol=1e-5)


def test_sampled_turns_reuse_equals_cold_start(m2):
    llm = LLM(m2)
    params = SamplingParams(max_tokens=6, temperature=1.0, top_k=20, seed=3, ignore_eos=True)
    prompt = prompts_of([7])[0]
    for turn in range(4):
        out = llm.generate([prompt], params)[0]
        assert out.token_ids == _cold(m2, prompt, params).token_ids
        assert (out.num_cached_tokens > 0) == (turn > 0)
        prompt = out.all_token_ids + [turn + 1, turn + 2]


def test_diverging_history_falls_back_to_the_prompt_checkpoint(text01):
    llm = LLM(text01)
    p1 = prompts_of([10])[0]
    o1 = llm.generate([p1], GREEDY)[0]
    p2 = p1 + [(t + 1) % 300 for t in o1.token_ids]  # re-tokenised differently after the prompt
    o2 = llm.generate([p2], GREEDY)[0]
    assert o2.num_cached_tokens == len(p1)
    assert o2.token_ids == _cold(text01, p2, GREEDY).token_ids


def test_repeated_prompt_needs_no_forward(text01):
    llm = LLM(text01)
    p = prompts_of([9])[0]
    params = SamplingParams(max_tokens=5, temperature=0.8, seed=11, ignore_eos=True)
    a = llm.generate([p], params)[0]
    b = llm.generate([p, p], params)
    assert [o.num_cached_tokens for o in b] == [len(p), len(p)]
    assert b[0].token_ids == b[1].token_ids == a.token_ids


def test_forced_tokens_have_mask_zero_and_match_a_cold_start(text01):
    llm = LLM(text01)
    p = prompts_of([6])[0]
    o1 = llm.generate([p], GREEDY)[0]
    tool = prompts_of([4], seed=5)[0]
    o2 = llm.continue_(o1, tool, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=True))[0]
    assert o2.prompt_token_ids == p
    assert o2.token_ids[:8] == o1.token_ids and o2.token_ids[8:12] == tool
    assert o2.mask == [1] * 8 + [0] * 4 + [1] * 5
    assert o2.logprobs[8:12] == [None] * 4 and all(x is not None for x in o2.logprobs[12:])
    assert o2.num_cached_tokens == len(p) + 8 - 1  # only the last sample and the tool tokens were prefilled
    assert o2.token_ids[12:] == greedy_reference(text01, p + o1.token_ids + tool, 5)
    o3 = llm.continue_([o2], [[]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))[0]
    assert o3.mask == o2.mask + [1, 1]


def test_text_turns_reuse_through_the_tokenizer(text01):
    llm = LLM(text01, tokenizer=ByteTokenizer())
    prompt = "user: hi\nai:"
    out = llm.generate(prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    nxt = prompt + out.text + "\nuser: and?\nai:"
    out2 = llm.generate([nxt], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    assert out2.num_cached_tokens >= len(prompt.encode())


def test_prefix_cache_is_bounded_and_merges_a_conversation(text01):
    llm = LLM(text01)
    prompt = prompts_of([20])[0]
    for _ in range(3):  # one growing conversation: one entry, one KV buffer
        prompt = llm.generate([prompt], GREEDY)[0].all_token_ids + [1, 2, 3]
    assert len(llm.engine.prefix) == 1
    budget = int(llm.engine.prefix.nbytes * 1.5)
    small = LLM(text01, prefix_cache_bytes=budget)
    prompts = prompts_of([30, 31, 32, 33])
    for p in prompts:
        small.generate([p], GREEDY)
        assert small.engine.prefix.nbytes <= budget
    assert len(small.engine.prefix) < 4  # least recently used entries were evicted
    assert small.generate([prompts[-1]], GREEDY)[0].num_cached_tokens == 30 + 3
    assert small.generate([prompts[0]], GREEDY)[0].num_cached_tokens == 0
    tiny = LLM(text01, prefix_cache_bytes=100)  # an entry larger than the whole budget is not kept
    tiny.generate([prompt], GREEDY)
    assert len(tiny.engine.prefix) == 0
