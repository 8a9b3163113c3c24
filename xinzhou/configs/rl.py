"""RL configuration: one typed dataclass for `xinzhou rl` / `train_rl`, named recipes, and `--key=value` overrides.

A run is a recipe plus overrides, e.g. `xinzhou rl --recipe=rl-tiny --objective=dapo --minibatches=8`. Values are
converted to the field's declared type by the same parser as the training config (`configs/train.py`), so a typo
fails with the list of valid keys before any work is done.

Units: a *step* is one rollout batch (`prompts_per_batch` problems × `group_size` samples); each step makes
`minibatches` (k) optimizer updates on it, the first on-policy, the rest off-policy (where CISPO and DAPO differ).
`staleness` s > 0 generates with a copy of the weights refreshed every s + 1 steps, so rollouts come from weights
up to s steps old (an asynchronous pipeline's off-policyness, reproducibly). Defaults follow MiniMax-M1 / ScaleRL:
AdamW β = (0.9, 0.95), eps = 1e-15, fp32 LM head, CISPO with a cap of 5, prompt-level aggregation, batch-level
advantage normalisation, zero-variance filtering.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from xinzhou.configs.train import _convert, parse_overrides

AGGREGATIONS = ("token", "sequence", "prompt")
ADVANTAGE_SCALES = ("group", "batch", "none")
OVERLONG = ("zero", "mask", "penalty")
KEEP = ("chain", "all", "none")
SCHEDULES = ("constant", "cosine", "wsd")
PARALLEL = ("auto", "none", "ddp")
# fields that may change between a run and its resumption: they do not change what is computed
RESUMABLE_CHANGES = frozenset({"out_dir", "resume", "overwrite", "progress", "save_every", "keep_last", "export",
                               "recipe", "micro_batch_size", "threads", "max_num_seqs", "parallel", "device"})

__all__ = ["RLConfig", "apply_overrides", "config_keys", "get_recipe", "list_recipes", "parse_overrides",
           "register_recipe", "resolve"]


@dataclass
class RLConfig:
    """Everything an RL run needs. `validate()` checks it (unknown objective or task, group size 1, ...)."""

    recipe: str = "custom"
    out_dir: str = "runs/rl"  # metrics.jsonl, reward.png, clip.png, checkpoints/, export/
    seed: int = 0
    model: str = "runs/sft/export"  # Hugging Face checkpoint directory with tokenizer.json (the SFT policy)
    task: str = "arithmetic"  # a bundled task (xinzhou.tasks.TASKS)
    difficulty: int = 1
    difficulties: tuple[int, ...] = ()  # train on a mix (each problem seed picks one); empty: just `difficulty`
    # objective
    objective: str = "cispo"  # xinzhou.rl.OBJECTIVES: cispo, dapo, grpo, gspo
    eps_low: float | None = None  # None: the objective's default (cispo: no lower bound; dapo/grpo 0.2)
    eps_high: float | None = None  # None: the objective's default (cispo 4.0 = cap 5; dapo 0.28; grpo 0.2)
    aggregation: Literal["token", "sequence", "prompt"] = "prompt"
    advantage_scale: Literal["group", "batch", "none"] = "batch"
    filter_zero_variance: bool = True  # drop groups whose samples all scored the same (ScaleRL)
    dynamic_sampling: bool = False  # DAPO: draw more problems until prompts_per_batch informative groups
    max_draws: int = 4
    # rollouts
    group_size: int = 8  # G samples per problem
    prompts_per_batch: int = 8  # problems per step (over all processes)
    max_turns: int = 8
    max_tokens: int = 1024  # completion budget of one episode: sampled + forced (tool result) tokens
    max_turn_tokens: int = 256  # most tokens sampled in one assistant turn
    temperature: float = 1.0  # rollouts sample softmax(logits / T); the trainer scores the same distribution
    top_p: float = 1.0
    top_k: int = 0
    repetition_stop: int = 3000  # M1: stop after this many consecutive tokens with p > repetition_p; 0 = off
    repetition_p: float = 0.99
    overlong: Literal["zero", "mask", "penalty"] = "zero"  # truncated episodes: reward 0 / no loss / DAPO penalty
    overlong_cache: int = 256  # penalty: L_cache of DAPO's soft overlong punishment
    train_seed_start: int = 100_000  # training problems come from seeds in [start, start + 800000)
    # updates
    minibatches: int = 1  # k optimizer updates per rollout batch
    staleness: int = 0  # s: rollouts come from weights up to s steps old
    micro_batch_size: int = 16  # rows per forward (gradient accumulation inside one update)
    max_steps: int = 50  # rollout batches
    lr: float = 1e-4
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    warmup_steps: int = 0  # optimizer updates
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95  # M1: 0.95, not 0.999
    eps: float = 1e-15  # M1: 1e-15, not 1e-8 (RL gradients are tiny)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.0  # MoE load-balance loss added to the policy loss
    # β of a per-token k3 KL(π_θ ‖ π_ref) penalty, π_ref the starting policy (GRPO's β, TRL's `beta`); 0 = none, as
    # in M1 and DAPO. It costs one more forward per update and keeps what the rewards do not cover where SFT left it
    kl_coef: float = 0.0
    fp32_lm_head: bool = True  # M1: logits from an fp32 head for rollouts and trainer alike
    # held-out evaluation (greedy)
    eval_every: int = 10  # steps; also before the first and after the last step; 0 = only there
    eval_n: int = 64
    eval_difficulty: int = 0  # 0: the training difficulty
    eval_seed_start: int = 1_000_000  # held out: above every training seed (and SFT data should stay below)
    eval_keep: Literal["chain", "all", "none"] = "chain"
    success_threshold: float = 1.0  # an episode succeeds when its task reward is >= this
    # engine and run
    max_num_seqs: int = 128  # episodes decoded at once
    threads: int = 0  # torch threads (0: leave as is)
    parallel: Literal["auto", "none", "ddp"] = "auto"
    device: str = ""  # "", "cpu" or "cuda" ("": cuda when available)
    log_every: int = 1
    save_every: int = 0  # steps; also at the last step; 0 = only there
    keep_last: int = 2
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    export: bool = True  # Hugging Face checkpoint with tokenizer and chat template in out_dir/export

    # ------------------------------------------------------------------------------------------ checks
    def objective_options(self) -> dict[str, float]:
        """The clip options given (None fields left to the objective's defaults)."""
        return {k: getattr(self, k) for k in ("eps_low", "eps_high") if getattr(self, k) is not None}

    def validate(self) -> None:
        """ValueError naming the field and the valid options for anything wrong; nothing is loaded."""
        import torch  # noqa: PLC0415 (keeps `configs` import-light)

        from xinzhou.rl.objectives import check_options, get_objective  # noqa: PLC0415
        from xinzhou.tasks import get_task  # noqa: PLC0415

        check_options(self.objective, self.objective_options())  # unknown objective: lists the valid ones
        z = torch.zeros(1, 1)
        get_objective(self.objective)(z, z, torch.zeros(1), z + 1, **self.objective_options())  # bad values
        task = get_task(self.task)  # unknown task: lists the valid ones
        task.check_difficulty(self.difficulty)
        for d in self.difficulties:
            task.check_difficulty(d)
        if self.eval_difficulty:
            task.check_difficulty(self.eval_difficulty)
        for name, options in (("aggregation", AGGREGATIONS), ("advantage_scale", ADVANTAGE_SCALES),
                              ("overlong", OVERLONG), ("eval_keep", KEEP), ("schedule", SCHEDULES),
                              ("parallel", PARALLEL), ("device", ("", "cpu", "cuda"))):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2: a group of 1 has no baseline (its group-relative advantage "
                             f"is always 0, so nothing is learned); got {self.group_size}")
        for name in ("prompts_per_batch", "max_turns", "max_tokens", "max_turn_tokens", "minibatches",
                     "micro_batch_size", "max_steps", "max_draws", "eval_n", "max_num_seqs", "log_every",
                     "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("staleness", "warmup_steps", "eval_every", "save_every", "weight_decay", "grad_clip",
                     "aux_loss_coef", "kl_coef", "threads", "repetition_stop", "top_k", "train_seed_start",
                     "eval_seed_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.temperature:
            raise ValueError(f"temperature must be > 0 for RL rollouts (0 is greedy: every sample of a group is the "
                             f"same), got {self.temperature}")
        if not 0 < self.top_p <= 1 or not 0 < self.repetition_p < 1:
            raise ValueError(f"top_p must be in (0, 1] and repetition_p in (0, 1); got {self.top_p}, "
                             f"{self.repetition_p}")
        if self.overlong == "penalty" and not 0 < self.overlong_cache <= self.max_tokens:
            raise ValueError(f"overlong=penalty needs 0 < overlong_cache <= max_tokens, got {self.overlong_cache}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.eps <= 0 or self.lr <= 0:
            raise ValueError(f"need 0 <= beta1, beta2 < 1, eps > 0 and lr > 0; got {self.beta1}, {self.beta2}, "
                             f"{self.eps}, {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in out_dir, or start over")

    def __post_init__(self) -> None:
        self.difficulties = tuple(self.difficulties)  # JSON gives a list back

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RLConfig:
        unknown = sorted(set(d) - set(config_keys()))
        if unknown:
            raise ValueError(f"unknown RLConfig key(s) {unknown}; valid keys: {sorted(config_keys())}")
        return cls(**d)


def config_diff(a: RLConfig, b: RLConfig, ignore: frozenset[str] = RESUMABLE_CHANGES) -> dict[str, tuple]:
    """`{field: (a's value, b's value)}` for fields that differ, except `ignore`."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}


def config_keys() -> dict[str, Any]:
    """Every override key with its type."""
    return typing.get_type_hints(RLConfig)


def apply_overrides(cfg: RLConfig, overrides: dict[str, Any]) -> RLConfig:
    """A copy of `cfg` with `overrides` (strings are converted to the field's type); unknown keys are a
    ValueError listing the valid ones."""
    keys = config_keys()
    values = {}
    for key, value in overrides.items():
        if key not in keys:
            close = [k for k in keys if key.split(".")[-1] in k or k in key]
            hint = f" (did you mean {', '.join(close[:4])}?)" if close else ""
            raise ValueError(f"unknown RL config key {key!r}{hint}; valid keys: {', '.join(sorted(keys))}")
        values[key] = _convert(key, value, keys[key]) if isinstance(value, str) else value
    return dataclasses.replace(cfg, **values)


# ---------------------------------------------------------------------------------------------- recipes
_RECIPES: dict[str, RLConfig] = {}


def register_recipe(name: str, cfg: RLConfig) -> None:
    if name in _RECIPES:
        raise ValueError(f"RL recipe {name!r} is already registered")
    _RECIPES[name] = dataclasses.replace(cfg, recipe=name)


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> RLConfig:
    if name not in _RECIPES:
        raise ValueError(f"unknown RL recipe {name!r}; valid options: {', '.join(list_recipes())}")
    return dataclasses.replace(_RECIPES[name])


def resolve(recipe: str = "default", overrides: dict[str, Any] | None = None) -> RLConfig:
    """Recipe + overrides, validated."""
    cfg = apply_overrides(get_recipe(recipe), overrides or {})
    cfg.validate()
    return cfg


register_recipe("default", RLConfig())
# The tiny demo: the ~2M-parameter SFT policy of `xinzhou sft` on arithmetic (calculator) episodes, CISPO with
# k = 8 off-policy updates per rollout batch at lr 3e-5: the best setting of experiments/cispo_vs_dapo's lr sweep
# (1e-5 / 3e-5 / 1e-4; at 1e-4 the policy peaks early and falls back, see its README).
register_recipe("rl-tiny", RLConfig(model="runs/sft/export", out_dir="runs/rl", task="arithmetic", difficulty=1,
                                    group_size=8, prompts_per_batch=8, minibatches=8, max_steps=20, lr=3e-5,
                                    max_tokens=512, max_turn_tokens=128, max_turns=6, repetition_stop=128,
                                    eval_every=5, eval_n=64))
