"""`xinzhou <command>`: a thin dispatcher. Each command lives in `xinzhou/commands/<name>.py` with
`setup(parser)` (declare its arguments) and `main(args) -> int` (run it), so adding a command is adding a file
and one line in `COMMANDS`."""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module; modules are imported only when their command runs (keeps `--help` fast).
COMMANDS: dict[str, str] = {
    "info": "xinzhou.commands.info",
    "generate": "xinzhou.commands.generate",
    "verify": "xinzhou.commands.verify",
    "demo": "xinzhou.commands.demo",
    "pretrain": "xinzhou.commands.pretrain",
    "sft": "xinzhou.commands.sft",
    "serve": "xinzhou.commands.serve",
    "chat": "xinzhou.commands.chat",
    "rl": "xinzhou.commands.rl",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinzhou", description="xinzhou (心舟): MiniMax-style hybrid lightning-attention MoE models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().split("\n")[0], description=mod.__doc__)
        mod.setup(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
