"""What a run shows while and after it trains: a progress bar, metrics as JSON lines, TensorBoard, a loss curve.

* ``metrics.jsonl`` holds one JSON object per logged step (``{"step", "loss", "lr", "tokens_per_s", ...}``) and
  one per evaluation (``{"step", "eval_loss", ...}``). On resume it is cut back to the checkpoint's step, so a run
  that crashed and resumed leaves exactly the log of an uninterrupted run (floats are written with full
  precision: compare two logs to check bit-identity).
* TensorBoard (optional, ``pip install tensorboard``) receives the same scalars.
* ``loss.png`` (matplotlib) plots train and eval loss against steps, with the unigram baseline when known.
* :class:`ProgressBar` draws one ``rich`` line: step, loss, tokens/s and ETA.

Only rank 0 writes or draws; the other ranks get objects whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from xinzhou.fileio import atomic_write_text, mkstemp


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file (``[]`` if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Append records to ``metrics.jsonl`` (and TensorBoard). ``enabled=False`` (non-zero ranks) makes it inert."""

    def __init__(self, path: str | os.PathLike, *, tensorboard_dir: str | os.PathLike | None = None,
                 enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(str(tensorboard_dir))
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (called on resume), atomically."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``); numbers are written in full precision."""
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_losses(metrics_path: str | os.PathLike, png_path: str | os.PathLike, *, baseline: float | None = None,
                title: str = "") -> Path:
    """Draw train (thin) and eval (markers) loss against step from ``metrics.jsonl`` into ``png_path``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = read_jsonl(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", ms=4, label="eval loss")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", lw=1, label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fd, tmp = mkstemp(png_path.parent, prefix=f".{png_path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return png_path


class ProgressBar:
    """``rich`` progress line: ``step / total`` bar, loss, tokens/s, elapsed and ETA. ``enabled=False``: no bar;
    ``echo=False`` (non-zero ranks): no output at all."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True, echo: bool = True,
                 description: str = "train") -> None:
        self._progress = None
        self.echo = echo
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

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=start, loss="-", tps="-")

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._progress is not None:
            loss_text = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
            self._progress.update(self._task, completed=step, loss=loss_text, tps=f"{tokens_per_s:,.0f}")

    def print(self, text: str) -> None:
        """A line above the bar (eval results); printed plainly when the bar is off but ``echo`` is on."""
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.echo:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
