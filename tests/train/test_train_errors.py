"""Bad input fails with a clear message before any work is done (no tokenizer trained, no model built, nothing
written): a missing or empty corpus, a sequence length above the model's limit, resuming a run with another
config (or one that does not exist), and reusing a run directory by accident.
Run: pytest tests/train/test_train_errors.py"""

from __future__ import annotations

import json

import pytest
from train_helpers import debug_config, losses

from xinzhou.configs.train import TrainConfig, get_recipe
from xinzhou.train.pretrain import pretrain
from xinzhou.train.sft import sft


def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found: .*nope.txt"):
        pretrain(debug_config(tmp_path / "run", str(tmp_path / "nope.txt")))
    assert not (tmp_path / "run").exists()


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="corpus .*empty.txt is empty"):
        pretrain(debug_config(tmp_path / "run", str(empty)))
    assert not (tmp_path / "run").exists()


def test_sequence_length_above_the_model_limit(tmp_path, small_corpus):
    cfg = TrainConfig(**{**get_recipe("debug").to_dict(), "seq_len": 2048, "out_dir": str(tmp_path / "run"),
                         "data": small_corpus})  # built directly, so pretrain() itself must check
    with pytest.raises(ValueError, match=r"seq_len \(2048\) exceeds the model's max_position_embeddings \(1024\)"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_errors_and_run_directory_protection(tmp_path, small_corpus):
    out = tmp_path / "run"
    pretrain(debug_config(out, small_corpus, max_steps=2, save_every=1, export=False))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"was started with a different config \(lr: run has 0.003, now 0.1; "
                                         r"model.hidden_size: run has 32, now 64\)"):
        pretrain(debug_config(out, small_corpus, max_steps=2, resume=True, lr=0.1, **{"model.hidden_size": 64}))
    with pytest.raises(ValueError, match="already holds a run; pass --resume to continue it, --overwrite"):
        pretrain(debug_config(out, small_corpus, max_steps=2))
    with pytest.raises(ValueError, match="holds no run"):
        pretrain(debug_config(tmp_path / "other", small_corpus, resume=True))
    assert (out / "metrics.jsonl").read_text() == before and not (tmp_path / "other").exists()
    # progress/logging settings may change on resume; a finished run resumes to a no-op
    result = pretrain(debug_config(out, small_corpus, max_steps=2, resume=True, log_every=5, save_every=1,
                                   export=False))
    assert result.resumed_from == 2 and sorted(losses(out)) == [1, 2]
    result = pretrain(debug_config(out, small_corpus, max_steps=1, overwrite=True, export=False))
    assert sorted(losses(out)) == [1] and json.loads((out / "config.json").read_text())["max_steps"] == 1


def test_sft_needs_a_starting_checkpoint(tmp_path):
    base = {**get_recipe("sft-tiny").to_dict(), "out_dir": str(tmp_path / "sft")}
    with pytest.raises(ValueError, match="SFT starts from a checkpoint: pass --init_from"):
        sft(TrainConfig(**{**base, "init_from": ""}))
    with pytest.raises(ValueError, match="run `xinzhou pretrain` first"):
        sft(TrainConfig(**{**base, "init_from": str(tmp_path / "missing")}))
    assert not (tmp_path / "sft").exists()
