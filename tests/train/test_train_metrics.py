"""Observability: JSON-lines metrics cut back on resume, the PNG loss curve, the progress bar, and TensorBoard
(optional dependency: a clear error when it is missing).
Run: pytest tests/train/test_train_metrics.py"""

from __future__ import annotations

import importlib.util
import json

import pytest

from xinzhou.train.metrics import MetricsLogger, ProgressBar, plot_losses, read_jsonl


def test_jsonl_log_truncate_and_plot(tmp_path):
    log = MetricsLogger(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step + 1e-17 * step})
    log.log({"step": 5, "eval_loss": 0.5})
    log.close()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == 6 and records[2]["loss"] == 1.0 / 3 + 3e-17  # full float precision
    MetricsLogger(tmp_path / "metrics.jsonl").truncate_after(3)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    png = plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png", baseline=1.5, title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl", enabled=False)
    log.log({"step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "m.jsonl").exists()


def test_progress_bar(capsys):
    bar = ProgressBar(10, 2, enabled=True)
    bar.update(3, 1.25, 1234.0)
    bar.print("eval line")
    bar.close()
    quiet = ProgressBar(10, enabled=False, echo=True)
    quiet.print("plain line")
    silent = ProgressBar(10, enabled=False, echo=False)
    silent.print("never")
    out = capsys.readouterr().out
    assert "plain line" in out and "never" not in out


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pip install tensorboard"):
        MetricsLogger(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_receives_scalars(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
    log.log({"step": 1, "loss": 2.0, "expert_load": [[0.5, 0.5]]})
    log.close()
    assert any((tmp_path / "tb").iterdir())
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] == 2.0
