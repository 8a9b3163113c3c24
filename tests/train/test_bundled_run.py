"""The bundled default: `xinzhou pretrain` with no arguments (the `tiny` recipe on the bundled corpus) learns far
beyond the unigram baseline within minutes on a CPU, and its export loads in xinzhou and in transformers with
the same logits. Slow (5-10 minutes on two shared cores): pytest -m slow tests/train/test_bundled_run.py"""

from __future__ import annotations

import pytest
import torch

import xinzhou
from xinzhou.configs.train import resolve
from xinzhou.data.tokenizer import Tokenizer
from xinzhou.train.pretrain import pretrain


@pytest.mark.slow
def test_default_pretraining_run_beats_the_unigram_baseline(tmp_path):
    transformers = pytest.importorskip("transformers")
    result = pretrain(resolve("tiny", {"out_dir": str(tmp_path / "run"), "progress": False}))
    print(f"final eval loss {result.final_eval_loss:.3f}, unigram baseline {result.baseline:.3f}, "
          f"{result.seconds:.0f}s")
    assert result.final_eval_loss < result.baseline - 3.0
    ours = xinzhou.from_pretrained(result.export_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_dir(result.export_dir)
    x = torch.tensor([[tok.bos_id, *tok.encode("All about the lion.\nA lion has four legs.")]])
    with torch.no_grad():
        a, b = ours(x).logits, hf(x).logits
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4
