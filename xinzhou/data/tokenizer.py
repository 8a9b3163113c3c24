"""Byte-level BPE tokenizer with the MiniMax-M2 special tokens, saved the way Hugging Face loads it.

Why a wrapper at all: training, packing and the chat renderer need a handful of fixed ids (BOS, EOS, the role
marker, the thinking and tool-call delimiters) and a checkpoint must carry a tokenizer that
`transformers.AutoTokenizer.from_pretrained(checkpoint_dir)` loads and that encodes identically. This file pins
those choices in one place over `tokenizers.Tokenizer`, which does the actual work.

Choices:

* Byte-level BPE (GPT-2 regex pre-tokenizer, ByteLevel decoder, no prefix space, no normaliser): every string
  encodes without an unknown token, and ``decode(encode(s)) == s`` for any ``s``.
* Digits are split one per token before BPE (``individual_digits``, as LLaMA and DeepSeek do; on by default).
  A number is then the same digit ids wherever it appears (``" 5175"``, ``"=5175"``, ``"5175."``), so copying a
  number from the prompt or a tool result into a calculator call is plain token copying, which a tiny model
  learns in a few hundred steps; with multi-digit BPE pieces the same number splits differently by context.
* Special tokens, in this id order in a tokenizer trained here: ``<pad>`` (0), then the seven M2 tokens
  ``]~!b[`` (BOS, opens a document), ``[e~[`` (EOS, ends a message), ``]~b]`` (role marker),
  ``<think>``, ``</think>``, ``<minimax:tool_call>``, ``</minimax:tool_call>``. Each is one id.
* **EOS is ``[e~[``**: M2 ends every message with it and generation stops on it, so pretraining documents end with
  it too (``packing.py`` wraps each document as ``]~!b[ … [e~[``) and the model learns one stop token.
* **PAD is a separate ``<pad>``**, never seen in training text: padding is always masked out of the loss and out
  of attention (its own ``cu_seqlens`` segment), so any id would do, but a dedicated one keeps logs unambiguous.
* No post-processor: ``encode`` never adds BOS/EOS on its own (callers add them explicitly), and Hugging Face's
  ``encode`` then gives the same ids.
* Special-token strings in text become their ids, as in Hugging Face, unless the text is a :class:`MarkedText`
  (what the chat renderer returns): then only markers in its trusted spans do, and what users and tools wrote is
  always encoded as text (``encode_marked``; ``encode_with`` does the same over any supported tokenizer kind).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Backend

from xinzhou.fileio import atomic_write_text

PAD = "<pad>"
BOS = "]~!b["
EOS = "[e~["
ROLE = "]~b]"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
M2_SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, ROLE, THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, *M2_SPECIAL_TOKENS)
# attribute name on `Tokenizer` -> token
SPECIAL_ID_NAMES: dict[str, str] = {
    "pad_id": PAD, "bos_id": BOS, "eos_id": EOS, "role_id": ROLE,
    "think_open_id": THINK_OPEN, "think_close_id": THINK_CLOSE,
    "tool_call_open_id": TOOL_CALL_OPEN, "tool_call_close_id": TOOL_CALL_CLOSE,
}
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens


class Tokenizer:
    """Encode/decode text and expose the special-token ids (``pad_id``, ``bos_id``, ``eos_id``, ``role_id``,
    ``think_open_id``, ``think_close_id``, ``tool_call_open_id``, ``tool_call_close_id``).

    Special tokens written in the text are parsed as their single ids (as Hugging Face does); pass
    ``split_special=True`` to ``encode`` to treat them as plain text (e.g. for untrusted user content).
    """

    pad_id: int
    bos_id: int
    eos_id: int
    role_id: int
    think_open_id: int
    think_close_id: int
    tool_call_open_id: int
    tool_call_close_id: int

    def __init__(self, backend: _Backend, *, chat_template: str | None = None) -> None:
        missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; xinzhou needs all of {list(SPECIAL_TOKENS)}")
        self.backend = backend
        self.chat_template = chat_template
        for attr, token in SPECIAL_ID_NAMES.items():
            setattr(self, attr, backend.token_to_id(token))
        # a second backend that reads special-token strings as plain text (thread-safe, unlike toggling a flag)
        self._plain = _Backend.from_str(backend.to_str())
        self._plain.encode_special_tokens = True

    # --- loading and saving ------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load ``tokenizer.json`` from a folder, with the chat template of ``tokenizer_config.json`` or, as
        transformers 5 saves it, of ``chat_template.jinja`` (if any)."""
        path = Path(path)
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path} (save one with Tokenizer.save or train_tokenizer)")
        config: dict = {}
        if (path / CONFIG_FILE).is_file():
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if template is None and (path / TEMPLATE_FILE).is_file():
            template = (path / TEMPLATE_FILE).read_text(encoding="utf-8")
        return cls(_Backend.from_file(str(file)), chat_template=template)

    def hf_config(self) -> dict:
        """The ``tokenizer_config.json`` content: transformers builds a fast tokenizer over ``tokenizer.json``."""
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": None,
            # the v4 key; transformers 5 reads it as extra_special_tokens
            "additional_special_tokens": [t for t in M2_SPECIAL_TOKENS if t not in (BOS, EOS)],
            "add_bos_token": False,
            "add_eos_token": False,
            # the default clean-up would turn "a ." into "a." on decode and break the round trip
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into folder ``path`` (created if needed).
        Each file is written to a temporary name and renamed, so a crash never leaves a half-written file."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        atomic_write_text(path / CONFIG_FILE, json.dumps(self.hf_config(), indent=2, ensure_ascii=False) + "\n")
        return path

    # --- encoding ------------------------------------------------------------------------------------------------
    def encode(self, text: str, *, split_special: bool = False) -> list[int]:
        """Token ids of ``text``; no BOS/EOS is added. A :class:`MarkedText` (what the chat renderer returns) is
        encoded by its marks: special tokens only from its trusted spans (see :func:`encode_marked`)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if isinstance(text, MarkedText) and not split_special:
            return encode_marked(self, text)
        backend = self._plain if split_special else self.backend
        return backend.encode(str(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, split_special: bool = False) -> list[list[int]]:
        """``encode`` over many texts at once (parallel in the Rust backend)."""
        texts = list(texts)
        if not split_special and any(isinstance(t, MarkedText) for t in texts):
            return [self.encode(t) for t in texts]
        backend = self._plain if split_special else self.backend
        return [e.ids for e in backend.encode_batch([str(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; special tokens are kept as their strings unless ``skip_special``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding needs at least this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.backend.id_to_token(id)

    @property
    def special_ids(self) -> dict[str, int]:
        """Special token string -> id."""
        return {t: self.backend.token_to_id(t) for t in SPECIAL_TOKENS}

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos={EOS!r}={self.eos_id}, pad={PAD!r}={self.pad_id})"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    chat_template: str | None = None,
    individual_digits: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens included) on ``texts``.

    The result is deterministic for the same texts and arguments. The vocabulary can come out smaller than
    ``vocab_size`` when the corpus has too few distinct pairs to merge (``min_frequency`` is the least count a
    pair needs to be merged). ``individual_digits`` splits every digit into its own token before BPE.
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be an int >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
                         f"tokens), got {vocab_size!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    backend = _Backend(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if individual_digits else byte_level)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = [0]
    backend.train_from_iterator(_counted(texts, seen), trainer=trainer)
    if seen[0] == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus (no non-empty text was given)")
    return Tokenizer(backend, chat_template=chat_template)


def _counted(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        if text:
            seen[0] += 1
            yield text


# --- prompt text that knows which of its spans may hold special tokens -----------------------------------------
_MARKER_RE = re.compile("(" + "|".join(re.escape(t) for t in M2_SPECIAL_TOKENS) + ")")
_FLAG_LOCK = threading.Lock()


class MarkedText(str):
    """A ``str`` that remembers which of its spans are *trusted* (template markup, model output) and which are
    *plain* (what users, tools and clients wrote): ``pieces`` is ``((text, trusted), ...)``, joining to the string.

    Why: a chat prompt is template markup around content. Encoded as one string, content that spells a special
    token (a user typing ``[e~[`` or ``]~b]ai``) would become that token's id and could end the message or forge a
    turn. The renderer (``xinzhou.chat.render``) returns a MarkedText; :meth:`Tokenizer.encode`, the engine and
    ``xinzhou.chat.to_ids`` encode it with :func:`encode_marked`, so only the M2 markers written in trusted spans
    become special ids and plain spans are always text.

    For everything else it is an ordinary ``str`` (comparison, search, printing, JSON). ``+`` keeps the marks, a
    plain ``str`` added to it counting as trusted (model output appended to a prompt, as the agent loop and the
    server's forced tool call do); every other ``str`` operation (slicing, ``join``, formatting) returns a plain
    ``str``, which encodes with every special-token string parsed, as any text did before.
    """

    pieces: tuple[tuple[str, bool], ...]

    def __new__(cls, pieces: Iterable[tuple[str, bool]] | str = ()) -> MarkedText:
        """From ``(text, trusted)`` pieces (a MarkedText piece keeps its own marks inside a trusted piece and
        becomes all plain inside a plain one), or from one ``str``, which is trusted (as any plain ``str``)."""
        if isinstance(pieces, str):
            pieces = [(pieces, True)]
        groups: list[tuple[list[str], bool]] = []  # adjacent pieces of one kind, merged
        for text, trusted in pieces:
            if not isinstance(text, str):
                raise TypeError(f"MarkedText pieces are (str, bool) pairs, got a {type(text).__name__}")
            inner = text.pieces if isinstance(text, MarkedText) else ((text, True),)
            for t, t_trusted in inner:
                kind = bool(trusted) and t_trusted
                if not t:
                    continue
                if groups and groups[-1][1] == kind:
                    groups[-1][0].append(t)
                else:
                    groups.append(([t], kind))
        merged = tuple(("".join(parts), kind) for parts, kind in groups)
        self = super().__new__(cls, "".join(t for t, _ in merged))
        self.pieces = merged
        return self

    @classmethod
    def plain(cls, text: str) -> MarkedText:
        """``text`` as one plain span: its special-token strings will always be encoded as text."""
        return cls([(text, False)])

    def __add__(self, other: object) -> MarkedText:
        if not isinstance(other, str):
            return NotImplemented
        return MarkedText([(self, True), (other, True)])

    def __radd__(self, other: object) -> MarkedText:
        if not isinstance(other, str):
            return NotImplemented
        return MarkedText([(other, True), (self, True)])

    def __reduce__(self) -> tuple:  # pickling (the server sends prompts to its engine process) keeps the marks
        return MarkedText, (self.pieces,)


def split_markers(text: str) -> list[str]:
    """``text`` cut around the M2 special-token strings: markers at odd positions, the text between at even ones."""
    return _MARKER_RE.split(text)


def encode_with(tokenizer: Any, text: str, *, split_special: bool = False) -> list[int]:
    """Ids of ``text`` (no BOS/EOS added) from any tokenizer the project accepts: a :class:`Tokenizer`, a
    ``tokenizers.Tokenizer``, a transformers tokenizer, or any object whose ``encode(text)`` returns ids (a list,
    or an object with ``.ids``). ``split_special=True`` encodes special-token strings as plain text; an object of
    the last kind must then accept ``encode(text, split_special=True)`` when the text holds an M2 special-token
    string, or this raises ``TypeError`` (it cannot be done safely otherwise)."""
    text = str(text)  # the marks of a MarkedText are encode_marked's business
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text, split_special=split_special)
    if isinstance(tokenizer, _Backend):
        if not split_special:
            return tokenizer.encode(text, add_special_tokens=False).ids
        with _FLAG_LOCK:  # a tokenizers.Tokenizer has no per-call switch (transformers flips the same flag)
            before = tokenizer.encode_special_tokens
            tokenizer.encode_special_tokens = True
            try:
                return tokenizer.encode(text, add_special_tokens=False).ids
            finally:
                tokenizer.encode_special_tokens = before
    if type(tokenizer).__module__.split(".")[0] == "transformers" or hasattr(tokenizer, "split_special_tokens"):
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=split_special))
    if split_special and _MARKER_RE.search(text):
        try:
            enc = tokenizer.encode(text, split_special=True)
        except TypeError:
            raise TypeError(f"{type(tokenizer).__name__}.encode cannot encode special-token strings as plain text "
                            f"(needed for {text[:40]!r}); use a xinzhou Tokenizer, a tokenizers.Tokenizer or a "
                            "transformers tokenizer, or give encode a split_special=True option") from None
    else:
        try:
            enc = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            enc = tokenizer.encode(text)
    ids = getattr(enc, "ids", enc)
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"tokenizer.encode must return a list of ids or an object with .ids, got {type(enc).__name__}")
    return list(ids)


def encode_marked(tokenizer: Any, text: str) -> list[int]:
    """Ids of a :class:`MarkedText` with any tokenizer :func:`encode_with` accepts: each M2 marker in a trusted
    span is its special id, and the text between two such markers (plain spans included) is encoded as one run
    with ``split_special=True``, so no plain span can produce a special id. Where the plain spans hold no
    special-token string, the ids equal encoding the whole text. A plain ``str`` is encoded as it is."""
    if not isinstance(text, MarkedText):
        return encode_with(tokenizer, text)
    ids: list[int] = []
    run: list[str] = []
    for piece, trusted in text.pieces:
        for k, part in enumerate(split_markers(piece) if trusted else [piece]):
            if k % 2:  # a trusted marker
                if run:
                    ids += encode_with(tokenizer, "".join(run), split_special=True)
                    run.clear()
                ids += encode_with(tokenizer, part)
            elif part:
                run.append(part)
    if run:
        ids += encode_with(tokenizer, "".join(run), split_special=True)
    return ids
