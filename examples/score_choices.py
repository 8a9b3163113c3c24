"""Score multiple-choice answers by log-likelihood through `xinzhou serve`, the way evaluation harnesses do.

Why: benchmarks such as MMLU or HellaSwag are scored by comparing log p(answer | question) across the choices,
not by generating. lm-evaluation-harness's ``local-completions`` model sends exactly this request to any
OpenAI-compatible server: ``/v1/completions`` with ``echo: true, max_tokens: 0, logprobs: 0``, then sums the
logprobs of the tokens that belong to the answer. This script does the same with the plain ``openai`` SDK.

    xinzhou serve --model runs/demo/model &
    python examples/score_choices.py --base-url http://127.0.0.1:8000/v1

A token that straddles the question/answer boundary counts as part of the answer (start your choices with a
space, as harness tasks do, and byte-level BPE puts the boundary between tokens).
"""

from __future__ import annotations

import argparse

from openai import OpenAI

QUESTION = "What is 17 * 3? Answer:"
CHOICES = [" 51", " 41", " 54", " 20"]


def answer_logprob(client: OpenAI, model: str, context: str, answer: str) -> tuple[float, int]:
    """``(sum of log p(answer tokens | context, earlier answer tokens), number of answer tokens)``."""
    r = client.completions.create(model=model, prompt=context + answer, max_tokens=0, echo=True, logprobs=0)
    lp = r.choices[0].logprobs
    picked = [v for off, v in zip(lp.text_offset, lp.token_logprobs) if off + 1 > len(context) and v is not None]
    return sum(picked), len(picked)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="not-needed")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--choices", nargs="+", default=CHOICES)
    args = p.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id
    scores = {c: answer_logprob(client, model, args.question, c) for c in args.choices}
    print(f"{args.question!r} scored by {model}:")
    for choice, (total, n) in sorted(scores.items(), key=lambda kv: -kv[1][0]):
        print(f"  {choice!r:>12}  log p = {total:9.4f}  ({n} tokens)")
    print(f"best: {max(scores, key=lambda c: scores[c][0])!r}")


if __name__ == "__main__":
    main()
