"""CISPO vs DAPO vs GRPO on a tiny tool-using model, from one SFT checkpoint (MiniMax-M1 §3.1, on a CPU).

Stages (each resumable: finished runs are skipped, interrupted ones resume from their last checkpoint):

1. ``sft``: the ``xinzhou demo`` pipeline (``--preset tiny``) up to its SFT stage: a ~2M-parameter hybrid
   (LSLS: lightning/softmax, 8 experts top-2), pretrained on copy drills and fine-tuned on ``arithmetic``
   calculator traces; then the greedy held-out success of that policy (the RL runs' step-0 value).
2. ``sweep``: a small learning-rate sweep per method at k = 8 (where the methods differ), one seed; the lr with
   the best mean held-out success over the run is kept. At k = 1 the three objectives make the same on-policy
   update, so one sweep (CISPO's) sets the k = 1 lr for all three.
3. ``main``: CISPO, DAPO, GRPO × k ∈ {1, 8} × seeds {0, 1, 2} at the chosen lrs.
4. ``report``: ``results.json`` and ``success.png`` (held-out success vs rollout batches, mean ± min/max over
   seeds) and the steps-to-target ratio CISPO / DAPO.

    python experiments/cispo_vs_dapo/run.py --quick          # minutes: a smoke version of every stage
    python experiments/cispo_vs_dapo/run.py                  # the study (hours on 2 CPU cores)
    python experiments/cispo_vs_dapo/run.py --stage=report   # redraw from the saved runs

Everything lands in ``--out`` (default ``experiments/cispo_vs_dapo/out`` for the full study and ``.../quick`` for
``--quick``); ``results.json`` and ``success.png`` are copied next to this script by the report stage.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METHODS = ("cispo", "dapo", "grpo")
KS = (1, 8)
SEEDS = (0, 1, 2)


# ----------------------------------------------------------------------------------------------- settings
def settings(quick: bool) -> dict[str, Any]:
    """Every knob of the study in one place (the README quotes them)."""
    s = dict(
        # difficulty 2 (two products and a sum: 3 calls): the demo's SFT policy now solves ~97% of difficulty 1,
        # which leaves RL nothing to show there, and ~86% of difficulty 2
        task="arithmetic", difficulty=2, demo_preset="tiny",
        # the demo's RL shape (8 problems x 4 samples per rollout batch); at k = 8 each update sees one group
        rl=dict(group_size=4, prompts_per_batch=8, max_steps=16, max_tokens=512, max_turn_tokens=96, max_turns=6,
                repetition_stop=128, eval_every=4, eval_n=64, aggregation="prompt", advantage_scale="batch",
                temperature=1.0),
        # Adam with eps 1e-15 moves every weight by ~lr per step: 2e-4 wrecked the SFT policy in one step (greedy
        # success 100% -> 0% on 16 problems), 2e-5 improved it; the sweep brackets that
        sweep_lrs=(1e-5, 3e-5, 1e-4), sweep_steps=8, seeds=SEEDS, ks=KS, methods=METHODS,
        target_fraction=0.5,  # target = base + this × (best final mean success over all settings - base)
    )
    if quick:
        s.update(demo_preset="smoke", sweep_lrs=(1e-4, 3e-4), sweep_steps=4, seeds=(0,))
        s["rl"] = {**s["rl"], "max_steps": 6, "eval_every": 3, "eval_n": 32, "prompts_per_batch": 4}
    return s


# ----------------------------------------------------------------------------------------------- stage 1: SFT
def stage_sft(out: Path, s: dict[str, Any]) -> Path:
    """The SFT checkpoint every RL run starts from: the `xinzhou demo` pipeline up to its SFT stage (tokenizer
    with one token per digit, a ~2M-parameter hybrid LSLS model with 8 experts top-2, pretraining on copy
    drills, SFT on calculator traces), in ``out/demo``; resumable like the demo itself."""
    from xinzhou.demo import get_preset, run_demo  # noqa: PLC0415

    # tool-only traces, as when the study ran (before the demo mixed in calculator-skipping ones)
    res = run_demo(out / "demo", get_preset(s["demo_preset"]).replace(mental_last_frac=0.0), stop_after="sft")
    return Path(res["sft"]["export"])


def base_success(out: Path, s: dict[str, Any], policy: Path) -> dict[str, Any]:
    """Greedy held-out success of the SFT policy (the RL runs' step-0 evaluation uses the same problems)."""
    path = policy.parent / "held_out.json"
    if path.is_file():
        return json.loads(path.read_text())
    from xinzhou.engine import LLM  # noqa: PLC0415
    from xinzhou.rl.evaluate import evaluate  # noqa: PLC0415

    t0 = time.perf_counter()
    llm = LLM(str(policy))
    r = s["rl"]
    res = evaluate(llm, s["task"], n=r["eval_n"], difficulty=s["difficulty"], max_turns=r["max_turns"],
                   max_tokens=r["max_tokens"], max_turn_tokens=r["max_turn_tokens"])
    d = {**res.to_dict(), "seconds": time.perf_counter() - t0}
    path.write_text(json.dumps(d, indent=2))
    print(f"sft policy: {res}", flush=True)
    return d


# ----------------------------------------------------------------------------------------------- RL runs
def run_dir(out: Path, group: str, method: str, k: int, lr: float, seed: int) -> Path:
    return out / group / f"{method}_k{k}_lr{lr:g}_s{seed}"


def rl_job(policy: Path, out_dir: Path, s: dict[str, Any], method: str, k: int, lr: float, seed: int,
           max_steps: int, threads: int) -> dict[str, Any]:
    """One RL run in its own process (resumed if interrupted, skipped if done); returns its summary."""
    done = out_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    args = dict(s["rl"], model=str(policy), out_dir=str(out_dir), task=s["task"], difficulty=s["difficulty"],
                objective=method, minibatches=k, lr=lr, seed=seed, max_steps=max_steps, progress=False,
                export=False, save_every=5, threads=threads)
    if (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").glob("step_*")):
        args["resume"] = True
    else:
        args["overwrite"] = True
    cmd = [sys.executable, "-m", "xinzhou", "rl", "--recipe=default"] + [f"--{k_}={v}" for k_, v in args.items()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{out_dir.name} failed:\n{proc.stderr[-3000:]}")
    summary = summarize_run(out_dir)
    summary.update(method=method, k=k, lr=lr, seed=seed, wall_s=time.perf_counter() - t0)
    done.write_text(json.dumps(summary, indent=2))
    print(f"{out_dir.parent.name}/{out_dir.name}: final held-out {summary['final_success']:.3f}, "
          f"{summary['seconds_per_step']:.1f} s/step", flush=True)
    return summary


def summarize_run(out_dir: Path) -> dict[str, Any]:
    from xinzhou.train.metrics import read_jsonl  # noqa: PLC0415

    recs = read_jsonl(out_dir / "metrics.jsonl")
    steps = [r for r in recs if "reward" in r]
    evals = [r for r in recs if "eval_success" in r]
    mean = lambda key: sum(r[key] for r in steps if isinstance(r.get(key), float) and math.isfinite(r[key])) / \
        max(1, sum(isinstance(r.get(key), float) and math.isfinite(r[key]) for r in steps))  # noqa: E731
    return {
        "eval_steps": [r["step"] for r in evals], "eval_success": [r["eval_success"] for r in evals],
        "eval_ci": [[r["eval_ci_low"], r["eval_ci_high"]] for r in evals],
        "final_success": evals[-1]["eval_success"] if evals else math.nan,
        "mean_eval_success": sum(r["eval_success"] for r in evals) / max(1, len(evals)),
        "train_success": [r["success_rate"] for r in steps], "reward": [r["reward"] for r in steps],
        "clip_frac": mean("clip_frac"), "zero_grad_frac": mean("zero_grad_frac"), "approx_kl": mean("approx_kl"),
        "is_weight": mean("is_weight"), "entropy": mean("entropy"), "prob_corr_min":
            min((r["prob_corr"] for r in steps if math.isfinite(r.get("prob_corr", math.nan))), default=math.nan),
        "truncation_rate": mean("truncation_rate"), "seconds_per_step": sum(r["step_s"] for r in steps) /
            max(1, len(steps)),
    }


def run_all(jobs: list[tuple], workers: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: rl_job(*a), jobs))


def stage_sweep(out: Path, s: dict[str, Any], policy: Path, workers: int, threads: int) -> dict[str, float]:
    """The chosen lr per (method, k) (k = 1 shared), from the best mean held-out success over a short run."""
    jobs = [(policy, run_dir(out, "sweep", m, 8, lr, 0), s, m, 8, lr, 0, s["sweep_steps"], threads)
            for m in s["methods"] for lr in s["sweep_lrs"]]
    jobs += [(policy, run_dir(out, "sweep", "cispo", 1, lr, 0), s, "cispo", 1, lr, 0, s["sweep_steps"], threads)
             for lr in s["sweep_lrs"]]
    results = run_all(jobs, workers)
    chosen: dict[str, float] = {}
    for (m, k) in [(m, 8) for m in s["methods"]] + [("cispo", 1)]:
        cands = [r for r in results if r["method"] == m and r["k"] == k]
        best = max(cands, key=lambda r: (r["mean_eval_success"], r["final_success"], -r["lr"]))
        chosen[f"{m}_k{k}"] = best["lr"]
    for m in s["methods"]:
        chosen[f"{m}_k1"] = chosen["cispo_k1"]
    (out / "sweep" / "chosen.json").write_text(json.dumps({"chosen": chosen, "runs": results}, indent=2))
    return chosen


def stage_main(out: Path, s: dict[str, Any], policy: Path, chosen: dict[str, float], workers: int,
               threads: int) -> list[dict[str, Any]]:
    jobs = [(policy, run_dir(out, "runs", m, k, chosen[f"{m}_k{k}"], seed), s, m, k, chosen[f"{m}_k{k}"], seed,
             s["rl"]["max_steps"], threads) for k in s["ks"] for m in s["methods"] for seed in s["seeds"]]
    return run_all(jobs, workers)


# ----------------------------------------------------------------------------------------------- report
def steps_to(target: float, steps: list[int], values: list[float]) -> int | None:
    """The first evaluated step whose held-out success reaches `target` (None: never)."""
    return next((st for st, v in zip(steps, values) if v >= target), None)


def stage_report(out: Path, s: dict[str, Any], base: dict[str, Any], chosen: dict[str, float],
                 runs: list[dict[str, Any]], dest: Path) -> dict[str, Any]:
    """results.json and success.png from the main runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['method']}_k{r['k']}", []).append(r)
    max_steps = s["rl"]["max_steps"]
    summary: dict[str, Any] = {}
    for key, rs in sorted(groups.items()):
        steps = rs[0]["eval_steps"]
        curve = [sum(r["eval_success"][i] for r in rs) / len(rs) for i in range(len(steps))]
        finals = [r["final_success"] for r in rs]
        mean = sum(finals) / len(finals)
        sd = math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1)) if len(finals) > 1 else 0.0
        summary[key] = {
            "method": rs[0]["method"], "k": rs[0]["k"], "lr": rs[0]["lr"], "seeds": [r["seed"] for r in rs],
            "eval_steps": steps, "success_by_seed": [r["eval_success"] for r in rs], "mean_success": curve,
            "final_mean": mean, "final_sd": sd, "final_by_seed": finals,
            **{k: sum(r[k] for r in rs) / len(rs) for k in ("clip_frac", "zero_grad_frac", "approx_kl",
                                                            "is_weight", "entropy", "truncation_rate",
                                                            "seconds_per_step")},
            "prob_corr_min": min(r["prob_corr_min"] for r in rs),
        }
    best = max(v["final_mean"] for v in summary.values())
    target = base["success"] + s["target_fraction"] * (best - base["success"])
    for v in summary.values():
        per_seed = [steps_to(target, v["eval_steps"], ys) for ys in v["success_by_seed"]]
        v["steps_to_target_by_seed"] = per_seed
        v["seeds_reaching_target"] = sum(x is not None for x in per_seed)
        v["steps_to_target_mean"] = sum(x if x is not None else max_steps for x in per_seed) / len(per_seed)
        v["steps_to_target_of_mean_curve"] = steps_to(target, v["eval_steps"], v["mean_success"])
    ratios = {}
    for k in s["ks"]:
        c, d = summary.get(f"cispo_k{k}"), summary.get(f"dapo_k{k}")
        if c and d:
            ratios[f"k{k}"] = {
                "mean_over_seeds": c["steps_to_target_mean"] / d["steps_to_target_mean"],
                "of_mean_curves": (c["steps_to_target_of_mean_curve"] / d["steps_to_target_of_mean_curve"]
                                   if c["steps_to_target_of_mean_curve"] and d["steps_to_target_of_mean_curve"]
                                   else None),
                "note": "runs that never reach the target count as max_steps (a lower bound on their true steps)",
            }
    results = {"settings": {k: v for k, v in s.items()}, "base_held_out": base, "lr_chosen": chosen,
               "target_success": target, "target_rule": f"base + {s['target_fraction']} x (best final mean - base)",
               "steps_to_target_ratio_cispo_over_dapo": ratios, "runs": summary}
    for path in (out / "results.json", dest / "results.json"):
        path.write_text(json.dumps(results, indent=2, default=list) + "\n")
    plot_success(summary, base["success"], target, [out / "success.png", dest / "success.png"], s["ks"])
    return results


def plot_success(summary: dict[str, Any], base: float, target: float, paths: list[Path], ks: tuple[int, ...]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4), dpi=120, sharey=True, squeeze=False)
    colors = {"cispo": "tab:red", "dapo": "tab:blue", "grpo": "tab:green"}
    for ax, k in zip(axes[0], ks):
        for m in METHODS:
            v = summary.get(f"{m}_k{k}")
            if v is None:
                continue
            ys = v["success_by_seed"]
            ax.plot(v["eval_steps"], v["mean_success"], "o-", ms=3, color=colors[m],
                    label=f"{m.upper()} (lr {v['lr']:g}, {len(ys)} seeds)")
            ax.fill_between(v["eval_steps"], [min(c) for c in zip(*ys)], [max(c) for c in zip(*ys)],
                            color=colors[m], alpha=0.15)
        ax.axhline(base, ls=":", color="grey", lw=1, label=f"SFT policy {base:.2f}")
        ax.axhline(target, ls="--", color="black", lw=1, label=f"target {target:.2f}")
        ax.set_title(f"k = {k} minibatch update{'s' if k > 1 else ''} per rollout batch")
        ax.set_xlabel("rollout batches")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out success (greedy)\nline: mean, band: min-max over seeds")
    fig.tight_layout()
    for p in paths:
        fig.savefig(p)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a minutes-long smoke version of every stage")
    ap.add_argument("--out", default="", help="work folder (default experiments/cispo_vs_dapo/out or .../quick)")
    ap.add_argument("--stage", default="all", choices=("all", "sft", "sweep", "main", "report"))
    ap.add_argument("--workers", type=int, default=2, help="RL runs in parallel (each on one thread)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--ks", default="", help="comma-separated minibatch counts k (default 1,8)")
    ap.add_argument("--lr", type=float, default=0.0,
                    help="one lr for every method, skipping the sweep (a cheaper study; say so when reporting)")
    ap.add_argument("--difficulty", type=int, default=0, help="task difficulty (default 2)")
    ap.add_argument("--max-steps", type=int, default=0, help="rollout batches per run (default 16)")
    args = ap.parse_args(argv)
    import torch  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    if args.seeds:
        s["seeds"] = tuple(int(x) for x in args.seeds.split(","))
    if args.ks:
        s["ks"] = tuple(int(x) for x in args.ks.split(","))
    if args.difficulty:
        s["difficulty"] = args.difficulty
    if args.max_steps:
        s["rl"] = {**s["rl"], "max_steps": args.max_steps}
    out = Path(args.out) if args.out else HERE / ("quick" if args.quick else "out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    policy = stage_sft(out, s)
    base = base_success(out, s, policy)
    if args.stage == "sft":
        return 0
    chosen_path = out / "sweep" / "chosen.json"
    if args.lr:
        chosen = {f"{m}_k{k}": args.lr for m in s["methods"] for k in s["ks"]}
        s["lr_note"] = f"no sweep: lr {args.lr:g} for every method (--lr)"
    elif chosen_path.is_file():
        chosen = json.loads(chosen_path.read_text())["chosen"]
    else:
        chosen = stage_sweep(out, s, policy, args.workers, args.threads)
    print(f"chosen learning rates: {chosen}", flush=True)
    if args.stage == "sweep":
        return 0
    runs = stage_main(out, s, policy, chosen, args.workers, args.threads)
    if args.stage == "main":
        return 0
    dest = HERE if not args.quick else out
    res = stage_report(out, s, base, chosen, runs, dest)
    print(json.dumps(res["steps_to_target_ratio_cispo_over_dapo"], indent=2))
    print(f"done in {time.perf_counter() - t0:.0f}s; results in {dest / 'results.json'}, {dest / 'success.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
