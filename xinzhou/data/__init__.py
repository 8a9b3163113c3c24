"""Data layer: the M2 tokenizer, corpus readers, packing with ``cu_seqlens``, and resumable batch streams.

One file per concern: ``tokenizer.py`` (byte-level BPE with the M2 special tokens, saved for Hugging Face),
``packing.py`` (documents -> fixed-length rows), ``loaders.py`` (files -> documents -> endless batches),
``corpus/`` (the bundled default corpus and the unigram baseline). Names are imported lazily so that
``from xinzhou.data.tokenizer import EOS`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(["MarkedText", "Tokenizer", "encode_marked", "encode_with", "train_tokenizer"],
                   "xinzhou.data.tokenizer"),
    **dict.fromkeys(["IGNORE_INDEX", "PackedBatch", "pack_documents", "pack_sft"], "xinzhou.data.packing"),
    **dict.fromkeys(["PretrainBatches", "SFTBatches", "TokenizedCorpus", "load_documents", "read_documents",
                     "read_jsonl", "read_sft_jsonl", "read_text", "split_documents"], "xinzhou.data.loaders"),
    **dict.fromkeys(["default_corpus", "unigram_entropy"], "xinzhou.data.corpus"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xinzhou.data' has no attribute {name!r}")
