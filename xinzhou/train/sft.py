"""Supervised fine-tuning: chat conversations → M2-format token ids with a loss mask → the shared training run.

Examples come from a JSONL file (``{"messages": [...], "tools": [...]}`` rendered by :mod:`xinzhou.chat`, or
pre-tokenized ``{"input_ids", "loss_mask"}``), or, by default, from the question/answer pairs of the bundled corpus
turned into multi-turn chats. Only the assistant's tokens are trained (``loss_mask``); examples are packed whole
into rows with ``cu_seqlens``, so they never see each other. SFT starts from a Hugging Face checkpoint
(``init_from``, by default the export of ``xinzhou pretrain``) and keeps its tokenizer.
"""

from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path
from typing import Any

from xinzhou.configs.train import TrainConfig
from xinzhou.data.corpus import default_corpus, unigram_entropy
from xinzhou.data.loaders import SFTBatches, read_sft_jsonl, split_documents
from xinzhou.data.packing import IGNORE_INDEX, best_sft_seq_len, pack_sft, sft_row_fill
from xinzhou.data.tokenizer import Tokenizer
from xinzhou.train.pretrain import eval_rows
from xinzhou.train.run import (
    RunData,
    RunResult,
    prepare,
    run_tokenizer,
    run_training,
    shard_eval,
)


def qa_conversations(docs: list[str]) -> list[list[dict[str, str]]]:
    """One chat per document that holds ``Q: …`` / ``A: …`` line pairs: user asks, assistant answers, in order."""
    chats = []
    for doc in docs:
        lines = doc.splitlines()
        turns = []
        for q, a in itertools.pairwise(lines):
            if q.startswith("Q: ") and a.startswith("A: "):
                turns += [{"role": "user", "content": q[3:]}, {"role": "assistant", "content": a[3:]}]
        if turns:
            chats.append(turns)
    return chats


def load_examples(cfg: TrainConfig, tokenizer: Tokenizer) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, loss_mask)`` of every example of ``cfg.data`` (or of the bundled Q/A chats)."""
    from xinzhou.chat import to_ids  # noqa: PLC0415

    def render(record: dict[str, Any]) -> tuple[list[int], list[int]]:
        chat = to_ids(record["messages"], tokenizer, record.get("tools"))
        return chat.ids, chat.loss_mask

    if cfg.data:
        return list(read_sft_jsonl(cfg.data, render=render))
    return [render({"messages": m}) for m in qa_conversations(default_corpus())]


PADDING_WARN = 0.3  # warn when more than this share of SFT row positions is padding


def warn_about_padding(lengths: list[int], seq_len: int) -> None:
    """SFT rows hold whole examples, padded: when the examples are a little over half of ``seq_len`` long, most
    rows hold one and pad the rest, and that share of every step's compute is spent on padding. Measured on the
    demo's traces (480-600 tokens): 1024-token rows were ~40% padding, and the same compute in 640-token rows
    saw 1.35x more examples (README, Demo). Warns, naming a better ``--seq_len``, above `PADDING_WARN`."""
    if not lengths:
        return
    fill = sft_row_fill(lengths, seq_len)
    if 1 - fill <= PADDING_WARN:
        return
    better, better_fill = best_sft_seq_len(lengths, max(seq_len, max(lengths)))
    hint = (f"--seq_len={better} would be {1 - better_fill:.0%} padding" if better_fill > fill + 0.05 else
            "no other row length does much better")
    warnings.warn(f"SFT rows are {1 - fill:.0%} padding at --seq_len={seq_len}: rows hold whole examples "
                  f"({min(lengths)}-{max(lengths)} tokens here) and an example that does not fit the room left "
                  f"starts a new row, so that share of every step is spent on padding; {hint} "
                  "(raise --batch_size to keep the tokens per step)", stacklevel=2)


def sft(cfg: TrainConfig) -> RunResult:
    """Fine-tune ``cfg.init_from`` on chats as ``cfg`` says; also runs under ``torchrun`` (DDP/FSDP2)."""
    if not cfg.init_from:
        raise ValueError("SFT starts from a checkpoint: pass --init_from=DIR (a Hugging Face directory with "
                         "tokenizer.json, e.g. the export/ of `xinzhou pretrain`)")
    if not Path(cfg.init_from).is_dir():
        raise ValueError(f"--init_from={cfg.init_from} does not exist; run `xinzhou pretrain` first (it exports to "
                         "runs/pretrain/export) or point --init_from at a Hugging Face checkpoint directory")
    if cfg.data and not Path(cfg.data).is_file():
        raise FileNotFoundError(f"SFT data file not found: {cfg.data}")
    t0 = time.perf_counter()
    info, model = prepare(cfg, "sft")
    tok = run_tokenizer(cfg, info, model.config.vocab_size)
    examples = load_examples(cfg, tok)
    if not examples:
        raise ValueError(f"no SFT examples in {cfg.data or 'the bundled corpus'}")
    train, held_out = split_documents(examples, cfg.eval_fraction, seed=cfg.seed)
    if info.rank == 0:
        warn_about_padding([len(ids) for ids, _ in train], cfg.seq_len)
    stream = SFTBatches(train, cfg.seq_len, cfg.micro_batch_size, pad_id=tok.pad_id, seed=cfg.seed,
                        truncate=cfg.truncate, rank=info.rank, world_size=info.world_size)
    evals, baseline = [], None
    if cfg.eval_tokens:
        packed = eval_rows(pack_sft(held_out, cfg.seq_len, pad_id=tok.pad_id, truncate=cfg.truncate), cfg)
        baseline = unigram_entropy(packed.labels[packed.labels != IGNORE_INDEX].numpy())
        evals = shard_eval(packed, info, cfg.micro_batch_size)
    return run_training(cfg, info, RunData(stream, evals, tok, baseline), model, started=t0)
