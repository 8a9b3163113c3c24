"""The bundled default: `xinzhou pretrain` with no arguments (the `tiny` recipe on the bundled corpus) learns far
beyond the unigram baseline within minutes on a CPU, and its export loads. Slow (a few minutes): run with
pytest -m slow tests/train/test_bundled_run.py"""

from __future__ import annotations

import pytest

import xinzhou
from xinzhou.configs.train import resolve
from xinzhou.train.pretrain import pretrain


@pytest.mark.slow
def test_default_pretraining_run_beats_the_unigram_baseline(tmp_path):
    result = pretrain(resolve("tiny", {"out_dir": str(tmp_path / "run"), "progress": False}))
    print(f"final eval loss {result.final_eval_loss:.3f}, unigram baseline {result.baseline:.3f}, "
          f"{result.seconds:.0f}s")
    assert result.final_eval_loss < result.baseline - 1.5
    model = xinzhou.from_pretrained(result.export_dir)
    assert model.config.vocab_size == 1024
