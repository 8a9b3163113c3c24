"""Read corpora from disk and turn them into an endless, resumable stream of packed batches.

Why: training needs (1) readers that fail with the file and line when the data is bad, before any compute is
spent; (2) a compact tokenized form of the corpus; (3) a batch iterator whose position is a few integers, so a
checkpoint can store it and a resumed run continues with exactly the batches the uninterrupted run would have
seen. The shuffle order of epoch ``e`` is a pure function of ``(seed, e)``, so the position is just
``(document k of the endless shuffled stream, token offset)``.

Formats:

* text (any suffix but ``.jsonl``): documents separated by blank lines.
* JSONL: one JSON object a line, the document in ``field`` (default ``"text"``); blank lines are skipped.
* SFT JSONL: ``{"input_ids": [...], "loss_mask": [...]}`` a line, or ``{"messages": [...]}`` turned into that
  pair by a ``render`` callable (the chat renderer).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xinzhou.data.packing import (
    PackedBatch, check_seq_len, check_sft_example, check_sft_examples, collate_rows, take_rows, take_sft_rows,
    wrap_document,
)
from xinzhou.data.tokenizer import Tokenizer

T_ = TypeVar("T_")
SFTExample = tuple[Sequence[int], Sequence[int]]


# --- readers ----------------------------------------------------------------------------------------------------
def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if not path.is_file():
        raise ValueError(f"corpus path is not a file: {path}")
    return path


def read_text(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a text file, separated by blank (or whitespace-only) lines; streamed line by line.
    A missing file raises ``FileNotFoundError`` at the call, not at the first ``next``."""
    return _text_documents(_existing_file(path))


def _text_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).removesuffix("\n")
                lines = []
    if lines:
        yield "".join(lines).removesuffix("\n")


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """The ``field`` string of each line of a JSONL file; ``ValueError`` naming file and line for a line that is
    not a JSON object or lacks ``field``."""
    return _jsonl_documents(_existing_file(path), field)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for lineno, record in _json_records(path):
        if field not in record:
            raise ValueError(f"{path}:{lineno}: no field {field!r} (fields: {sorted(record)}); "
                             "choose the text field with `field=`")
        if not isinstance(record[field], str):
            raise ValueError(f"{path}:{lineno}: field {field!r} is a {type(record[field]).__name__}, expected a string")
        yield record[field]


def read_documents(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """Documents of a ``.jsonl`` file (JSON lines, text in ``field``) or of a text file (blank-line separated)."""
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path}: a .json file is not read as a corpus; use JSON lines (.jsonl, one object a line) "
                         "or plain text")
    return read_jsonl(path, field) if path.suffix == ".jsonl" else read_text(path)


def load_documents(path: str | os.PathLike, field: str = "text") -> list[str]:
    """All non-empty documents of ``path`` (see ``read_documents``), read now; ``ValueError`` naming the file when
    there are none, so an empty corpus fails before a tokenizer is trained or a model built."""
    docs = [d for d in read_documents(path, field) if d]
    if not docs:
        raise ValueError(f"corpus {path} is empty: it holds no non-empty document")
    return docs


def read_sft_jsonl(
    path: str | os.PathLike, *, render: Callable[[dict[str, Any]], SFTExample] | None = None
) -> Iterator[tuple[list[int], list[int]]]:
    """``(input_ids, loss_mask)`` per line of an SFT JSONL file. Lines with ``messages`` need ``render``
    (the chat renderer: record -> (ids, mask)); validation errors name the file and line."""
    return _sft_records(_existing_file(path), render)


def _sft_records(path: Path, render: Callable | None) -> Iterator[tuple[list[int], list[int]]]:
    for lineno, record in _json_records(path):
        where = f"{path}:{lineno}"
        if "input_ids" in record and "loss_mask" in record:
            ids, mask = record["input_ids"], record["loss_mask"]
        elif "messages" in record:
            if render is None:
                raise ValueError(f"{where}: has 'messages' but no renderer was given; conversations need the chat "
                                 "renderer (pass render=) to become input_ids and loss_mask")
            ids, mask = render(record)
        else:
            raise ValueError(f"{where}: expected 'input_ids' and 'loss_mask', or 'messages' (fields: {sorted(record)})")
        ids, mask = check_sft_example(ids, mask, where)
        yield ids.tolist(), mask.astype(int).tolist()


def split_documents(docs: Sequence[T_], eval_fraction: float = 0.05, seed: int = 0) -> tuple[list[T_], list[T_]]:
    """Split whole documents into (train, eval) at random but deterministically; both keep the input order and
    each gets at least one document. Needs at least two documents."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n = len(docs)
    if n < 2:
        raise ValueError(f"need at least 2 documents to split into train and eval, got {n}")
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    is_eval = np.zeros(n, bool)
    is_eval[np.random.RandomState(seed).permutation(n)[:n_eval]] = True
    return [d for d, e in zip(docs, is_eval) if not e], [d for d, e in zip(docs, is_eval) if e]


# --- tokenized corpus ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizedCorpus:
    """Documents as one flat token array plus offsets: compact, and indexable by document.

    tokens   [N] int32, all documents end to end (no BOS/EOS; packing adds them)
    offsets  [D+1] int64, document d is tokens[offsets[d]:offsets[d+1]]
    """

    tokens: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_ids(cls, docs: Iterable[Sequence[int]]) -> TokenizedCorpus:
        """From token-id lists; empty documents are dropped; ``ValueError`` if none is left."""
        arrays = [a for d in docs if len(a := np.asarray(d, dtype=np.int32))]
        if not arrays:
            raise ValueError("the corpus is empty: no document has any tokens")
        offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        return cls(np.concatenate(arrays), offsets)

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: Tokenizer, *, chunk: int = 1024) -> TokenizedCorpus:
        """Tokenize ``texts`` (streamed, ``chunk`` documents at a time); empty texts are dropped."""
        def ids() -> Iterator[list[int]]:
            batch: list[str] = []
            for text in texts:
                if text:
                    batch.append(text)
                if len(batch) == chunk:
                    yield from tokenizer.encode_batch(batch)
                    batch = []
            yield from tokenizer.encode_batch(batch)

        return cls.from_ids(ids())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, d: int) -> np.ndarray:
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def fingerprint(self) -> int:
        """CRC32 of the contents: a resumed run checks it is reading the same corpus."""
        return zlib.crc32(self.offsets.tobytes(), zlib.crc32(self.tokens.tobytes()))


# --- endless shuffled batch streams -------------------------------------------------------------------------------
class _Stream:
    """An endless sequence of items, shuffled anew each epoch; item ``k`` is ``items[order(k // n)[k % n]]``.
    Subclasses cut rows from it; the position (``k`` plus a token offset) is the whole state."""

    def __init__(self, items: Sequence, seq_len: int, batch_size: int, *, seed: int, shuffle: bool,
                 rank: int, world_size: int, fingerprint: int) -> None:
        check_seq_len(seq_len)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.items, self.seq_len, self.batch_size = items, seq_len, batch_size
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self._fingerprint = fingerprint
        self._order: tuple[int, np.ndarray | None] = (-1, None)
        self.k, self.offset = 0, 0

    def _index(self, k: int) -> int:
        epoch, i = divmod(k, len(self.items))
        if not self.shuffle:
            return i
        if self._order[0] != epoch:
            # RandomState's stream is frozen by numpy, so the order survives numpy upgrades
            self._order = (epoch, np.random.RandomState([self.seed, epoch]).permutation(len(self.items)))
        return int(self._order[1][i])

    def _rows(self, num_rows: int) -> list[tuple[np.ndarray, ...]]:
        raise NotImplementedError

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> PackedBatch:
        """The next ``[batch_size, seq_len]`` batch of this rank: each step cuts ``batch_size * world_size`` rows
        and rank ``r`` keeps the ``r``-th block, so all ranks share one position."""
        rows = self._rows(self.batch_size * self.world_size)
        return collate_rows(rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])

    @property
    def epoch(self) -> float:
        """Epochs consumed so far, fractional."""
        return self.k / len(self.items)

    def state_dict(self) -> dict[str, int]:
        """The position: a few ints (JSON-serialisable)."""
        return {"k": self.k, "offset": self.offset, "seed": self.seed, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``; ``ValueError`` if it was saved for other data or another seed."""
        if state.get("fingerprint") != self._fingerprint or state.get("seed") != self.seed:
            raise ValueError("data state was saved for a different corpus or seed "
                             f"(saved seed={state.get('seed')}, fingerprint={state.get('fingerprint')}; "
                             f"this iterator has seed={self.seed}, fingerprint={self._fingerprint})")
        self.k, self.offset = int(state["k"]), int(state["offset"])


class PretrainBatches(_Stream):
    """Endless batches of packed pretraining rows (see ``packing.py`` for the row layout).

    Every epoch visits each document once, in an order fixed by ``(seed, epoch)``; each document is wrapped as
    ``[bos_id] + ids + [eos_id]``. ``state_dict()``/``load_state_dict()`` save and restore the position."""

    def __init__(self, corpus: TokenizedCorpus, seq_len: int, batch_size: int, *, bos_id: int | None,
                 eos_id: int | None, pad_id: int = 0, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if len(corpus) == 0:
            raise ValueError("the corpus is empty")
        super().__init__(corpus, seq_len, batch_size, seed=seed, shuffle=shuffle, rank=rank,
                         world_size=world_size, fingerprint=corpus.fingerprint())
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self._cache: tuple[int, np.ndarray | None] = (-1, None)

    def _doc(self, k: int) -> np.ndarray:
        if self._cache[0] != k:
            self._cache = (k, wrap_document(self.items[self._index(k)], self.bos_id, self.eos_id))
        return self._cache[1]

    def _rows(self, num_rows: int) -> list[tuple[np.ndarray, ...]]:
        rows, (self.k, self.offset) = take_rows(self._doc, self.seq_len, num_rows, (self.k, self.offset),
                                                pad_id=self.pad_id)
        return rows


class SFTBatches(_Stream):
    """Endless batches of SFT rows: whole ``(input_ids, loss_mask)`` examples per row, padded, shuffled per epoch.

    All examples are validated at construction (lengths, 0/1 masks, at most ``seq_len`` tokens unless
    ``truncate``), so bad data fails before training starts."""

    def __init__(self, examples: Iterable[SFTExample], seq_len: int, batch_size: int, *, pad_id: int = 0,
                 seed: int = 0, shuffle: bool = True, truncate: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        check_seq_len(seq_len)
        checked = check_sft_examples(examples, seq_len, truncate=truncate)
        crc = 0
        for ids, mask in checked:
            crc = zlib.crc32(mask.tobytes(), zlib.crc32(ids.tobytes(), crc))
        super().__init__(checked, seq_len, batch_size, seed=seed, shuffle=shuffle, rank=rank,
                         world_size=world_size, fingerprint=crc)
        self.pad_id = pad_id

    def _rows(self, num_rows: int) -> list[tuple[np.ndarray, ...]]:
        rows, self.k = take_sft_rows(lambda k: self.items[self._index(k)], self.seq_len, num_rows, self.k,
                                     pad_id=self.pad_id)
        return rows
