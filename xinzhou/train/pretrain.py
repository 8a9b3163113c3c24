"""Pretraining: a text corpus → a tokenizer → packed batches → the shared training run.

``pretrain(resolve("tiny"))`` (what ``xinzhou pretrain`` runs) trains a 1024-id BPE on the bundled corpus, a
~2M-parameter hybrid model on packed 256-token rows, evaluates on held-out documents against the unigram
baseline, and exports a Hugging Face checkpoint. Everything that can be wrong with the input (config values,
corpus path, empty corpus, sequence length, a resume directory from another config) is checked before the
tokenizer is trained or a model is built.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from xinzhou.configs.train import TrainConfig
from xinzhou.data.corpus import DEFAULT_CORPUS_PATH, unigram_entropy
from xinzhou.data.loaders import (
    PretrainBatches,
    TokenizedCorpus,
    load_documents,
    split_documents,
)
from xinzhou.data.packing import IGNORE_INDEX, PackedBatch, pack_documents
from xinzhou.train.run import (
    RunData,
    RunResult,
    prepare,
    run_tokenizer,
    run_training,
    shard_eval,
)


def eval_rows(packed: PackedBatch, cfg: TrainConfig) -> PackedBatch:
    """At most ``eval_tokens`` positions (whole rows, at least one) of a packed eval set."""
    return packed.rows(0, max(1, min(packed.batch_size, cfg.eval_tokens // cfg.seq_len)))


def pretrain(cfg: TrainConfig) -> RunResult:
    """Pretrain as ``cfg`` says (see the module docstring); also runs under ``torchrun`` (DDP/FSDP2)."""
    t0 = time.perf_counter()
    info, model = prepare(cfg, "pretrain")
    docs = load_documents(Path(cfg.data) if cfg.data else DEFAULT_CORPUS_PATH, cfg.text_field)
    train_docs, eval_docs = split_documents(docs, cfg.eval_fraction, seed=cfg.seed)
    model_cfg = model.config if model is not None else cfg.model_config()
    tok = run_tokenizer(cfg, info, model_cfg.vocab_size, train_docs)
    train = TokenizedCorpus.from_texts(train_docs, tok)
    stream = PretrainBatches(train, cfg.seq_len, cfg.micro_batch_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
                             pad_id=tok.pad_id, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    evals, baseline = [], None
    if cfg.eval_tokens:
        packed = eval_rows(pack_documents(tok.encode_batch(eval_docs), cfg.seq_len, bos_id=tok.bos_id,
                                          eos_id=tok.eos_id, pad_id=tok.pad_id), cfg)
        baseline = unigram_entropy(packed.labels[packed.labels != IGNORE_INDEX].numpy())
        evals = shard_eval(packed, info, cfg.micro_batch_size)
    if model is None:
        from xinzhou.model.model import Model  # noqa: PLC0415

        torch.manual_seed(cfg.seed)
        model = Model(model_cfg.replace(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    return run_training(cfg, info, RunData(stream, evals, tok, baseline), model, started=t0)
