"""What an RL run shows: a progress line (reward, success, held-out success, seconds per step) and two PNGs drawn
from `metrics.jsonl`: `reward.png` (train reward and success, held-out success with its 95% interval) and
`clip.png` (the diagnostics that explain an RL run: clip fraction, zero-gradient fraction, IS weight, approximate
KL, entropy, rollout-vs-trainer probability correlation, truncation rate).

Why separate from the training loop's plots: RL records are different (rewards, clip statistics, evaluations with
intervals), and the experiment scripts redraw the same figures from saved logs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from xinzhou.train.metrics import read_jsonl


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def plot_rl(metrics_path: str | os.PathLike, out_dir: str | os.PathLike, *, title: str = "") -> list[Path]:
    """Draw `reward.png` and `clip.png` into `out_dir` from a run's `metrics.jsonl`; returns their paths."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = read_jsonl(metrics_path)
    train = [r for r in records if "reward" in r]
    evals = [r for r in records if "eval_success" in r]
    out = Path(out_dir)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label in (("reward", "train reward"), ("success_rate", "train success")):
        ax.plot(*_series(train, key), lw=1, alpha=0.8, label=label)
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["eval_success"] for r in evals], "o-", ms=4, label="held-out success (greedy)")
        ax.fill_between(steps, [r["eval_ci_low"] for r in evals], [r["eval_ci_high"] for r in evals], alpha=0.2,
                        label="95% Wilson interval")
    ax.set_xlabel("rollout batch (step)")
    ax.set_ylabel("reward / success")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [_save(fig, out / "reward.png")]

    panels = (("clip_frac", "zero_grad_frac"), ("is_weight", "ratio"), ("approx_kl",), ("entropy",),
              ("prob_corr",), ("truncation_rate", "zero_variance_frac"))
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), dpi=110)
    for ax, keys in zip(axes.flat, panels):
        for key in keys:
            ax.plot(*_series(train, key), lw=1, label=key)
        ax.set_xlabel("step")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(_save(fig, out / "clip.png"))
    return paths


class RLProgress:
    """One `rich` line: step / total, train reward and success, last held-out success, seconds per step, ETA.
    `enabled=False` (other ranks, tests) draws nothing."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True) -> None:
        self._p = None
        if not enabled:
            return
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("reward {task.fields[reward]}"), TextColumn("success {task.fields[success]}"),
                           TextColumn("held-out {task.fields[heldout]}"), TextColumn("{task.fields[sps]} s/step"),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._p.start()
        self._task = self._p.add_task("rl", total=total, completed=start, reward="-", success="-", heldout="-",
                                      sps="-")

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=step, reward=f"{record.get('reward', math.nan):.3f}",
                           success=f"{record.get('success_rate', math.nan):.3f}",
                           sps=f"{record.get('step_s', math.nan):.1f}")

    def held_out(self, success: float) -> None:
        if self._p is not None:
            self._p.update(self._task, heldout=f"{success:.3f}")

    def print(self, text: str) -> None:
        if self._p is not None:
            self._p.console.print(text)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
