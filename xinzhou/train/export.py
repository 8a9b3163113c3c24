"""Export a trained model as a Hugging Face checkpoint that transformers and ``xinzhou.from_pretrained`` load.

The directory holds ``config.json`` + safetensors (written by :func:`xinzhou.model.hf.save_pretrained`, atomically)
and, in the same atomic write, ``tokenizer.json`` and ``tokenizer_config.json`` with the M2 chat template from
:mod:`xinzhou.chat`, so ``AutoTokenizer.from_pretrained(dir).apply_chat_template(...)`` works on the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn
from torch.distributed.tensor import DTensor

from xinzhou.configs.model import ModelConfig
from xinzhou.data.tokenizer import Tokenizer
from xinzhou.parallel.data_parallel import unwrap
from xinzhou.parallel.dist import DistInfo, barrier


def with_chat_template(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` carrying the M2 chat template (unchanged if it has one, or if :mod:`xinzhou.chat` is absent)."""
    if tokenizer.chat_template is not None:
        return tokenizer
    try:
        from xinzhou.chat import chat_template  # noqa: PLC0415 (optional layer)
    except ImportError:
        return tokenizer
    return Tokenizer(tokenizer.backend, chat_template=chat_template())


def tokenizer_files(tokenizer: Tokenizer) -> dict[str, str]:
    """File name → text of the tokenizer as Hugging Face reads it (``tokenizer.json``, ``tokenizer_config.json``)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir()}


def export_checkpoint(model: nn.Module, model_config: ModelConfig, tokenizer: Tokenizer, path: str | Path,
                      info: DistInfo | None = None) -> Path:
    """Write ``model`` (plain, DDP- or FSDP-wrapped) with ``tokenizer`` and chat template to ``path``. A collective
    under FSDP (the shards are gathered); rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
        StateDictOptions,
        get_model_state_dict,
    )

    from xinzhou.model.model import Model  # noqa: PLC0415

    info = info or DistInfo()
    path = Path(path)
    inner = unwrap(model)
    sharded = any(isinstance(p, DTensor) for p in inner.parameters())
    if sharded:
        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if info.is_main:
        if sharded:
            inner = Model(model_config)
            inner.load_state_dict(state)
        extra = tokenizer_files(with_chat_template(tokenizer))
        inner.save_pretrained(path, extra_files=extra)
    barrier()
    return path
