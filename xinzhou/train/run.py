"""What pretraining and SFT share once their data is ready: the run directory, resume checks, model and
optimizer construction, parallel wrapping, the loop, the loss curve and the Hugging Face export.

Run directory (``out_dir``)::

    config.json       the resolved TrainConfig (a resumed run must match it)
    tokenizer/        the tokenizer the run uses (trained on the corpus or copied), reused on resume
    checkpoints/      step_NNNNNNNN/ (see checkpoint.py), the newest ``keep_last`` kept
    metrics.jsonl     one record per step and per evaluation
    loss.png          train and eval loss with the unigram baseline
    export/           Hugging Face checkpoint: config, safetensors, tokenizer with chat template
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as TokenizerBackend

from xinzhou.configs.model import ModelConfig
from xinzhou.configs.train import TrainConfig, config_diff
from xinzhou.data.packing import IGNORE_INDEX, PackedBatch
from xinzhou.data.tokenizer import Tokenizer, train_tokenizer
from xinzhou.fileio import atomic_write_text
from xinzhou.parallel.data_parallel import parallelize, resolve_mode
from xinzhou.parallel.dist import DistInfo, barrier, broadcast_object, init_distributed
from xinzhou.train.checkpoint import Checkpointer
from xinzhou.train.export import export_checkpoint
from xinzhou.train.loop import LoopOptions, Trainer, fit
from xinzhou.train.loss import make_lm_loss
from xinzhou.train.metrics import MetricsLogger, plot_losses
from xinzhou.train.optim import Schedule, build_optimizer

CONFIG_FILE = "config.json"
RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "loss.png", "tokenizer", "checkpoints", "export", "tensorboard")


@dataclass
class RunData:
    """A run's data: ``train`` yields this process's micro-batches (and has ``state_dict``), ``eval_batches`` is
    this process's share of the eval set, ``baseline`` the unigram entropy of the eval targets."""

    train: Any
    eval_batches: list[PackedBatch]
    tokenizer: Tokenizer
    baseline: float | None


@dataclass
class RunResult:
    """What a finished run reports (``seconds``: wall time from the entry point's start, data preparation
    included; ``resumed_from``: the checkpoint step a resumed run continued from)."""

    out_dir: Path
    steps: int
    final_eval_loss: float | None
    baseline: float | None
    seconds: float
    export_dir: Path | None
    resumed_from: int | None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``bf16`` → bfloat16; ``auto`` → bfloat16 on a CUDA device that supports it, else none (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def check_out_dir(cfg: TrainConfig) -> None:
    """Before any work: with ``resume``, the saved config must match ``cfg`` and a checkpoint must exist; without,
    ``out_dir`` must not hold a run unless ``overwrite``. ``ValueError`` says what to do."""
    out = Path(cfg.out_dir)
    saved_path = out / CONFIG_FILE
    if cfg.resume:
        if not saved_path.is_file():
            raise ValueError(f"--resume: {out} holds no run ({CONFIG_FILE} not found); drop --resume to start one")
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
        diff = config_diff(saved, cfg)
        if diff:
            lines = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ValueError(f"--resume: {out} was started with a different config ({lines}); resume with the "
                             f"same settings, or start a new run with another --out_dir")
        if Checkpointer(out / "checkpoints").latest() is None:
            raise ValueError(f"--resume: {out} has no complete checkpoint yet; start over with --overwrite")
    elif any((out / f).exists() for f in RUN_FILES) and not cfg.overwrite:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start over, "
                         "or choose another --out_dir")


def start_out_dir(cfg: TrainConfig, info: DistInfo, tokenizer: Tokenizer) -> None:
    """For a new run, create ``out_dir`` (clearing an old run's files with ``overwrite``), write the config and the
    tokenizer. Called once every input has been checked."""
    out = Path(cfg.out_dir)
    if info.is_main and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        atomic_write_text(out / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
        tokenizer.save(out / "tokenizer")
    barrier()


def prepare(cfg: TrainConfig, task: str) -> tuple[DistInfo, torch.nn.Module | None]:
    """Checks shared by pretraining and SFT, in the order that fails fastest: the config, the process layout, the
    run directory, then (with ``init_from``) the starting checkpoint and its sequence-length limit. Returns the
    process info and the loaded starting model (or ``None``)."""
    if cfg.task != task:
        raise ValueError(f"this is a {cfg.task} config; the {task} command needs task={task!r}")
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed()
    cfg.grad_accum(info.world_size)
    check_out_dir(cfg)
    model = None
    if cfg.init_from:
        from xinzhou.model.hf import from_pretrained  # noqa: PLC0415

        if not (Path(cfg.init_from) / "config.json").is_file():
            raise ValueError(f"--init_from={cfg.init_from}: no Hugging Face checkpoint there (config.json missing)")
        model = from_pretrained(cfg.init_from, dtype=torch.float32)
        if cfg.seq_len > model.config.max_position_embeddings:
            raise ValueError(f"seq_len ({cfg.seq_len}) exceeds max_position_embeddings "
                             f"({model.config.max_position_embeddings}) of {cfg.init_from}")
    return info, model


def run_tokenizer(cfg: TrainConfig, info: DistInfo, vocab_size: int, texts: list[str] | None = None) -> Tokenizer:
    """The run's tokenizer: on resume the one saved in ``out_dir/tokenizer``; else ``--tokenizer``, else
    ``--init_from``'s, else a BPE of ``vocab_size`` ids trained on ``texts`` by rank 0 and sent to the others."""
    source = Path(cfg.out_dir) / "tokenizer" if cfg.resume else (cfg.tokenizer or cfg.init_from)
    if source:
        tok = Tokenizer.from_dir(source)
    elif texts is None:
        raise ValueError("no tokenizer: pass --tokenizer=DIR or --init_from=DIR")
    else:
        trained = train_tokenizer(texts, vocab_size).backend.to_str() if info.is_main else None
        tok = Tokenizer(TokenizerBackend.from_str(broadcast_object(trained)))
    if tok.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {vocab_size}; "
                         f"raise --model.vocab_size to at least {tok.vocab_size}")
    return tok


def shard_eval(batch: PackedBatch, info: DistInfo, micro_batch_size: int) -> list[PackedBatch]:
    """This process's eval micro-batches. Rows are padded with target-free copies to a multiple of
    ``world_size × micro_batch_size``, so every process runs the same number of forwards (FSDP needs it) and the
    padding adds nothing to the loss."""
    per = info.world_size * micro_batch_size
    pad = (-batch.batch_size) % per
    if pad:
        dummy = batch.rows(0, 1)
        filler = PackedBatch(dummy.input_ids.expand(pad, -1), torch.full((pad, batch.seq_len), IGNORE_INDEX),
                             dummy.position_ids.expand(pad, -1), dummy.cu_seqlens * pad)
        batch = PackedBatch(torch.cat([batch.input_ids, filler.input_ids]), torch.cat([batch.labels, filler.labels]),
                            torch.cat([batch.position_ids, filler.position_ids]),
                            batch.cu_seqlens + filler.cu_seqlens)
    rows = batch.batch_size // info.world_size
    mine = batch.rows(info.rank * rows, (info.rank + 1) * rows)
    return [b.to(info.device) for b in mine.split(micro_batch_size)]


class _OnDevice:
    """Moves each batch of a stream to the device; keeps the stream's ``state_dict`` API."""

    def __init__(self, stream: Any, device: torch.device) -> None:
        self.stream, self.device = stream, device

    def __iter__(self) -> _OnDevice:
        return self

    def __next__(self) -> PackedBatch:
        return next(self.stream).to(self.device)

    def state_dict(self) -> dict:
        return self.stream.state_dict()


def run_training(cfg: TrainConfig, info: DistInfo, data: RunData, model: torch.nn.Module, *,
                 started: float | None = None) -> RunResult:
    """Train ``model`` (a fresh or loaded single-device :class:`xinzhou.Model`) on ``data`` as ``cfg`` says;
    ``started``: the entry point's ``time.perf_counter()`` at its start (for ``RunResult.seconds``)."""
    t0 = time.perf_counter() if started is None else started
    start_out_dir(cfg, info, data.tokenizer)
    out = Path(cfg.out_dir)
    model_cfg: ModelConfig = model.config
    model.to(info.device)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    wrapped = parallelize(model, resolve_mode(cfg.parallel, info.world_size), info)
    optimizer = build_optimizer(wrapped, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    schedule = Schedule(cfg.schedule, cfg.lr, cfg.max_steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_fraction)
    trainer = Trainer(wrapped, optimizer, schedule, info=info, grad_clip=cfg.grad_clip,
                      autocast_dtype=autocast_dtype(cfg.precision, info.device))
    checkpointer = Checkpointer(out / "checkpoints", keep_last=cfg.keep_last, info=info)
    logger = MetricsLogger(out / "metrics.jsonl", tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None,
                           enabled=info.is_main)
    resumed_from = None
    if cfg.resume:
        checkpointer.remove_partial()
        state = checkpointer.load(checkpointer.latest(), wrapped, optimizer)
        trainer.load_state_dict(state)
        data.train.load_state_dict(state["data"])
        logger.truncate_after(trainer.step)
        resumed_from = trainer.step
    coef = cfg.aux_loss_coef if cfg.aux_loss_coef >= 0 else model_cfg.router_aux_loss_coef
    opts = LoopOptions(max_steps=cfg.max_steps, grad_accum=cfg.grad_accum(info.world_size), log_every=cfg.log_every,
                       eval_every=cfg.eval_every, save_every=cfg.save_every, progress=cfg.progress,
                       stop_eval_loss=cfg.stop_eval_loss, stop_min_step=cfg.stop_min_step)
    evals = fit(trainer, _OnDevice(data.train, info.device), make_lm_loss(coef), opts,
                eval_batches=data.eval_batches, checkpointer=checkpointer, logger=logger,
                extra_state=lambda: {"config": cfg.to_dict()})
    final = evals[-1]["eval_loss"] if evals else None
    if info.is_main:
        params = sum(p.numel() for p in model.parameters())
        title = f"{cfg.task}, recipe {cfg.recipe}: {params / 1e6:.1f}M parameters"
        plot_losses(out / "metrics.jsonl", out / "loss.png", baseline=data.baseline, title=title)
    export_dir = None
    if cfg.export:
        export_dir = export_checkpoint(wrapped, model_cfg, data.tokenizer, out / "export", info)
    return RunResult(out, trainer.step, final, data.baseline, time.perf_counter() - t0, export_dir, resumed_from)
