"""The engine computes what the model computes: greedy generation equals step-by-step argmax of full forwards;
a batch of mixed-length prompts gives each sequence what it gets alone; seeds reproduce samples; the fast decode
step equals the model's layers; logprobs equal the full forward's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.engine.conftest import VOCAB, greedy_reference, prompts_of, tiny_model
from xinzhou.engine import LLM, EngineConfig, SamplingParams
from xinzhou.engine.cache_manager import CacheManager
from xinzhou.engine.runner import ModelRunner

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("family", ["text01", "m2"])
def test_greedy_equals_stepwise_argmax_of_full_forwards(family, text01, m2):
    model = text01 if family == "text01" else m2
    prompts = prompts_of([1, 7, 23])
    outs = LLM(model).generate(prompts, GREEDY)
    for p, o in zip(prompts, outs):
        assert o.token_ids == greedy_reference(model, p, 10)
        assert o.finish_reason == "length" and o.mask == [1] * 10


def test_mixed_length_batch_equals_each_alone(text01):
    prompts = prompts_of([3, 40, 1, 17, 9, 64, 2])
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=True)
              for n in (12, 3, 8, 1, 15, 6, 10)]
    # small chunks and budget: prompts are split and sequences join and leave at different steps
    llm = LLM(text01, prefill_chunk_size=16, max_prefill_tokens=32, max_num_seqs=4, prefix_cache_bytes=0)
    batched = llm.generate(prompts, params)
    for p, sp, b in zip(prompts, params, batched):
        alone = LLM(text01, prefix_cache_bytes=0).generate([p], sp)[0]
        assert b.token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(b.logprobs), torch.tensor(alone.logprobs), atol=1e-4)


def test_same_seed_same_samples_whatever_the_batch(text01):
    p = prompts_of([5])[0]
    sp = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True)
    a = LLM(text01).generate([p], sp)[0].token_ids
    others = prompts_of([9, 2, 30], seed=1)
    batch = LLM(text01).generate([others[0], p, others[1], others[2]],
                                 [SamplingParams(max_tokens=7, temperature=1.0, seed=5), sp, GREEDY,
                                  SamplingParams(max_tokens=20, temperature=0.7, top_k=3)])
    assert batch[1].token_ids == a
    c = LLM(text01).generate([p], SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=124,
                                                 ignore_eos=True))[0].token_ids
    assert c != a


def test_logprobs_match_the_full_forward(text01):
    p = prompts_of([6])[0]
    o = LLM(text01).generate([p], SamplingParams(max_tokens=5, temperature=0.9, seed=0, logprobs=True,
                                                 ignore_eos=True))[0]
    with torch.no_grad():
        logits = text01(torch.tensor([p + o.token_ids])).logits[0].float()
    ref = torch.log_softmax(logits, -1)[len(p) - 1 : -1].gather(-1, torch.tensor(o.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(o.logprobs), ref, atol=1e-5)


def test_processed_logprobs_match_the_full_forward_at_the_temperature(text01):
    """``logprobs_mode="processed"``: log_softmax(logits / T) of the full forward; streaming reports the same."""
    p = prompts_of([6])[0]
    params = SamplingParams(max_tokens=6, temperature=0.6, seed=3, logprobs=True, logprobs_mode="processed",
                            ignore_eos=True)
    llm = LLM(text01)
    o = llm.generate([p], params)[0]
    with torch.no_grad():
        logits = text01(torch.tensor([p + o.token_ids])).logits[0].float()
    ref = torch.log_softmax(logits / 0.6, -1)[len(p) - 1 : -1].gather(-1, torch.tensor(o.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(o.logprobs), ref, atol=1e-5)
    raw = torch.log_softmax(logits, -1)[len(p) - 1 : -1].gather(-1, torch.tensor(o.token_ids)[:, None])[:, 0]
    assert not torch.allclose(ref, raw, atol=1e-3)  # the two modes really differ at T = 0.6
    streamed = [ev.logprob for ev in llm.stream(p, params)]
    assert torch.allclose(torch.tensor(streamed), ref, atol=1e-5)


def test_top_logprobs_are_the_full_forwards_most_likely_tokens(text01):
    """``top_logprobs=k``: per sampled token, the k largest raw logprobs of the full forward at that position, most
    likely first; the chosen token's own logprob is among them whenever it ranks in the top k. A continuation
    keeps the first request's entries and has None at forced tokens."""
    p = prompts_of([7])[0]
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=11, logprobs=True, top_logprobs=3, ignore_eos=True)
    llm = LLM(text01)
    o = llm.generate([p], params)[0]
    with torch.no_grad():
        logp = torch.log_softmax(text01(torch.tensor([p + o.token_ids])).logits[0].float(), -1)[len(p) - 1 : -1]
    vals, ids = logp.topk(3, dim=-1)
    assert len(o.top_logprobs) == 5
    for t, (tok, top) in enumerate(zip(o.token_ids, o.top_logprobs)):
        assert [i for i, _ in top] == ids[t].tolist()
        assert torch.allclose(torch.tensor([v for _, v in top]), vals[t], atol=1e-5)
        if tok in ids[t].tolist():
            assert dict(top)[tok] == pytest.approx(o.logprobs[t], abs=1e-5)
    streamed = [ev.top_logprobs for ev in llm.stream(p, params)]
    assert [[i for i, _ in s] for s in streamed] == [[i for i, _ in s] for s in o.top_logprobs]
    more = llm.continue_(o, forced=[1, 2], params=dataclasses.replace(params, max_tokens=2))[0]
    assert more.top_logprobs[:5] == o.top_logprobs and more.top_logprobs[5:7] == [None, None]
    assert all(len(t) == 3 for t in more.top_logprobs[7:]) and len(more.top_logprobs) == 9
    assert LLM(text01).generate([p], SamplingParams(max_tokens=2))[0].top_logprobs == [None, None]


@pytest.mark.parametrize("family", ["text01", "m2"])
def test_score_equals_the_full_forward_across_chunks(family, text01, m2):
    """``Engine.score``: each prompt token's logprob given the ones before, and the top-k, as one full forward
    gives them, with the prompt run in chunks (here 3 chunks of 7) over a private cache."""
    from xinzhou.engine.scoring import score_prompt

    model = text01 if family == "text01" else m2
    ids = prompts_of([20])[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)[:-1]
    for s in (score_prompt(model, ids, top_logprobs=2, chunk=7), LLM(model).score(ids, top_logprobs=2)):
        assert s.token_ids == ids and s.logprobs[0] is None and s.top_logprobs[0] is None
        ref = logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor(s.logprobs[1:]), ref, atol=1e-5)
        vals, top = logp.topk(2, dim=-1)
        assert [[i for i, _ in t] for t in s.top_logprobs[1:]] == top.tolist()
        assert torch.allclose(torch.tensor([[v for _, v in t] for t in s.top_logprobs[1:]]), vals, atol=1e-5)
    with pytest.raises(ValueError, match="top_logprobs must be an int in"):
        LLM(model).engine.score(ids, top_logprobs=21)
    with pytest.raises(ValueError, match="the prompt is empty"):
        LLM(model).engine.score([])


@pytest.mark.parametrize("family", ["text01", "m2"])
def test_fast_decode_equals_model_layers_on_ragged_rows(family, text01, m2):
    model = text01 if family == "text01" else m2
    lengths = [5, 1, 12, 7]
    logits = {}
    for impl in ("fast", "model"):
        cache = CacheManager(model.config, max_slots=4, dtype=torch.float32)
        runner = ModelRunner(model, cache, impl)
        slots = [cache.allocate() for _ in lengths]
        with torch.inference_mode():
            for s, p in zip(slots, prompts_of(lengths)):
                cache.reserve(20)
                runner.prefill(torch.tensor([p]), [s])
            out = [runner.decode(torch.tensor([1, 2, 3, 4])) for _ in range(3)]
        logits[impl] = torch.stack(out)
        assert cache.lengths == [n + 3 for n in lengths]
    assert (logits["fast"] - logits["model"]).abs().max() < 1e-4


def test_decode_impl_model_generates_the_same(text01):
    prompts = prompts_of([4, 11])
    fast = LLM(text01).generate(prompts, GREEDY)
    ref = LLM(text01, config=EngineConfig(decode_impl="model")).generate(prompts, GREEDY)
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]


def test_long_prompt_is_chunked_and_does_not_stall_decodes(text01):
    llm = LLM(text01, prefill_chunk_size=8, max_prefill_tokens=8)
    eng = llm.engine
    short = eng.add_request(prompts_of([3])[0], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    eng.step()  # the short prompt is prefilled and samples its first token
    long = eng.add_request(prompts_of([64], seed=3)[0], SamplingParams(max_tokens=2, temperature=0))
    per_step = []
    while any(r in eng._seqs for r in (long,)):
        per_step.append([e.request_id for e in eng.step()])
    assert len(per_step) >= 8  # 64 prompt tokens at 8 per step
    assert all(short in ids for ids in per_step[:8])  # the running decode got a token every step


def test_generation_stops_at_the_models_context(text01):
    llm = LLM(text01, max_model_len=20)
    out = llm.generate([prompts_of([15])[0]], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.all_token_ids) == 20


def test_stop_token_and_eos(text01):
    p = prompts_of([8])[0]
    ref = greedy_reference(text01, p, 10)
    stop_id = ref[4]
    first = ref.index(stop_id)
    o = LLM(text01).generate([p], SamplingParams(max_tokens=10, temperature=0, stop=[stop_id]))[0]
    assert o.token_ids == ref[: first + 1] and o.finish_reason == "stop"
    text01.config.eos_token_id = stop_id
    try:
        o = LLM(text01).generate([p], SamplingParams(max_tokens=10, temperature=0))[0]
        assert o.finish_reason == "stop" and o.token_ids[-1] == stop_id
        o = LLM(text01).generate([p], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
        assert o.finish_reason == "length"
    finally:
        text01.config.eos_token_id = None


def test_repetition_stop():
    model = tiny_model(seed=1)
    with torch.no_grad():  # uniform logits: every token has probability exactly 1/300
        model.lm_head.weight.zero_()
    p = prompts_of([4])[0]
    o = LLM(model).generate([p], SamplingParams(max_tokens=50, temperature=1.0, seed=0,
                                                repetition_stop=(5, 0.003), logprobs=True))[0]
    assert o.finish_reason == "repetition" and len(o.token_ids) == 5
    assert torch.allclose(torch.tensor(o.logprobs).exp(), torch.full((5,), 1 / VOCAB))
    o = LLM(model).generate([p], SamplingParams(max_tokens=50, temperature=1.0, seed=0, repetition_stop=(5, 0.004)))
    assert o[0].finish_reason == "length"


def test_streaming_yields_tokens_as_produced(text01):
    prompts = prompts_of([3, 10])
    llm = LLM(text01)
    events = list(llm.stream(prompts, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)))
    for i, p in enumerate(prompts):
        mine = [e for e in events if e.index == i]
        assert [e.token_id for e in mine] == greedy_reference(text01, p, 6)
        assert [e.finished for e in mine] == [False] * 5 + [True] and mine[-1].finish_reason == "length"
    last_of_0 = max(i for i, e in enumerate(events) if e.index == 0)
    assert any(e.index == 1 for e in events[:last_of_0])  # interleaved, not one request after the other


def test_closing_a_stream_aborts_its_requests(text01):
    llm = LLM(text01)
    it = llm.stream(prompts_of([3, 5]), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    next(it)
    it.close()
    assert not llm.engine.has_unfinished() and not llm.engine._outputs
    assert llm.cache_bytes()["sequences"] == 0


def test_cache_bytes_lightning_fixed_kv_grows(text01):
    llm = LLM(text01)
    eng = llm.engine
    eng.add_request(prompts_of([10])[0], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    eng.step()
    a = llm.cache_bytes()
    for _ in range(10):
        eng.step()
    b = llm.cache_bytes()
    cfg = text01.config
    assert a["lightning_state"] == b["lightning_state"] == cfg.num_linear_layers * 4 * 16 * 16 * 4
    per_token = cfg.num_full_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
    assert a["kv"] == 10 * per_token and b["kv"] == 20 * per_token
    assert b["allocated"] >= b["total"]
