"""Sampling filters against hand-computed distributions (temperature, top-k, top-p and their edge cases), the
inverse-CDF draw, per-row generators, and raw-model logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from xinzhou.engine.sampler import (
    Sampler,
    SampleRow,
    sample_from_probs,
    sampling_probs,
    token_logprobs,
)

P = [0.5, 0.3, 0.15, 0.05]


def probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    logits = torch.tensor([logits], dtype=torch.float32)
    return sampling_probs(logits, torch.tensor([temperature]), torch.tensor([top_k]), torch.tensor([top_p]))[0]


def close(a, b):
    return torch.allclose(a, torch.tensor(b, dtype=torch.float32), atol=1e-6)


LOGP = [math.log(p) for p in P]


def test_temperature_one_is_softmax():
    assert close(probs(LOGP), P)


def test_temperature_two_flattens():
    s = [math.sqrt(p) for p in P]
    assert close(probs(LOGP, temperature=2.0), [x / sum(s) for x in s])


@pytest.mark.parametrize("top_k, expected", [
    (1, [1, 0, 0, 0]),
    (2, [0.625, 0.375, 0, 0]),
    (3, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (4, P),
    (99, P),  # more than the vocabulary: keep all
    (0, P),  # disabled
])
def test_top_k(top_k, expected):
    assert close(probs(LOGP, top_k=top_k), expected)


@pytest.mark.parametrize("top_p, expected", [
    (0.01, [1, 0, 0, 0]),  # the most likely token is always kept
    (0.49, [1, 0, 0, 0]),
    (0.51, [0.625, 0.375, 0, 0]),  # mass before token 1 is 0.5 < 0.51
    (0.79, [0.625, 0.375, 0, 0]),
    (0.81, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (0.96, P),
    (1.0, P),
])
def test_top_p(top_p, expected):
    assert close(probs(LOGP, top_p=top_p), expected)


def test_top_k_then_top_p_on_the_renormalised_distribution():
    # top-3 gives [.526, .316, .158]; mass before the 3rd is .842 > .8, so top-p keeps two
    assert close(probs(LOGP, top_k=3, top_p=0.8), [0.625, 0.375, 0, 0])


def test_temperature_zero_is_one_hot_argmax_lowest_id_on_ties():
    assert close(probs([1.0, 3.0, 3.0, 0.0], temperature=0.0), [0, 1, 0, 0])


def test_top_k_ties_keep_the_lower_id():
    e = math.e
    assert close(probs([2.0, 1.0, 1.0, 0.0], top_k=2), [e**2 / (e**2 + e), e / (e**2 + e), 0, 0])


def test_masked_logits():
    assert close(probs([0.0, float("-inf"), 0.0]), [0.5, 0, 0.5])


def test_inverse_cdf_never_picks_zero_probability_tokens():
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5]] * 4)
    u = torch.tensor([0.0, 0.25, 0.5, 0.999999])
    assert sample_from_probs(p, u).tolist() == [1, 1, 3, 3]


def _rows(n, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    return [SampleRow(temperature, top_k, top_p, torch.Generator().manual_seed(seed + i)) for i in range(n)]


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 0.81)])
def test_empirical_frequencies_match(top_k, top_p):
    n = 4000
    logits = torch.tensor([LOGP] * n)
    tokens = Sampler()(logits, _rows(n, top_k=top_k, top_p=top_p), False).tokens
    freq = torch.bincount(tokens, minlength=4).float() / n
    expected = probs(LOGP, top_k=top_k, top_p=top_p)
    assert (freq - expected).abs().max() < 0.03
    if top_k:
        assert freq[3] == 0


def test_greedy_rows_draw_no_randomness():
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    tokens = Sampler()(torch.tensor([LOGP]), [SampleRow(0.0, 0, 1.0, g)], False).tokens
    assert tokens.tolist() == [0] and torch.equal(g.get_state(), state)


def test_a_rows_samples_do_not_depend_on_the_batch():
    logits = torch.randn(3, 50)
    alone, together = [], []
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for step in range(30):
        alone.append(Sampler()(logits[:1], [SampleRow(0.8, 0, 1.0, ga)], False).tokens.item())
        rows = [SampleRow(0.8, 0, 1.0, gb), SampleRow(0.0, 0, 1.0, torch.Generator()),
                SampleRow(1.0, 5, 0.9, torch.Generator().manual_seed(step))]
        together.append(Sampler()(logits, rows, False).tokens[0].item())
    assert alone == together


def test_logprobs_are_raw_model_fp32_at_temperature_one():
    logits = torch.randn(2, 10, dtype=torch.float64)
    tokens, lp, processed = Sampler()(logits, _rows(2, temperature=0.3, top_k=2), True)
    assert processed is None  # nobody asked for it
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
    assert lp.dtype == torch.float32 and torch.equal(lp, ref)
    assert torch.equal(token_logprobs(logits, tokens), ref)


def test_processed_logprobs_are_those_of_the_distribution_sampled_from():
    """Hand-computed: temperature 0.5 alone is log_softmax(logits / 0.5); top-k 2 renormalises over the two
    kept tokens; greedy is one-hot (log 1 = 0). Raw logprobs stay the model's, as before."""
    logits = torch.tensor([[math.log(p) for p in P]] * 3)
    rows = [SampleRow(0.5, 0, 1.0, torch.Generator().manual_seed(1), True),
            SampleRow(1.0, 2, 1.0, torch.Generator().manual_seed(2), True),
            SampleRow(0.0, 0, 1.0, torch.Generator(), True)]
    tokens, raw, processed = Sampler()(logits, rows, True)
    t = tokens.tolist()
    sharp = [p * p for p in P]  # p ** (1 / 0.5), renormalised below
    expected = [math.log(sharp[t[0]] / sum(sharp)), math.log(P[t[1]] / (P[0] + P[1])), 0.0]
    assert t[1] in (0, 1) and t[2] == 0
    assert torch.allclose(processed, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(raw, torch.tensor([math.log(P[i]) for i in t]), atol=1e-6)
    assert Sampler()(logits, _rows(3), True).processed is None  # nobody asked: nothing computed
