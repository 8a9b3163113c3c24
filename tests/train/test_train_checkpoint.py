"""Checkpoints are atomic and complete: a process killed (SIGKILL) in the middle of writing one leaves the
previous checkpoint loadable, and resuming from it reproduces the uninterrupted run bit for bit (every logged
loss and every final weight). Also: pruning, RNG round trip, and partial directories are ignored.
Run: pytest tests/train/test_train_checkpoint.py"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from train_helpers import debug_config, losses

from xinzhou.train.checkpoint import Checkpointer, rng_state, set_rng_state
from xinzhou.train.metrics import read_jsonl


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_save_load_prune_and_ignore_partial(tmp_path):
    model, opt = _model_and_optimizer(0)
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        ck.save(step, model, opt, {"step": step, "data": {"k": step}})
    assert ck.steps() == [2, 3] and ck.latest().name == "step_00000003"
    (tmp_path / ".tmp-step_00000004-123").mkdir()            # a writer killed mid-way
    (tmp_path / "step_00000005").mkdir()                     # incomplete: no files
    assert ck.latest().name == "step_00000003"
    other, other_opt = _model_and_optimizer(1)
    state = ck.load(ck.latest(), other, other_opt)
    assert state["data"] == {"k": 3} and state["step"] == 3
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    ck.remove_partial()
    assert not list(tmp_path.glob(".tmp-*"))


def test_rng_round_trip():
    state = rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {helpers!r})
    import xinzhou.train.checkpoint as ck
    from train_helpers import debug_config
    from xinzhou.train.pretrain import pretrain

    save = ck._save
    def slow_save(obj, path):
        save(obj, path)
        if path.parent.name.startswith(".tmp-step_00000004"):   # half of the second checkpoint is on disk
            Path({marker!r}).touch()
            time.sleep(600)
    ck._save = slow_save
    pretrain(debug_config({out!r}, {corpus!r}, **{overrides!r}))
""")


def test_sigkill_during_checkpoint_then_resume_is_bit_identical(tmp_path, small_corpus):
    overrides = {"max_steps": 6, "save_every": 2, "eval_every": 3, "export": False}
    # 1. the uninterrupted run
    from xinzhou.train.pretrain import pretrain

    pretrain(debug_config(tmp_path / "full", small_corpus, **overrides))
    # 2. the same run, SIGKILLed while writing its step-4 checkpoint
    out, marker = tmp_path / "killed", tmp_path / "writing"
    script = _KILLED_RUN.format(helpers=str(Path(__file__).parent), marker=str(marker), out=str(out),
                                corpus=small_corpus, overrides=overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process (conftest): same threads, same bits
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached the checkpoint write: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ck = Checkpointer(out / "checkpoints")
    assert list((out / "checkpoints").glob(".tmp-step_00000004-*")), "the kill should leave a partial write"
    assert ck.latest().name == "step_00000002"                 # the previous checkpoint is intact ...
    assert ck.read_state(ck.latest())["step"] == 2             # ... and loads
    assert max(losses(out)) == 4                               # the log ran ahead of the last checkpoint
    # 3. resume: continues from step 2 and leaves no trace of the crash
    result = pretrain(debug_config(out, small_corpus, resume=True, **overrides))
    assert result.resumed_from == 2 and result.steps == 6
    assert losses(out) == losses(tmp_path / "full")            # bit-identical floats, all six steps
    evals = [[r["eval_loss"] for r in read_jsonl(d / "metrics.jsonl") if "eval_loss" in r]
             for d in (out, tmp_path / "full")]
    assert evals[0] == evals[1] and len(evals[0]) == 2
    assert not list((out / "checkpoints").glob(".tmp-*"))
    final = [torch.load(d / "checkpoints" / "step_00000006" / "model.pt") for d in (out, tmp_path / "full")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[1])
