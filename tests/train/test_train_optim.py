"""Learning-rate schedules are pure functions of the step (so resumption needs only the step) and AdamW
decays matrices but not norms, biases or embeddings.
Run: pytest tests/train/test_train_optim.py"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from xinzhou.train.optim import Schedule, build_optimizer, param_groups


def test_cosine_warms_up_then_decays_to_the_floor():
    s = Schedule("cosine", lr=1.0, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)  # halfway down the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_wsd_is_flat_then_decays_linearly():
    s = Schedule("wsd", lr=2.0, max_steps=100, warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert s(5) == pytest.approx(1.2)
    assert all(s(i) == 2.0 for i in range(10, 80))
    assert s(90) == pytest.approx(1.0) and s(100) == pytest.approx(0.0)


def test_constant_and_bad_schedule():
    assert Schedule("constant", lr=0.3, max_steps=5, warmup_steps=0)(4) == 0.3
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid options: cosine, wsd, constant"):
        Schedule("linear", lr=1.0, max_steps=5)


def test_schedule_has_no_state():
    s = Schedule("cosine", lr=1e-3, max_steps=50, warmup_steps=5)
    assert [s(i) for i in range(50)] == [s(i) for i in range(50)]
    assert all(math.isfinite(s(i)) and s(i) > 0 for i in range(60))


def test_param_groups_split_decay():
    from xinzhou import Model
    from xinzhou.configs.train import resolve

    model = Model(resolve("debug").model_config())
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 and "embed_tokens" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"embed_tokens.weight", "norm.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.95))
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(opt, torch.optim.AdamW)


def test_build_optimizer_steps_fused_and_matches_the_reference_update():
    """Plain tensors get the fused kernel; its update equals AdamW's textbook formula (hand-written here, fp64)
    to float rounding, including decoupled weight decay on matrices only."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert all(g["fused"] for g in opt.param_groups)
    m = {n: torch.zeros_like(p) for n, p in ref.items()}
    v = {n: torch.zeros_like(p) for n, p in ref.items()}
    for step in range(1, 4):
        grads = {n: torch.randn_like(p) for n, p in ref.items()}
        for n, p in model.named_parameters():
            p.grad = grads[n].float()
        opt.step()
        for n, p in ref.items():
            wd = 0.1 if p.ndim >= 2 else 0.0
            p.mul_(1 - 1e-2 * wd)
            m[n] = 0.9 * m[n] + 0.1 * grads[n].double()
            v[n] = 0.95 * v[n] + 0.05 * grads[n].double() ** 2
            p.sub_(1e-2 * (m[n] / (1 - 0.9**step)) / ((v[n] / (1 - 0.95**step)).sqrt() + 1e-8))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), ref[n], rtol=0, atol=1e-6)
