"""The demo's report: ``OUT/report.md`` with the numbers a reader checks first, plus its PNGs (SFT loss curve,
RL reward curve, success by problem difficulty after SFT and after RL)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any


def _pct(r: dict[str, Any]) -> str:
    return f"{r['success']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]"


def _plot_success(ctx, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft, rl = ctx.results["eval_sft"]["chain"], ctx.results["eval_rl"]["chain"]
    ds = sorted(sft, key=int)
    x = range(len(ds))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for off, (label, res) in zip((-0.2, 0.2), (("after SFT", sft), ("after RL (CISPO)", rl))):
        ys = [res[d]["success"] for d in ds]
        err = [[res[d]["success"] - res[d]["ci_low"] for d in ds], [res[d]["ci_high"] - res[d]["success"] for d in ds]]
        ax.bar([i + off for i in x], ys, width=0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(list(x), [f"difficulty {d}" for d in ds])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out success (95% CI)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _transcript_md(messages: list[dict[str, Any]]) -> str:
    lines = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role == "user":
            lines.append(f"**user:** {m.get('content', '')}\n")
        elif role == "assistant":
            if m.get("reasoning_content"):
                lines.append(f"> *thinking:* {m['reasoning_content'].strip()}\n")
            for c in m.get("tool_calls") or []:
                fn = c.get("function", c)
                lines.append(f"**call** `{fn.get('name')}({json.dumps(fn.get('arguments'))})`\n")
            if m.get("content"):
                lines.append(f"**assistant:** {m['content'].strip()}\n")
        elif role == "tool":
            lines.append(f"**tool result:** `{m.get('content', '')}`\n")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _what_rl_fixed(res: dict[str, Any], p, main: str) -> str:
    """The paragraph on the demonstrations' calculator-skipping habit (when the preset mixes such traces in)."""
    mental = res["data"].get("mental_last")
    if not p.mental_last_frac or mental is None:
        return ""
    sft, rl = res["eval_sft"]["chain"][main], res["eval_rl"]["chain"][main]
    full, params = int(main) + 1, res["init"]["params_total"] / 1e6
    return (f"What RL has to fix: {mental} of the {p.sft_examples} SFT traces ({mental / p.sft_examples:.0%}) come "
            "from a demonstrator who does the last step in its head (always correctly) instead of calling the "
            f"calculator. The model ({params:.1f}M parameters) can imitate the habit, not the arithmetic: after SFT "
            f"it makes {sft['mean_tool_calls']:.2f} of the {full} calls a full solution makes at difficulty {main} "
            f"({sft['success']:.0%} success). CISPO, rewarded only for correct answers, learns to call the "
            f"calculator: {rl['mean_tool_calls']:.2f} calls, {rl['success']:.0%} success.\n")


def _sft_restarts(sft: dict) -> str:
    """A sentence on stalled SFT runs that were redone (pipeline.stage_sft), or nothing."""
    from xinzhou.demo.pipeline import SFT_STALLED

    runs = sft.get("attempts", [])
    if len(runs) < 2:
        return ""
    shares = ", ".join(f"{a['sampled_success']:.0%} (loss {_num(a['final_eval_loss'])})" for a in runs[:-1])
    text = (f" The first {len(runs) - 1} SFT run(s) stalled (sampled success on training problems {shares}, below"
            f" {SFT_STALLED:.0%}) and were redone with another data order; this is run {len(runs)}")
    last = runs[-1].get("sampled_success")
    if last is not None and last < SFT_STALLED:
        return text + f", which stalled too ({last:.0%}): try another `--seed`."
    return text + ("." if last is None else f" ({last:.0%} sampled success).")


def write_report(ctx) -> Path:
    out = ctx.out
    res = ctx.results
    pngs = []
    for src, name in ((out / res["sft"].get("dir", "sft") / "loss.png", "loss.png"),):
        if src.exists():
            shutil.copyfile(src, out / name)
            pngs.append(name)
    rl_metrics = out / "rl" / "metrics.jsonl"
    if rl_metrics.exists():
        from xinzhou.rl.report import plot_rl

        for p in plot_rl(rl_metrics, out, title="CISPO on arithmetic with the calculator tool"):
            pngs.append(Path(p).name)
    pngs.append(_plot_success(ctx, out / "success_by_difficulty.png").name)

    p = ctx.preset
    init, pre, sft, rl = res["init"], res["pretrain"], res["sft"], res["rl"]
    main = res["eval_rl"]["main_difficulty"]
    after_sft, after_rl = res["eval_sft"]["chain"][main], res["eval_rl"]["chain"][main]
    dropped = res["eval_rl"]["none"][main]
    stage_rows = "\n".join(f"| {name} | {r.get('seconds', 0):.0f} s |" for name, r in res.items() if name != "report")
    total = sum(r.get("seconds", 0) for name, r in res.items() if name != "report")
    diff_rows = "\n".join(
        f"| {d} | {_pct(res['eval_sft']['chain'][d])} | {_pct(res['eval_rl']['chain'][d])} | "
        f"{res['eval_sft']['chain'][d]['mean_tool_calls']:.2f} → {res['eval_rl']['chain'][d]['mean_tool_calls']:.2f} |"
        for d in sorted(res["eval_sft"]["chain"], key=int))
    lo, hi = after_rl["ci_low"], after_rl["ci_high"]
    if after_rl["success"] < 0.2:
        verdict = "inconclusive: the model solves too few problems for the comparison to mean anything"
    elif dropped["ci_high"] < lo:
        verdict = (f"dropping the thinking from the history hurts ({dropped['success']:.0%} vs "
                   f"{after_rl['success']:.0%}, confidence intervals apart): the model was trained on histories "
                   "that keep its earlier thoughts, and it reads its plan from them")
    elif dropped["ci_low"] > hi:
        verdict = f"dropping the thinking helps here ({dropped['success']:.0%} vs {after_rl['success']:.0%})"
    else:
        verdict = ("no significant difference: every tool result stays in the history either way and each step "
                   "needs mainly the last result, so this task leans little on earlier thoughts")
    text = f"""# xinzhou demo report ({p.name})

{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} CPU cores · total {total / 60:.1f} min

A hybrid lightning-attention MoE model ({init['pattern']}: L = lightning, S = softmax; {init['experts']} experts,
top-{init['top_k']}; {init['params_total'] / 1e6:.2f}M parameters, {init['params_active'] / 1e6:.2f}M active per token)
was trained from scratch to solve arithmetic word problems by thinking, calling a calculator, reading the result
and thinking again (MiniMax-M2 interleaved-thinking format), then improved with CISPO RL in which the real
calculator runs inside every rollout.

## Held-out success (difficulty {main}: every problem needs at least {int(main) + 1} calculator calls)

| | success [95% CI] | mean tool calls |
|---|---|---|
| after SFT | {_pct(after_sft)} | {after_sft['mean_tool_calls']:.2f} |
| after RL (CISPO) | {_pct(after_rl)} | {after_rl['mean_tool_calls']:.2f} |
| after RL, thinking dropped from history (`keep="none"`) | {_pct(dropped)} | {dropped['mean_tool_calls']:.2f} |

{_what_rl_fixed(res, p, main)}
Interleaved-thinking ablation: {verdict}.

## Success by difficulty ({p.eval_n} held-out problems each; greedy decoding)

| difficulty | after SFT | after RL | tool calls (SFT → RL) |
|---|---|---|---|
{diff_rows}

![success by difficulty](success_by_difficulty.png)

## Training

- Pretraining: {pre['steps']} steps on {p.pretrain_examples} copy drills (the user lists numbers, the model repeats
  them), which gives the model its copying circuit before SFT (why: `xinzhou/demo/drills.py`); final held-out
  loss {_num(pre['final_eval_loss'])} (unigram baseline {_num(pre['baseline'])}).
- SFT: {sft['steps']} steps on {p.sft_examples} traces; final held-out loss on assistant tokens
  {_num(sft['final_eval_loss'])}
  (unigram baseline {_num(sft['baseline'])}).{_sft_restarts(sft)} ![loss](loss.png)
- RL: CISPO, {rl['steps']} rollout batches of {p.rl_prompts} problems x {p.rl_group} samples,
  {p.rl_minibatches} updates per batch, {rl['seconds_per_step']:.1f} s per batch. ![reward](reward.png)

## Wall time per stage

| stage | time |
|---|---|
{stage_rows}

## A held-out episode (final model, greedy)

{_transcript_md(res['eval_rl']['transcript'])}

## Serve it

```bash
xinzhou serve --model {out / 'model'}
python examples/demo_client.py --base-url http://127.0.0.1:8000/v1
```
"""
    path = out / "report.md"
    path.write_text(text)
    return path
