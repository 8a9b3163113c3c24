"""xinzhou (心舟): MiniMax-style hybrid lightning-attention MoE models in plain PyTorch.

The top-level names are imported lazily, so ``import xinzhou.chat`` (pure Python) does not pull in torch.

Public API::

    from xinzhou import ModelConfig, get_config, Model, from_pretrained, LLM, SamplingParams
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "xinzhou.configs.model",
    "get_config": "xinzhou.configs.model",
    "list_configs": "xinzhou.configs.model",
    "Model": "xinzhou.model.model",
    "ModelOutput": "xinzhou.model.model",
    "HybridCache": "xinzhou.model.cache",
    "from_pretrained": "xinzhou.model.hf",
    "LLM": "xinzhou.engine.llm",
    "SamplingParams": "xinzhou.engine.params",
    "EngineConfig": "xinzhou.engine.params",
    "RequestOutput": "xinzhou.engine.sequence",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xinzhou' has no attribute {name!r}")
