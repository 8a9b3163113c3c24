"""Training configuration: one typed dataclass for pretraining and SFT, named recipes, and ``--key=value`` overrides.

A run is a recipe (a registered :class:`TrainConfig`) plus overrides, e.g.
``xinzhou pretrain --recipe=tiny --lr=1e-3 --model.hidden_size=192``. Keys prefixed ``model.`` override fields of
the model config named by ``model`` (see :mod:`xinzhou.configs.model`). Every override is converted to the
field's declared type here, in one place, so the command line, tests and Python callers share one parser and a
typo fails with the list of valid keys before any work is done.

Batch sizes are counted in rows of ``seq_len`` tokens. ``batch_size`` is the *global* batch of one optimizer step
and stays fixed when the number of processes changes; each process runs ``micro_batch_size`` rows per forward
and accumulates ``batch_size / (micro_batch_size * world_size)`` of them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from xinzhou.configs.model import ModelConfig, get_config

Task = Literal["pretrain", "sft"]
ScheduleName = Literal["cosine", "wsd", "constant"]
Precision = Literal["auto", "fp32", "bf16"]
ParallelMode = Literal["auto", "none", "ddp", "fsdp"]
TASKS, SCHEDULES, PRECISIONS, PARALLEL = (typing.get_args(t) for t in (Task, ScheduleName, Precision, ParallelMode))
# fields that may change between a run and its resumption: they do not change what is computed
RESUMABLE_CHANGES = frozenset({
    "resume", "overwrite", "progress", "tensorboard", "log_every", "eval_every", "save_every", "keep_last",
    "export", "micro_batch_size", "parallel", "gradient_checkpointing", "recipe", "threads",
})


@dataclass
class TrainConfig:
    """Everything a pretraining or SFT run needs. Validated by :meth:`validate` (``resolve`` calls it)."""

    task: Task = "pretrain"
    recipe: str = "custom"
    out_dir: str = "runs/pretrain"  # checkpoints/, metrics.jsonl, loss.png, tokenizer/, export/
    seed: int = 0
    # model: a registry name plus field overrides (set with --model.KEY=VALUE), or an HF checkpoint to start from
    model: str = "debug-text01"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # HF checkpoint directory (weights, config, tokenizer); SFT starts from one
    # data
    data: str = ""  # pretrain: text/.jsonl corpus ("" = bundled default); sft: .jsonl ("" = bundled Q/A chats)
    text_field: str = "text"
    tokenizer: str = ""  # folder with tokenizer.json; "" = init_from's, else trained on the corpus
    seq_len: int = 256
    eval_fraction: float = 0.05
    eval_tokens: int = 32_768  # at most this many eval positions (rows of seq_len)
    truncate: bool = False  # sft: cut examples longer than seq_len instead of failing
    # batch (rows of seq_len tokens)
    batch_size: int = 16
    micro_batch_size: int = 8
    # optimisation
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: ScheduleName = "cosine"
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    aux_loss_coef: float = -1.0  # MoE load-balance coefficient; < 0 = the model's router_aux_loss_coef
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA with bf16, else fp32
    gradient_checkpointing: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default (1 can be much faster on a busy shared CPU)
    parallel: ParallelMode = "auto"  # auto: ddp when started with several processes
    # observability and checkpoints
    log_every: int = 1
    eval_every: int = 100  # also evaluates at the last step; 0 = only there
    save_every: int = 200  # also saves at the last step; 0 = only there
    # stop (and save) at the first eval at step >= stop_min_step with eval loss <= stop_eval_loss; 0 = run to
    # max_steps. The demo's copy-drill pretraining uses it: the copying circuit forms at a seed-dependent step.
    stop_eval_loss: float = 0.0
    stop_min_step: int = 0
    keep_last: int = 2
    resume: bool = False  # continue the run in out_dir from its latest checkpoint
    overwrite: bool = False  # start over in an out_dir that already holds a run
    progress: bool = True
    tensorboard: bool = False
    export: bool = True  # write a Hugging Face checkpoint (with tokenizer and chat template) to out_dir/export

    def validate(self) -> None:
        """``ValueError`` naming the field and the valid options for anything inconsistent."""
        for name, options in (("task", TASKS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("parallel", PARALLEL)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        positive = ("seq_len", "batch_size", "micro_batch_size", "max_steps", "log_every", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "eval_tokens", "weight_decay", "grad_clip", "threads",
                     "stop_eval_loss", "stop_min_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (one input and one target), got {self.seq_len}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size})")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in out_dir, or start over")
        if not self.init_from:
            cfg = self.model_config()
            if self.seq_len > cfg.max_position_embeddings:
                raise ValueError(f"seq_len ({self.seq_len}) exceeds the model's max_position_embeddings "
                                 f"({cfg.max_position_embeddings}); lower --seq_len or raise "
                                 "--model.max_position_embeddings")

    def model_config(self) -> ModelConfig:
        """The named model config with ``model_overrides`` applied (``ValueError`` for unknown names/keys)."""
        return get_config(self.model, **self.model_overrides)

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches each process accumulates per optimizer step."""
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size x processes "
                             f"({self.micro_batch_size} x {world_size} = {per_step}); change --batch_size or "
                             "--micro_batch_size")
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys: {sorted(config_keys())}")
        return cls(**d)


def config_diff(a: TrainConfig, b: TrainConfig, ignore: frozenset[str] = RESUMABLE_CHANGES) -> dict[str, tuple]:
    """``{key: (a's value, b's value)}`` for keys that differ, except ``ignore``; model overrides appear as
    ``model.<field>``. Compared as JSON (a config read back from ``config.json`` has lists where the recipe had
    tuples)."""
    def flat(c: TrainConfig) -> dict[str, Any]:
        d = json.loads(json.dumps(c.to_dict()))
        model = d.pop("model_overrides")
        return {**d, **{f"model.{k}": v for k, v in model.items()}}

    da, db = flat(a), flat(b)
    return {k: (da.get(k), db.get(k)) for k in sorted(set(da) | set(db))
            if k not in ignore and da.get(k) != db.get(k)}


# ---------------------------------------------------------------------------------------------- overrides
def config_keys() -> dict[str, Any]:
    """Every override key with its type: TrainConfig fields and ``model.<ModelConfig field>``."""
    train = {k: t for k, t in typing.get_type_hints(TrainConfig).items() if k != "model_overrides"}
    model = {f"model.{k}": t for k, t in typing.get_type_hints(ModelConfig).items() if k != "name"}
    return {**train, **model}


def _convert(key: str, text: str, tp: Any) -> Any:
    """``text`` as a value of type ``tp`` (int, float, bool, str, Literal, tuple, Optional/Union of those)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(key, text, option)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"--{key}={text!r}: " + "; ".join(errors))
    if origin is Literal:
        if text not in args:
            raise ValueError(f"--{key} must be one of {list(args)}, got {text!r}")
        return text
    if origin in (tuple, list):
        items = [s.strip() for s in text.split(",") if s.strip()]
        inner = args[0] if args else str
        values = [_convert(key, s, inner) for s in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{key} takes true or false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--{key} takes an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--{key} takes a number, got {text!r}") from None
    if tp is str:
        return text
    raise ValueError(f"--{key}: cannot parse a value of type {tp}")


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--lr=1e-3", "--resume"]`` → ``{"lr": "1e-3", "resume": "true"}`` (a bare flag means true)."""
    out = {}
    for arg in args:
        if not arg.startswith("--"):
            raise ValueError(f"overrides look like --key=value, got {arg!r}")
        key, sep, value = arg[2:].partition("=")
        out[key] = value if sep else "true"
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with ``overrides`` applied. Values may be strings (converted to the field's type) or
    already-typed values. ``ValueError`` lists the valid keys for an unknown one."""
    keys = config_keys()
    train, model = {}, dict(cfg.model_overrides)
    for key, value in overrides.items():
        if key not in keys:
            close = [k for k in keys if key.split(".")[-1] in k]
            hint = f" (did you mean {', '.join(close[:4])}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(sorted(keys))}")
        if isinstance(value, str):
            value = _convert(key, value, keys[key])
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        else:
            train[key] = value
    if "model" in train and train["model"] != cfg.model and not any(k.startswith("model.") for k in overrides):
        model = {}  # a new base model drops the recipe's model overrides unless some are given again
    return dataclasses.replace(cfg, **train, model_overrides=model)


# ---------------------------------------------------------------------------------------------- recipes
_RECIPES: dict[str, TrainConfig] = {}


def register_recipe(name: str, cfg: TrainConfig) -> None:
    """Add a named recipe (names are unique)."""
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered")
    _RECIPES[name] = dataclasses.replace(cfg, recipe=name)


def list_recipes(task: str | None = None) -> list[str]:
    return sorted(n for n, c in _RECIPES.items() if task is None or c.task == task)


def get_recipe(name: str) -> TrainConfig:
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid options: {', '.join(list_recipes())}")
    return dataclasses.replace(_RECIPES[name], model_overrides=dict(_RECIPES[name].model_overrides))


def resolve(recipe: str, overrides: dict[str, Any] | None = None, *, task: str | None = None) -> TrainConfig:
    """Recipe + overrides, validated. ``task`` checks the recipe is for that command."""
    cfg = apply_overrides(get_recipe(recipe), overrides or {})
    if task is not None and cfg.task != task:
        raise ValueError(f"recipe {recipe!r} is a {cfg.task} recipe; {task} recipes: {', '.join(list_recipes(task))}")
    cfg.validate()
    return cfg


# The bundled default: a ~2M-parameter hybrid (3 lightning + 1 softmax layer, 8 experts top-2) with a 1024-id BPE
# trained on the bundled corpus; learns visibly in a few minutes on a laptop CPU. Full rotary, so transformers
# reproduces its export exactly (its `minimax` ignores partial rotary).
TINY_MODEL = dict(vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                  rotary_dim=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                  max_position_embeddings=4096,
                  layer_types=("linear_attention", "linear_attention", "linear_attention", "full_attention"))
register_recipe("tiny", TrainConfig(model="debug-text01", model_overrides=TINY_MODEL, seq_len=256, batch_size=16,
                                    micro_batch_size=4, max_steps=120, lr=3e-3, warmup_steps=12, eval_every=20,
                                    save_every=40, eval_tokens=16_384))
# Chat fine-tuning of the `tiny` export on Q/A pairs of the bundled corpus rendered in the M2 chat format.
register_recipe("sft-tiny", TrainConfig(task="sft", out_dir="runs/sft", init_from="runs/pretrain/export",
                                        seq_len=512, batch_size=8, micro_batch_size=4, max_steps=60, lr=1e-3,
                                        warmup_steps=6, weight_decay=0.0, eval_every=20, save_every=20))
# Seconds-long runs for tests and smoke checks (full rotary, so transformers reproduces its exports).
DEBUG_MODEL = dict(vocab_size=320, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   rotary_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   max_position_embeddings=1024, layer_types=("linear_attention", "full_attention"))
register_recipe("debug", TrainConfig(out_dir="runs/debug", model_overrides=DEBUG_MODEL, seq_len=64, batch_size=4,
                                     micro_batch_size=2, max_steps=20, lr=3e-3, warmup_steps=5, eval_every=10,
                                     save_every=10, eval_tokens=1024, progress=False))
