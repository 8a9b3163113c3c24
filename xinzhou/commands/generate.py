"""Generate text from a checkpoint, streaming tokens to stdout as they are sampled.

`xinzhou generate --model PATH --prompt TEXT [--max-tokens N --temperature T --top-p P --top-k K --seed S]`.
PATH is a Hugging Face checkpoint directory with a `tokenizer.json`; the prompt is used as given (no chat
template, no BOS added).
"""

from __future__ import annotations

import argparse
import sys


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="checkpoint directory (with tokenizer.json)")
    parser.add_argument("--prompt", required=True, help="prompt text")
    parser.add_argument("--max-tokens", type=int, default=128, help="most tokens to sample (default 128)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1.0: off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (default 0: off)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of this request")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xinzhou.engine import LLM, SamplingParams

    if not (Path(args.model) / "config.json").is_file():
        print(f"error: {args.model} is not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed, stop=args.stop)
        llm = LLM(args.model)
        if llm.tokenizer is None:
            raise ValueError(f"{args.model} has no tokenizer.json; `generate` needs one to read the prompt")
        reason = "length"
        for event in llm.stream(args.prompt, params):
            sys.stdout.write(event.text)
            sys.stdout.flush()
            reason = event.finish_reason or reason
    except ValueError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    print(f"[finish: {reason}]", file=sys.stderr)
    return 0
