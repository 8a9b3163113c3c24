"""RL under torchrun: two CPU processes (gloo) each collect half of the rollouts; with one update per rollout batch
the update equals the single-process one (same problems, same per-episode sampling seeds, global aggregation
weights) up to float summation order. (Later steps may sample differently: a 1e-8 weight difference can flip a
draw.) Marked `dist`: run with `pytest -m dist`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rl_helpers import TwoTurnEnv, rl_config, save_policy

from xinzhou.rl.loop import train_rl
from xinzhou.train.metrics import read_jsonl

pytestmark = pytest.mark.dist

SCRIPT = """
import sys, torch
sys.path.insert(0, {helpers!r})
from pathlib import Path
from rl_helpers import TwoTurnEnv, rl_config
from xinzhou.rl.loop import train_rl
torch.set_num_threads(1)
train_rl(rl_config(Path({policy!r}), Path({out!r}), max_steps=1, minibatches=1, aggregation={agg!r}), env=TwoTurnEnv)
"""


@pytest.mark.parametrize("aggregation", ["prompt", "token"])
def test_two_processes_match_one(tmp_path: Path, aggregation: str) -> None:
    policy = save_policy(tmp_path / "policy")
    torch.set_num_threads(1)
    train_rl(rl_config(policy, tmp_path / "one", max_steps=1, minibatches=1, aggregation=aggregation),
             env=TwoTurnEnv)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(helpers=str(Path(__file__).parent), policy=str(policy),
                                                    out=str(tmp_path / "two"), agg=aggregation)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = torch.load(sorted((tmp_path / "one" / "checkpoints").iterdir())[-1] / "model.pt", weights_only=True)
    two = torch.load(sorted((tmp_path / "two" / "checkpoints").iterdir())[-1] / "model.pt", weights_only=True)
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    a, b = (read_jsonl(tmp_path / run / "metrics.jsonl")[1] for run in ("one", "two"))
    assert a["episodes"] == b["episodes"] == 16 and a["reward"] == b["reward"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
