"""Helpers shared by the training and parallel tests (imported by name, like tests/chat/chat_strategies.py)."""

from __future__ import annotations

import json
from pathlib import Path

from xinzhou.configs.train import TrainConfig, resolve
from xinzhou.data.corpus import default_corpus

NUM_DOCS = 240


def write_small_corpus(path: Path) -> str:
    """The first ``NUM_DOCS`` documents of the bundled corpus (a BPE trains on them in a fraction of a second)."""
    path.write_text("\n\n".join(default_corpus()[:NUM_DOCS]) + "\n", encoding="utf-8")
    return str(path)


def debug_config(out_dir, corpus: str, **overrides) -> TrainConfig:
    """The `debug` recipe on ``corpus`` writing to ``out_dir``, quiet, with ``overrides``."""
    return resolve("debug", {"out_dir": str(out_dir), "data": corpus, "progress": False, **overrides})


def losses(out_dir) -> dict[int, float]:
    """Step → train loss from a run's metrics.jsonl."""
    recs = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}
