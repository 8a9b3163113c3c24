"""xinzhou.rl: reinforcement learning with verifiable rewards (CISPO and its peers), engine- and trainer-agnostic.

The pieces, each pure and tested on its own: objectives by name (`objectives.py`), aggregation weights
(`aggregation.py`), `policy_loss` with per-step metrics and the NaN guard (`loss.py`), advantages and sampling
filters (`advantages.py`), fp32 logprobs and the rollout-vs-trainer check (`logprobs.py`), the rollout batch
(`rollout.py`), the episode environment over bundled tasks (`env.py`), and the fork-token bandit (`bandit.py`).
See README.md in this folder.

    from xinzhou.rl import policy_loss, group_advantages, RolloutBatch, TaskEnv
"""

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

__all__ = [
    "AGGREGATIONS", "OBJECTIVES", "BanditResult", "Env", "Episode", "NonFiniteLossError", "PolicyTerms",
    "RepetitionGuard", "RolloutBatch", "StepResult", "TaskEnv", "Trajectory", "aggregate", "aggregation_weights",
    "check_finite", "check_options", "cispo", "dapo", "dynamic_sampling", "get_objective", "group_advantages", "grpo",
    "gspo", "mean_metrics", "objective_options", "observation_text", "overlong_penalty", "policy_loss",
    "policy_metric_sums", "probability_correlation", "run_bandit", "run_episode", "token_entropy", "token_logprobs",
    "zero_variance_groups",
]
