"""Train a hybrid lightning-attention MoE agent from scratch — tokenizer, SFT on calculator traces, CISPO RL with
the real tool, held-out evaluation, export, report — on a laptop CPU with no downloads. Rerunning the same
command resumes from the last finished stage.
"""

from __future__ import annotations

import argparse


def setup(parser: argparse.ArgumentParser) -> None:
    from xinzhou.demo.presets import PRESETS

    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="tiny: the main demo (<= 15 min on 2 cores); small: larger; smoke: seconds, for tests")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of data, initialisation and sampling (default: the preset's, 0)")


def main(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from xinzhou.demo import get_preset, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    try:
        preset = get_preset(args.preset)
        results = run_demo(args.out, preset if args.seed is None else preset.replace(seed=args.seed),
                           console=console)
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted; rerun `xinzhou demo --out {args.out} --preset {args.preset}` to "
                      "resume from the last finished stage[/]")
        return 130
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    model = results["export"]["path"]
    console.print(f"\n[bold]report:[/] {results['report']['path']}")
    console.print("[bold]serve the model and query it with the openai SDK:[/]")
    console.print(f"  xinzhou serve --model {model}")
    console.print("  python examples/demo_client.py --base-url http://127.0.0.1:8000/v1")
    return 0
