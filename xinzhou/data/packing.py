"""Pack documents into fixed-length rows whose document boundaries travel as ``cu_seqlens``.

Why: padding every document to the longest wastes most of a batch, and concatenating documents without
boundaries lets one document's context leak into the next. Packing fills every row, and ``cu_seqlens`` tells the
model where documents start so lightning layers reset their state and softmax layers mask across them: a packed
batch then gives exactly the losses of its documents run one by one.

Conventions (B rows, T = ``seq_len`` positions per row):

* **Pretraining.** Each document becomes ``[bos] + ids + [eos]`` (either can be ``None``) and the documents are
  laid end to end in one stream. Row ``r`` holds stream tokens ``[r*T, (r+1)*T)``; its targets are the next
  stream tokens, so row ``r``'s last target is row ``r+1``'s first token. A target is ``-100`` (ignored) where
  the next token belongs to another document: the document's last token (its EOS) has no target, so the first
  token of a document (its BOS) is never predicted and every other token is predicted exactly once. With EOS
  appended the model learns to predict EOS, i.e. to stop.
* A document that does not fit in a row is **split**: its continuation starts a new segment at position 0 of the
  next row (state reset, ``position_ids`` from 0), so it loses the context of its first part; the target that
  links the two parts (last position of row ``r``) is still a real within-document target.
* **SFT.** Examples ``(input_ids, loss_mask)`` are never split: a row holds whole examples and is padded at the
  end. ``loss_mask[i] = 1`` means token ``i`` is trained as a target (predicted from ``ids[:i]``), so
  ``labels[i-1] = ids[i]`` where ``mask[i]`` is set and ``-100`` elsewhere. The chat renderer sets it on the
  assistant's tokens.
* **Padding** (``pad_id``) fills the end of the last row of a finite set and of SFT rows; it is its own segment
  in ``cu_seqlens`` and never a target.
* ``cu_seqlens`` per row is int32 ``[0, starts..., T]``; ``position_ids`` restart at 0 at every segment start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
_PAD_SEGMENT = -1

# A stream of documents by global index k (0, 1, 2, ...); None past the end of a finite stream.
DocumentAt = Callable[[int], "np.ndarray | None"]
ExampleAt = Callable[[int], "tuple[np.ndarray, np.ndarray] | None"]


@dataclass(frozen=True)
class PackedBatch:
    """Rows of packed tokens; every tensor is on one device.

    input_ids     [B, T] int64
    labels        [B, T] int64, the next token or -100 (no loss)
    position_ids  [B, T] int64, 0 at each segment start
    cu_seqlens    B tensors, int32 [S_b + 1]: segment boundaries of row b, from 0 to T
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_targets(self) -> int:
        """Positions that carry a loss."""
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def max_seqlen(self) -> int:
        """Longest segment (what a varlen attention kernel wants with ``cu_seqlens``)."""
        return max(int((cu[1:] - cu[:-1]).max()) for cu in self.cu_seqlens)

    def flatten(self) -> PackedBatch:
        """The same tokens as one row ``[1, B*T]`` with one ``cu_seqlens [N+1]`` int32: the B=1 varlen form
        models take. Row ends are segment ends, so no segment crosses from one row into the next."""
        B, T = self.input_ids.shape
        parts = [cu[:-1] + b * T for b, cu in enumerate(self.cu_seqlens)]
        parts.append(torch.tensor([B * T], dtype=torch.int32, device=self.input_ids.device))
        return PackedBatch(
            self.input_ids.reshape(1, B * T),
            self.labels.reshape(1, B * T),
            self.position_ids.reshape(1, B * T),
            [torch.cat(parts).to(torch.int32)],
        )

    def rows(self, start: int, stop: int) -> PackedBatch:
        """Rows ``start:stop`` as their own batch."""
        return PackedBatch(self.input_ids[start:stop], self.labels[start:stop], self.position_ids[start:stop],
                           self.cu_seqlens[start:stop])

    def split(self, batch_size: int) -> list[PackedBatch]:
        """Consecutive batches of ``batch_size`` rows (the last one may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [self.rows(i, i + batch_size) for i in range(0, self.batch_size, batch_size)]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
                           [cu.to(device) for cu in self.cu_seqlens])


# --- one row -------------------------------------------------------------------------------------------------------
def _row(window: np.ndarray, segment: np.ndarray, target_ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """Inputs, labels, positions and cu_seqlens of one row from a window of T+1 stream tokens.

    ``segment[t]`` numbers the document token ``t`` belongs to (pad: -1) and ``target_ok[t]`` says whether token
    ``t`` may be a target. Position ``t`` predicts token ``t+1`` only inside one segment.
    """
    T = len(window) - 1
    labels = np.where((segment[1:] == segment[:-1]) & target_ok[1:], window[1:], IGNORE_INDEX)
    starts = np.flatnonzero(np.r_[True, segment[1:T] != segment[: T - 1]])
    cu = np.r_[starts, T].astype(np.int32)
    positions = np.arange(T) - np.repeat(starts, np.diff(cu))
    return window[:T], labels, positions, cu


def collate_rows(rows: list[tuple[np.ndarray, ...]]) -> PackedBatch:
    """Stack rows made by ``take_rows``/``take_sft_rows`` into a batch."""
    def stack(i: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([r[i] for r in rows]).astype(np.int64))

    return PackedBatch(stack(0), stack(1), stack(2), [torch.from_numpy(r[3]) for r in rows])


def check_seq_len(seq_len: int) -> None:
    """Raise ``ValueError`` unless ``seq_len`` is an int >= 2 (one input with one target needs two tokens)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")


# --- pretraining: a stream of documents cut into rows ---------------------------------------------------------------
def take_rows(
    doc_at: DocumentAt, seq_len: int, num_rows: int | None, start: tuple[int, int] = (0, 0), *, pad_id: int = 0
) -> tuple[list[tuple[np.ndarray, ...]], tuple[int, int]]:
    """Cut up to ``num_rows`` rows (``None``: until the stream ends) from the document stream ``doc_at``
    beginning at ``start = (document k, token offset)``; returns the rows and the position after them.
    Documents must be non-empty; the last row of a finite stream is padded."""
    T = seq_len
    k, offset = start
    rows = []
    while (num_rows is None or len(rows) < num_rows) and doc_at(k) is not None:
        tokens, segments, need = [], [], T
        while need > 0 and (doc := doc_at(k)) is not None:
            piece = doc[offset : offset + need]
            tokens.append(piece)
            segments.append(np.full(len(piece), k))
            need -= len(piece)
            offset += len(piece)
            if offset == len(doc):
                k, offset = k + 1, 0
        # the token after the row is the next row's first token; at the end of the stream, pad the rest
        if (nxt := doc_at(k)) is not None:
            tokens.append(nxt[offset : offset + 1])
            segments.append(np.full(1, k))
        else:
            tokens.append(np.full(need + 1, pad_id))
            segments.append(np.full(need + 1, _PAD_SEGMENT))
        window, segment = np.concatenate(tokens).astype(np.int64), np.concatenate(segments)
        rows.append(_row(window, segment, segment >= 0))
    return rows, (k, offset)


def wrap_document(ids: Sequence[int] | np.ndarray, bos_id: int | None, eos_id: int | None) -> np.ndarray:
    """``[bos] + ids + [eos]`` as an int64 array (either end omitted when its id is ``None``)."""
    head = [] if bos_id is None else [bos_id]
    tail = [] if eos_id is None else [eos_id]
    return np.concatenate([np.asarray(head, np.int64), np.asarray(ids, np.int64), np.asarray(tail, np.int64)])


def pack_documents(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    *,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int = 0,
) -> PackedBatch:
    """Pack all ``docs`` in order into rows of ``seq_len`` (the last row padded): the finite form used for eval
    sets and tests. Empty documents are skipped; ``ValueError`` when nothing is left."""
    check_seq_len(seq_len)
    wrapped = [w for d in docs if len(w := wrap_document(d, bos_id, eos_id))]
    if not wrapped:
        raise ValueError("no documents to pack (the corpus is empty)")
    rows, _ = take_rows(lambda k: wrapped[k] if k < len(wrapped) else None, seq_len, None, pad_id=pad_id)
    return collate_rows(rows)


# --- SFT: whole examples per row --------------------------------------------------------------------------------
def check_sft_example(input_ids: Sequence[int], loss_mask: Sequence[int], where: str = "example") -> tuple[
        np.ndarray, np.ndarray]:
    """Validate one SFT example and return it as (int64 ids, bool mask); ``ValueError`` naming ``where``."""
    ids, mask = np.asarray(input_ids), np.asarray(loss_mask)
    if ids.ndim != 1 or mask.ndim != 1 or len(ids) != len(mask):
        raise ValueError(f"{where}: input_ids and loss_mask must be flat lists of one length, got "
                         f"{len(input_ids)} and {len(loss_mask)}")
    if len(ids) == 0:
        raise ValueError(f"{where}: input_ids is empty")
    if ids.dtype.kind not in "iu" or ids.min() < 0:
        raise ValueError(f"{where}: input_ids must be non-negative ints")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{where}: loss_mask must hold only 0 and 1 (or booleans)")
    return ids.astype(np.int64), mask.astype(bool)


def take_sft_rows(
    example_at: ExampleAt, seq_len: int, num_rows: int | None, start: int = 0, *, pad_id: int = 0
) -> tuple[list[tuple[np.ndarray, ...]], int]:
    """Fill up to ``num_rows`` rows (``None``: until the stream ends) with whole examples from ``example_at``
    beginning at example ``start``, padding each row; returns the rows and the next example index.
    Every example must be at most ``seq_len`` long (validate first, e.g. with ``pack_sft``)."""
    T = seq_len
    k = start
    rows = []
    while (num_rows is None or len(rows) < num_rows) and example_at(k) is not None:
        window, segment, target_ok = np.full(T + 1, pad_id), np.full(T + 1, _PAD_SEGMENT), np.zeros(T + 1, bool)
        used = 0
        while (ex := example_at(k)) is not None and used + len(ex[0]) <= T:
            n = len(ex[0])
            window[used : used + n], segment[used : used + n], target_ok[used : used + n] = ex[0], k, ex[1]
            used, k = used + n, k + 1
        assert used > 0, "an example is longer than seq_len"
        rows.append(_row(window, segment, target_ok))
    return rows, k


def sft_row_fill(lengths: Sequence[int], seq_len: int) -> float:
    """Share of row positions holding tokens when examples of ``lengths`` are packed whole, in order, into padded
    rows of ``seq_len`` (as `take_sft_rows` does; a longer example counts as ``seq_len``, i.e. truncated)."""
    check_seq_len(seq_len)
    used = rows = 0
    room = 0
    for n in lengths:
        n = min(int(n), seq_len)
        if n > room:
            rows, room = rows + 1, seq_len
        used, room = used + n, room - n
    return used / (rows * seq_len) if rows else 1.0


def best_sft_seq_len(lengths: Sequence[int], up_to: int, multiple: int = 64) -> tuple[int, float]:
    """The row length (a multiple of ``multiple`` from the longest example up to ``up_to``) that wastes the least
    to padding, and its fill (`sft_row_fill`); the shortest wins ties."""
    longest = max(lengths)
    first = -(-longest // multiple) * multiple
    options = [(sft_row_fill(lengths, t), -t) for t in range(first, max(first, up_to) + 1, multiple)]
    fill, neg = max(options)
    return -neg, fill


def pack_sft(
    examples: Iterable[tuple[Sequence[int], Sequence[int]]],
    seq_len: int,
    *,
    pad_id: int = 0,
    truncate: bool = False,
) -> PackedBatch:
    """Pack ``(input_ids, loss_mask)`` examples in order, whole, into padded rows of ``seq_len``.
    An example longer than ``seq_len`` is a ``ValueError`` unless ``truncate`` (then its tail is cut)."""
    check_seq_len(seq_len)
    checked = check_sft_examples(examples, seq_len, truncate=truncate)
    rows, _ = take_sft_rows(lambda k: checked[k] if k < len(checked) else None, seq_len, None, pad_id=pad_id)
    return collate_rows(rows)


def check_sft_examples(
    examples: Iterable[tuple[Sequence[int], Sequence[int]]], seq_len: int, *, truncate: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate all examples up front (so bad data fails before training starts) and apply ``truncate``."""
    checked = []
    for i, (ids, mask) in enumerate(examples):
        ids, mask = check_sft_example(ids, mask, f"example {i}")
        if len(ids) > seq_len:
            if not truncate:
                raise ValueError(f"example {i} has {len(ids)} tokens, more than seq_len={seq_len}; "
                                 "raise seq_len, drop the example, or pass truncate=True")
            ids, mask = ids[:seq_len], mask[:seq_len]
        checked.append((ids, mask))
    if not checked:
        raise ValueError("no SFT examples to pack (the dataset is empty)")
    return checked
