"""Text for token ids as they are generated: one adapter over the tokenizers callers pass in, and incremental
decoding with stop-string detection.

Why incremental: streaming wants each token's text as soon as it is complete, and stop strings must be found as
soon as they appear; decoding the whole completion every step would cost O(n²). Byte-level BPE can end a token in
the middle of a UTF-8 character, so a delta is released only once it no longer ends in the replacement character.
When a stop string may still be forming, the last ``len(longest stop) - 1`` characters are held back from the
stream, so streamed text never shows a stop string that the final text cuts off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xinzhou.data.tokenizer import SPECIAL_TOKENS, MarkedText, encode_marked

EOS_TEXT = "[e~["  # MiniMax-M2's end-of-message token


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's ``bytes_to_unicode``) inverted: the printable character that stands for
    each byte in a vocabulary piece -> the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


BYTE_DECODER = _byte_decoder()


class TokenizerAdapter:
    """``encode(text) -> ids`` (no special tokens added), ``decode(ids) -> text`` (special tokens kept) and the
    end-of-sequence ids, over a :class:`xinzhou.data.tokenizer.Tokenizer`, a ``tokenizers.Tokenizer`` or a
    transformers tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        kind = type(tokenizer).__module__.split(".")[0]
        if kind == "xinzhou":
            self.kind, self.eos_ids = "xinzhou", {tokenizer.eos_id}
        elif kind == "tokenizers":
            eos = tokenizer.token_to_id(EOS_TEXT)
            self.kind, self.eos_ids = "tokenizers", set() if eos is None else {eos}
        elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):
            eos = getattr(tokenizer, "eos_token_id", None)
            self.kind, self.eos_ids = "transformers", set() if eos is None else {eos}
        else:
            raise ValueError(f"unsupported tokenizer {type(tokenizer).__name__}; valid options: "
                             "xinzhou.data.tokenizer.Tokenizer, tokenizers.Tokenizer, a transformers tokenizer")
        # vocabulary pieces that are whole special tokens (their bytes are their text, not byte-level symbols)
        self.special_pieces = frozenset([*SPECIAL_TOKENS, *(getattr(tokenizer, "all_special_tokens", None) or [])])

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a :class:`~xinzhou.data.tokenizer.MarkedText` (a rendered chat) by its marks, so that
        what users and tools wrote never becomes a special token."""
        if isinstance(text, MarkedText):
            return encode_marked(self.tokenizer, text)
        if self.kind == "xinzhou":
            return self.tokenizer.encode(text)
        if self.kind == "tokenizers":
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if self.kind == "xinzhou":
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: its byte-level BPE piece mapped back to bytes (a piece may hold part of
        a UTF-8 character, which ``decode([id])`` shows as U+FFFD); special tokens and pieces of other tokenizer
        kinds (e.g. SentencePiece) by the UTF-8 of their decoded text."""
        if self.kind == "transformers":
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
        else:
            piece = self.tokenizer.id_to_token(token_id)
        if piece is not None and piece not in self.special_pieces:
            try:
                return bytes(BYTE_DECODER[c] for c in piece)
            except KeyError:
                pass
        return self.decode([token_id]).encode("utf-8")


class IncrementalText:
    """The text of a growing completion. ``prefix_ids`` are completion tokens that already exist (an earlier
    turn's output and forced tokens of a continuation): their text is neither searched for stop strings nor
    streamed again."""

    def __init__(self, tokenizer: TokenizerAdapter, stop_strings: tuple[str, ...], prefix_ids: list[int],
                 incremental: bool) -> None:
        self.tok, self.stops, self.incremental = tokenizer, stop_strings, incremental
        self.ids = list(prefix_ids)
        self.text = tokenizer.decode(self.ids) if self.ids else ""
        self.search_from = self.emitted = len(self.text)
        self._prefix, self._read = max(0, len(self.ids) - 4), len(self.ids)
        self._holdback = max((len(s) for s in stop_strings), default=1) - 1
        self.stopped_by: str | None = None

    def append(self, token_id: int) -> bool:
        """Add one token; True when a stop string has just appeared."""
        self.ids.append(token_id)
        if not self.incremental:
            return False
        before = self.tok.decode(self.ids[self._prefix : self._read])
        after = self.tok.decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        for s in self.stops:
            at = self.text.find(s, max(self.search_from, len(self.text) - len(after) - len(s)))
            if at >= 0:
                self.stopped_by = s
                return True
        return False

    def final_text(self) -> str:
        text = self.tok.decode(self.ids)
        if self.stopped_by is not None:
            at = text.find(self.stopped_by, self.search_from)
            text = text[:at] if at >= 0 else text
        return text

    def stream_delta(self, finished: bool) -> str:
        """New text to stream: everything that can no longer turn into a stop string (all of it once finished)."""
        if finished:
            text = self.final_text()
            end = len(text)
        else:
            text, end = self.text, len(self.text) - self._holdback
        if end <= self.emitted:
            return ""
        delta, self.emitted = text[self.emitted : end], end
        return delta
