"""Byte-level BPE tokenizer with the MiniMax-M2 special tokens, saved the way Hugging Face loads it.

Why a wrapper at all: training, packing and the chat renderer need a handful of fixed ids (BOS, EOS, the role
marker, the thinking and tool-call delimiters) and a checkpoint must carry a tokenizer that
`transformers.AutoTokenizer.from_pretrained(checkpoint_dir)` loads and that encodes identically. This file pins
those choices in one place over `tokenizers.Tokenizer`, which does the actual work.

Choices:

* Byte-level BPE (GPT-2 regex pre-tokenizer, ByteLevel decoder, no prefix space, no normaliser): every string
  encodes without an unknown token, and ``decode(encode(s)) == s`` for any ``s``.
* Special tokens, in this id order in a tokenizer trained here: ``<pad>`` (0), then the seven M2 tokens
  ``]~!b[`` (BOS, opens a document), ``[e~[`` (EOS, ends a message), ``]~b]`` (role marker),
  ``<think>``, ``</think>``, ``<minimax:tool_call>``, ``</minimax:tool_call>``. Each is one id.
* **EOS is ``[e~[``**: M2 ends every message with it and generation stops on it, so pretraining documents end with
  it too (``packing.py`` wraps each document as ``]~!b[ … [e~[``) and the model learns one stop token.
* **PAD is a separate ``<pad>``**, never seen in training text: padding is always masked out of the loss and out
  of attention (its own ``cu_seqlens`` segment), so any id would do, but a dedicated one keeps logs unambiguous.
* No post-processor: ``encode`` never adds BOS/EOS on its own (callers add them explicitly), and Hugging Face's
  ``encode`` then gives the same ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Backend

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
        """Token ids of ``text``; no BOS/EOS is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        backend = self._plain if split_special else self.backend
        return backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, split_special: bool = False) -> list[list[int]]:
        """``encode`` over many texts at once (parallel in the Rust backend)."""
        backend = self._plain if split_special else self.backend
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

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
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens included) on ``texts``.

    The result is deterministic for the same texts and arguments. The vocabulary can come out smaller than
    ``vocab_size`` when the corpus has too few distinct pairs to merge (``min_frequency`` is the least count a
    pair needs to be merged).
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be an int >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
                         f"tokens), got {vocab_size!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    backend = _Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
