"""`xinzhou pretrain` / `xinzhou sft`: a recipe plus `--key=value` overrides, a summary at the end, and one-line
errors (exit status 2) for bad values.
Run: pytest tests/train/test_train_commands.py"""

from __future__ import annotations

import pytest

from xinzhou.cli import main


def test_pretrain_command(tmp_path, small_corpus, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--recipe=debug", f"--data={small_corpus}", f"--out_dir={out}", "--max_steps=2",
               "--eval_every=0", "--progress=false", "--export=false", "--model.hidden_size=48"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "pretrain done: 2 steps" in text and "unigram baseline" in text
    assert (out / "loss.png").exists() and '"hidden_size": 48' in (out / "config.json").read_text()


@pytest.mark.parametrize("args, message", [
    (["--lr=fast"], "error: --lr takes a number, got 'fast'"),
    (["--recipe=sft-tiny"], "error: recipe 'sft-tiny' is a sft recipe; pretrain recipes: debug, tiny"),
    (["--seq_len=4096"], "error: seq_len (4096) exceeds the model's max_position_embeddings (1024)"),
])
def test_pretrain_command_errors(args, message, tmp_path, capsys):
    assert main(["pretrain", "--recipe=debug", f"--out_dir={tmp_path}", *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_option_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--learning_rate=1"])
    assert "unrecognized arguments: --learning_rate=1" in capsys.readouterr().err


def test_sft_command_without_a_pretrained_model(tmp_path, capsys):
    assert main(["sft", f"--init_from={tmp_path / 'none'}", f"--out_dir={tmp_path / 'sft'}"]) == 2
    assert "run `xinzhou pretrain` first" in capsys.readouterr().err
