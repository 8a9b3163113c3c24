"""Fine-tune a checkpoint on chats: `xinzhou sft [--recipe=NAME] [--key=value ...]`.

With no arguments it runs the `sft-tiny` recipe: the export of `xinzhou pretrain` (runs/pretrain/export) tuned on
the bundled corpus's question/answer pairs rendered in the MiniMax-M2 chat format, written to runs/sft.
`--data=FILE.jsonl` takes `{"messages": [...]}` (and optional `"tools"`) or `{"input_ids", "loss_mask"}` lines;
`--init_from=DIR` any Hugging Face checkpoint with a tokenizer. Runs under `torchrun` like `xinzhou pretrain`.
"""

from __future__ import annotations

import argparse

from xinzhou.commands.pretrain import add_config_arguments, run_command


def setup(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sft", "sft-tiny")


def main(args: argparse.Namespace) -> int:
    return run_command(args, "sft")
