"""Pretrain a hybrid model: `xinzhou pretrain [--recipe=NAME] [--key=value ...]`.

With no arguments it runs the `tiny` recipe: a tokenizer and a ~2M-parameter model trained on the bundled corpus
in a few minutes on a CPU, written to runs/pretrain (metrics.jsonl, loss.png, checkpoints, a Hugging Face export).
Any config field can be overridden (`--lr=1e-3`, `--max_steps=50`, `--model.hidden_size=192`); `--resume`
continues an interrupted run bit-identically. Under `torchrun --nproc_per_node=N` the same command trains with
DDP (or `--parallel=fsdp`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from xinzhou.configs.train import TrainConfig, config_keys, list_recipes

_SKIP = {"task", "recipe"}


def _type_name(tp: typing.Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def add_config_arguments(parser: argparse.ArgumentParser, task: str, default_recipe: str) -> None:
    """``--recipe`` plus one ``--KEY[=VALUE]`` option per config field (``model.*`` in their own group). Values
    stay strings here; :func:`xinzhou.configs.train.apply_overrides` converts them, one parser for all callers."""
    parser.add_argument("--recipe", default=default_recipe,
                        help=f"named recipe to start from (default {default_recipe}; {task} recipes: "
                             f"{', '.join(list_recipes(task))})")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group("model overrides (applied to the recipe's model config)")
    for key, tp in config_keys().items():
        if key in _SKIP:
            continue
        target = group if key.startswith("model.") else parser
        flag = tp is bool
        shown = "" if key.startswith("model.") or key not in defaults else f" (dataclass default {defaults[key]!r})"
        target.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar=_type_name(tp).upper(),
                            nargs="?" if flag else None, const="true" if flag else None,
                            help=f"{_type_name(tp)}{shown}")


def run_command(args: argparse.Namespace, task: str) -> int:
    """Resolve the config, run the task, print a summary; user errors print one line and return 2."""
    from xinzhou.configs.train import resolve  # noqa: PLC0415
    from xinzhou.parallel.dist import destroy_distributed  # noqa: PLC0415

    overrides = {k: v for k, v in vars(args).items() if k in config_keys() and k not in _SKIP}
    try:
        cfg = resolve(args.recipe, overrides, task=task)
        if task == "pretrain":
            from xinzhou.train.pretrain import pretrain as run  # noqa: PLC0415
        else:
            from xinzhou.train.sft import sft as run  # noqa: PLC0415
        result = run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(f"{task} done: {result.steps} steps in {result.seconds:.0f}s -> {result.out_dir}")
        if result.final_eval_loss is not None:
            base = f" (unigram baseline {result.baseline:.3f})" if result.baseline is not None else ""
            print(f"final eval loss {result.final_eval_loss:.3f}{base}")
        print(f"loss curve {result.out_dir / 'loss.png'}; metrics {result.out_dir / 'metrics.jsonl'}")
        if result.export_dir is not None:
            print(f"Hugging Face checkpoint {result.export_dir}")
    return 0


def setup(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "pretrain", "tiny")


def main(args: argparse.Namespace) -> int:
    return run_command(args, "pretrain")
