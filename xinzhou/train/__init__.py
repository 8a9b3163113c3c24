"""Training: one loop shared by pretraining, SFT and RL (``loop.py``), with AdamW and schedules (``optim.py``),
crash-safe checkpoints (``checkpoint.py``), metrics and plots (``metrics.py``), the LM loss (``loss.py``), the
run driver (``run.py``), Hugging Face export (``export.py``) and the two entry points ``pretrain.py``/``sft.py``.

Names are imported lazily so that ``import xinzhou.train`` stays cheap. The entry points are
``xinzhou.train.pretrain.pretrain(cfg)`` and ``xinzhou.train.sft.sft(cfg)``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(["Trainer", "StepResult", "LoopOptions", "fit"], "xinzhou.train.loop"),
    **dict.fromkeys(["LossFn", "make_lm_loss", "packed_forward"], "xinzhou.train.loss"),
    **dict.fromkeys(["Schedule", "build_optimizer"], "xinzhou.train.optim"),
    **dict.fromkeys(["Checkpointer"], "xinzhou.train.checkpoint"),
    **dict.fromkeys(["MetricsLogger", "ProgressBar", "plot_losses", "read_jsonl"], "xinzhou.train.metrics"),
    **dict.fromkeys(["RunResult"], "xinzhou.train.run"),
    **dict.fromkeys(["export_checkpoint"], "xinzhou.train.export"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xinzhou.train' has no attribute {name!r}")
