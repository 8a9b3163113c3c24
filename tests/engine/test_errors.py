"""Bad requests fail with a clear ValueError before they reach the batch, and one failing request never breaks the
others: they finish with exactly the tokens they get alone."""

from __future__ import annotations

import pytest

from tests.engine.conftest import ByteTokenizer, greedy_reference, prompts_of
from xinzhou.engine import LLM, EngineConfig, SamplingParams


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 0}, "max_tokens must be an int >= 1"),
    ({"max_tokens": -3}, "max_tokens must be an int >= 1"),
    ({"temperature": -0.1}, "temperature must be"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be an int >= 0"),
    ({"stop": [1.5]}, "unknown stop type float .* valid options: str .* or int"),
    ({"stop": [b"x"]}, "unknown stop type bytes"),
    ({"stop": [""]}, "non-empty"),
    ({"stop": 3.0}, "stop must be a str, an int token id, or an iterable"),
    ({"repetition_stop": (0, 0.99)}, "repetition_stop must be"),
    ({"seed": "7"}, "seed must be an int"),
    ({"top_logprobs": 21, "logprobs": True}, r"top_logprobs must be an int in \[0, 20\], got 21"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs=True"),
    ({"top_logprobs": 2, "logprobs": True, "logprobs_mode": "processed"}, "logprobs_mode='raw'"),
    ({"logprobs_mode": "sampled"}, "logprobs_mode must be one of 'raw', 'processed', got 'sampled'"),
])
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_engine_config():
    with pytest.raises(ValueError, match="valid options: fast, model"):
        EngineConfig(decode_impl="turbo")
    with pytest.raises(ValueError, match="max_num_seqs must be an int >= 1"):
        EngineConfig(max_num_seqs=0)


def test_bad_prompts(text01):
    llm = LLM(text01, max_model_len=32)
    cases = [
        ([[]], "prompt 0: the prompt is empty"),
        (["hi"], "needs a tokenizer"),
        ([[1, 2, 300]], r"token ids must be in \[0, 300\)"),
        ([[1, 2.0]], "token ids must be ints"),
        ([list(range(32))], "the prompt has 32 tokens but the model's context is 32"),
    ]
    for prompts, match in cases:
        with pytest.raises(ValueError, match=match):
            llm.generate(prompts, SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="stop strings .* need a tokenizer"):
        llm.generate([[1, 2]], SamplingParams(stop="\n"))
    with pytest.raises(ValueError, match=r"stop token ids \[999\] are outside"):
        llm.generate([[1, 2]], SamplingParams(stop=999))
    with pytest.raises(ValueError, match="unknown engine option"):
        LLM(text01, max_seqs=3)
    with pytest.raises(ValueError, match="prompt 0: the prompt is empty"):
        LLM(text01, tokenizer=ByteTokenizer()).generate("", SamplingParams(max_tokens=2))


def test_a_bad_prompt_in_a_batch_queues_nothing(text01):
    llm = LLM(text01)
    with pytest.raises(ValueError, match="prompt 1: the prompt is empty"):
        llm.generate([[1, 2, 3], [], [4, 5]], SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished()
    assert llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0))[0].finish_reason == "length"


def test_rejected_request_leaves_the_running_batch_intact(text01):
    eng = LLM(text01).engine
    prompts = prompts_of([5, 9])
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    ids = [eng.add_request(p, params) for p in prompts]
    eng.step()
    for bad in ([], [1] * 100_000, [-1]):
        with pytest.raises(ValueError):
            eng.add_request(bad, params)
    while eng.has_unfinished():
        eng.step()
    for r, p in zip(ids, prompts):
        assert eng.pop_output(r).token_ids == greedy_reference(text01, p, 6)


class PoisonTokenizer(ByteTokenizer):
    """Fails to decode one token id, as a broken detokeniser would."""

    def __init__(self, poison: int) -> None:
        self.poison = poison

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if self.poison in ids:
            raise RuntimeError("cannot decode")
        return super().decode(ids)


def test_a_failing_request_does_not_break_the_others(text01):
    a = prompts_of([6])[0]
    poison = greedy_reference(text01, a, 1)[0]
    b = next(p for p in prompts_of([4, 5, 6, 7, 8, 9], seed=2) if poison not in greedy_reference(text01, p, 5))
    llm = LLM(text01, tokenizer=PoisonTokenizer(poison))
    out = llm.generate([a, b], [SamplingParams(max_tokens=5, temperature=0, stop="zz"),
                                SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)])
    assert out[0].finish_reason == "error" and "cannot decode" in out[0].error
    assert out[1].finish_reason == "length" and out[1].token_ids == greedy_reference(text01, b, 5)
    assert llm.cache_bytes()["sequences"] == 0  # the failed request's slot was freed
