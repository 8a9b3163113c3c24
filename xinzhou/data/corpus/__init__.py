"""The bundled default corpus and the unigram baseline that says whether a model learned anything from it.

`xinzhou pretrain` with no arguments trains on `default.txt` (about 1 MB of synthetic English written by
`generate.py`; see there for why it is synthetic). A model has learned something beyond token frequencies only
when its eval loss is below the unigram entropy of the eval tokens, so the baseline lives beside the corpus.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DEFAULT_CORPUS_PATH = Path(__file__).with_name("default.txt")


def default_corpus() -> list[str]:
    """The bundled documents, in file order (deterministic: the file is generated from a fixed seed)."""
    from xinzhou.data.loaders import read_text

    return list(read_text(DEFAULT_CORPUS_PATH))


def unigram_entropy(token_stream: Iterable[int] | np.ndarray) -> float:
    """Entropy in nats/token of the empirical token distribution of ``token_stream``.

    This is the cross-entropy of the best model that ignores context (predict every token with its frequency), so
    an eval loss well below it means the model uses context. Measured on the eval tokens themselves it is slightly
    optimistic for the baseline, which only makes the comparison stricter.
    """
    if isinstance(token_stream, np.ndarray):
        counts = np.unique(token_stream.ravel(), return_counts=True)[1].tolist()
    else:
        counts = list(Counter(int(t) for t in token_stream).values())
    total = sum(counts)
    if total == 0:
        raise ValueError("unigram_entropy of an empty token stream is undefined")
    return -sum(c / total * math.log(c / total) for c in counts)
