"""xinzhou.rl: reinforcement learning with verifiable rewards (CISPO and its peers).

The pure pieces, each tested on its own: objectives by name (`objectives.py`), aggregation weights
(`aggregation.py`), `policy_loss` with per-step metrics and the NaN guard (`loss.py`), advantages and sampling
filters (`advantages.py`), fp32 logprobs and the rollout-vs-trainer check (`logprobs.py`), the rollout batch
(`rollout.py`), the episode environment over bundled tasks (`env.py`), and the fork-token bandit (`bandit.py`).
On top, imported lazily (they pull in the engine and the trainer): multi-turn rollouts on the engine
(`rollout_engine.py`: `collect`, `collect_trajectories`, `run_episodes`), held-out evaluation (`evaluate.py`:
`evaluate`, `EvalResult`, `wilson_interval`), and the loop (`loop.py`: `train_rl`, `RLResult`). See README.md.

    from xinzhou.rl import policy_loss, group_advantages, RolloutBatch, TaskEnv, train_rl
    from xinzhou.rl.evaluate import evaluate      # the module shares the function's name
"""

import importlib
from typing import Any

from xinzhou.rl.advantages import (
    dynamic_sampling,
    group_advantages,
    overlong_penalty,
    zero_variance_groups,
)
from xinzhou.rl.aggregation import AGGREGATIONS, aggregate, aggregation_weights
from xinzhou.rl.bandit import BanditResult, run_bandit
from xinzhou.rl.env import (
    Env,
    Episode,
    StepResult,
    TaskEnv,
    observation_text,
    run_episode,
)
from xinzhou.rl.logprobs import probability_correlation, token_entropy, token_logprobs
from xinzhou.rl.loss import (
    NonFiniteLossError,
    check_finite,
    mean_metrics,
    policy_loss,
    policy_metric_sums,
    reference_kl,
)
from xinzhou.rl.objectives import (
    OBJECTIVES,
    PolicyTerms,
    check_options,
    cispo,
    dapo,
    get_objective,
    grpo,
    gspo,
    objective_options,
)
from xinzhou.rl.rollout import RepetitionGuard, RolloutBatch, Trajectory

_LAZY = {
    **dict.fromkeys(["collect", "collect_trajectories", "run_episodes", "apply_overlong"],
                    "xinzhou.rl.rollout_engine"),
    **dict.fromkeys(["EvalResult", "wilson_interval"], "xinzhou.rl.evaluate"),
    **dict.fromkeys(["train_rl", "RLResult"], "xinzhou.rl.loop"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xinzhou.rl' has no attribute {name!r}")


__all__ = [*sorted(_LAZY),
    "AGGREGATIONS", "OBJECTIVES", "BanditResult", "Env", "Episode", "NonFiniteLossError", "PolicyTerms",
    "RepetitionGuard", "RolloutBatch", "StepResult", "TaskEnv", "Trajectory", "aggregate", "aggregation_weights",
    "check_finite", "check_options", "cispo", "dapo", "dynamic_sampling", "get_objective", "group_advantages", "grpo",
    "gspo", "mean_metrics", "objective_options", "observation_text", "overlong_penalty", "policy_loss",
    "policy_metric_sums", "probability_correlation", "reference_kl", "run_bandit", "run_episode", "token_entropy",
    "token_logprobs",
    "zero_variance_groups",
]
