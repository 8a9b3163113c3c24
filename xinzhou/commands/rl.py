"""Reinforcement learning on a bundled task: `xinzhou rl [--recipe=NAME] [--key=value ...]`.

Starts from a Hugging Face checkpoint with a tokenizer (`--model=DIR`, by default runs/sft/export), samples
`--group_size` multi-turn episodes per problem on the inference engine (tool results forced, excluded from the
loss), and updates the policy with `--objective` (cispo, dapo, grpo, gspo), `--minibatches` updates per rollout
batch. Writes metrics.jsonl, reward.png, clip.png, checkpoints and a Hugging Face export to `--out_dir`; greedy
held-out success is printed every `--eval_every` steps. Example:

    xinzhou rl --objective=cispo --task=arithmetic --model=runs/sft/export --minibatches=8 --lr=1e-4

Runs under `torchrun --nproc_per_node=N` with data parallelism (each process collects its share of the rollouts;
gradients are all-reduced). `--resume` continues a run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from xinzhou.configs.rl import RLConfig, config_keys, list_recipes


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="default",
                        help=f"named RL recipe to start from (default: default; options: {', '.join(list_recipes())})")
    defaults = {f.name: f.default for f in dataclasses.fields(RLConfig)}
    for key, tp in config_keys().items():
        if key == "recipe":
            continue
        flag = tp is bool
        name = "|".join(typing.get_args(tp)) if typing.get_origin(tp) is typing.Literal else \
            getattr(tp, "__name__", str(tp))
        parser.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar=name.upper(),
                            nargs="?" if flag else None, const="true" if flag else None,
                            help=f"{name} (default {defaults[key]!r})")


def main(args: argparse.Namespace) -> int:
    from xinzhou.configs.rl import resolve  # noqa: PLC0415
    from xinzhou.parallel.dist import destroy_distributed  # noqa: PLC0415

    overrides = {k: v for k, v in vars(args).items() if k in config_keys() and k != "recipe"}
    try:
        cfg = resolve(args.recipe, overrides)
        from xinzhou.rl.loop import train_rl  # noqa: PLC0415

        result = train_rl(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(f"rl done: {result.steps} steps in {result.seconds:.0f}s ({result.seconds_per_step:.1f} s/step) -> "
              f"{result.out_dir}")
        if result.final_eval is not None:
            e = result.final_eval
            print(f"held-out success {e['success']:.3f} [95% CI {e['ci_low']:.3f}, {e['ci_high']:.3f}] on {e['n']} "
                  f"problems, {e['tool_calls']:.2f} tool calls per episode")
        print(f"curves {result.out_dir / 'reward.png'}, {result.out_dir / 'clip.png'}; metrics "
              f"{result.out_dir / 'metrics.jsonl'}")
        if result.export_dir is not None:
            print(f"Hugging Face checkpoint {result.export_dir}")
    return 0
