"""`torchrun --nproc_per_node=2` on CPU (gloo) with DDP and with FSDP2 gives the loss curve of one process with
the same global batch (4 rows: 2 processes x 2 rows, or 1 process accumulating 2 x 2 rows) within 1e-5 relative
at every step, and the same eval losses and exported weights. The default test runs 8 steps through the Python
entry point (both modes in one torchrun); the `dist` test runs 20 steps through the `xinzhou pretrain` command.
Run: pytest tests/parallel/test_dist_parity.py  (add -m dist for the 20-step command-line version)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_helpers import debug_config, losses, write_small_corpus  # noqa: E402

import xinzhou  # noqa: E402
from xinzhou.train.metrics import read_jsonl  # noqa: E402
from xinzhou.train.pretrain import pretrain  # noqa: E402

RTOL = 1e-5
pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")


def _torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", *args], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _evals(out: Path) -> list[float]:
    return [r["eval_loss"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r]


def _check(tmp_path: Path, steps: int, single) -> None:
    ref = losses(single.out_dir)
    assert sorted(ref) == list(range(1, steps + 1)) and ref[steps] < ref[1]  # and it trains
    for mode in ("ddp", "fsdp"):
        got = losses(tmp_path / mode)
        worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        print(f"{mode}: worst relative loss difference over {steps} steps {worst:.2e}")
        assert sorted(got) == sorted(ref) and worst <= RTOL, f"{mode}: worst relative loss difference {worst:.2e}"
        assert _evals(tmp_path / mode) == pytest.approx(_evals(single.out_dir), rel=RTOL)
    a = xinzhou.from_pretrained(tmp_path / "fsdp" / "export").state_dict()  # gathered from FSDP shards
    b = xinzhou.from_pretrained(single.export_dir).state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in b)


def test_ddp_and_fsdp_match_one_process(tmp_path):
    steps = 8
    corpus = write_small_corpus(tmp_path / "corpus.txt")
    _torchrun(str(Path(__file__).with_name("dist_worker.py")), str(tmp_path), corpus, str(steps), "ddp", "fsdp")
    single = pretrain(debug_config(tmp_path / "single", corpus, max_steps=steps, eval_every=4, save_every=steps))
    _check(tmp_path, steps, single)


@pytest.mark.dist
def test_the_pretrain_command_under_torchrun_20_steps(tmp_path):
    steps = 20
    corpus = write_small_corpus(tmp_path / "corpus.txt")
    common = ["--recipe=debug", f"--data={corpus}", f"--max_steps={steps}", "--eval_every=10", "--progress=false"]
    for mode in ("ddp", "fsdp"):
        _torchrun("-m", "xinzhou", "pretrain", *common, f"--out_dir={tmp_path / mode}", f"--parallel={mode}")
    single = pretrain(debug_config(tmp_path / "single", corpus, max_steps=steps, eval_every=10))
    _check(tmp_path, steps, single)
