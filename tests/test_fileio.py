"""Files written atomically (through a temporary name and a rename) get the permissions ``open()`` would give,
``0o666 & ~umask`` (directories ``0o777 & ~umask``), not the private ``0o600`` / ``0o700`` of ``tempfile``: an
exported model, its tokenizer and a training checkpoint are readable by group and others under umask 022."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import xinzhou
from xinzhou.chat import save_chat_template
from xinzhou.data.tokenizer import MIN_VOCAB_SIZE, train_tokenizer
from xinzhou.fileio import (
    atomic_write_text,
    current_umask,
    default_mode,
    mkdtemp,
    mkstemp,
)
from xinzhou.rl.loss import save_atomic
from xinzhou.train.checkpoint import Checkpointer


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path ('.' for root) -> permission bits, for root and everything below it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return out


def tiny_model() -> xinzhou.Model:
    cfg = xinzhou.get_config("debug-m2", vocab_size=MIN_VOCAB_SIZE + 8, hidden_size=32, num_heads=2, num_kv_heads=1,
                             head_dim=16, rotary_dim=8, moe_intermediate_size=16, num_layers=1)
    return xinzhou.Model(cfg)


def test_umask_is_read_without_changing_it(umask) -> None:
    umask(0o027)
    assert current_umask() == 0o027 and current_umask() == 0o027
    assert (default_mode(), default_mode(directory=True)) == (0o640, 0o750)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_exported_checkpoint_is_readable_like_open_would_make_it(tmp_path, umask, mask) -> None:
    umask(mask)
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    path = tmp_path / "model"
    model = tiny_model()
    model.save_pretrained(path)
    model.save_pretrained(path)  # replacing an existing export keeps the modes too
    train_tokenizer(["hello world, hello tokenizer"] * 4, MIN_VOCAB_SIZE + 8).save(path)
    save_chat_template(path)
    got = modes(path)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= set(got)
    assert got == {name: (want_dir if name == "." else want_file) for name in got}
    if mask == 0o022:
        assert all(m & stat.S_IRGRP and m & stat.S_IROTH for m in got.values())


def test_sharded_export_and_training_checkpoint(tmp_path, umask) -> None:
    umask(0o022)
    model = tiny_model()
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=1 << 14)
    got = modes(tmp_path / "sharded")
    assert "model.safetensors.index.json" in got and sum(n.endswith(".safetensors") for n in got) > 1
    assert got == {name: (0o755 if name == "." else 0o644) for name in got}

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    final = Checkpointer(tmp_path / "ckpt").save(1, net, opt, {"step": 1})
    got = modes(final)
    assert {"model.pt", "optimizer.pt", "trainer.pt", "meta.json"} <= set(got)
    assert got == {name: (0o755 if name == "." else 0o644) for name in got}


def test_atomic_writers(tmp_path, umask) -> None:
    umask(0o022)
    atomic_write_text(tmp_path / "a.json", "{}")
    save_atomic({"x": torch.zeros(1)}, tmp_path / "batch.pt")
    fd, tmp = mkstemp(tmp_path, prefix=".x.")
    os.close(fd)
    assert Path(tmp).name.startswith(".x.") and Path(tmp).name.endswith(".tmp")
    d = mkdtemp(tmp_path, prefix=".d.")
    assert modes(tmp_path) == {".": modes(tmp_path)["."], "a.json": 0o644, "batch.pt": 0o644,
                               Path(tmp).name: 0o644, d.name: 0o755}
    assert (tmp_path / "a.json").read_text() == "{}"


def test_loss_plot(tmp_path, umask) -> None:
    pytest.importorskip("matplotlib")
    from xinzhou.train.metrics import plot_losses

    umask(0o022)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    png = plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png", title="t")
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
