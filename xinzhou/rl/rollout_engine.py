"""Multi-turn rollouts on the inference engine: G episodes per problem, tool results forced, behaviour logprobs kept.

Why: RL on a tool task needs whole episodes (the model thinks, calls a tool, reads the result, ... answers) as one
token sequence whose model-sampled tokens are trained on and whose tool results are not. The engine already returns
exactly that (``RequestOutput.mask`` 1 = sampled, 0 = forced; ``logprobs`` the fp32 logprob of each sampled token,
under the sampling distribution when the params ask for ``logprobs_mode="processed"``), and ``LLM.continue_``
appends forced tokens and samples on while reusing the prefix state. This module only drives it: every round it
sends *all* live episodes to the engine in one call (so continuous batching sees the whole batch), parses each new
turn with the M2 parser, steps the episode's environment, and forces the observation text (``observation_text``) for
the next round, until the environment says done or a limit is hit.

Limits and how an episode ends (``Trajectory.info["end"]``):

- ``"done"``: the environment scored it (``reward`` set; ``None`` when the verifier failed: the sample is skipped).
- ``"length"``: a turn hit ``max_turn_tokens`` or the episode's ``max_tokens`` budget (sampled + forced completion
  tokens), or the model's context. ``truncated``, reward 0 (see ``apply_overlong`` for the alternatives).
- ``"repetition"``: M1's early stop (``SamplingParams.repetition_stop``) fired. ``truncated``, reward 0.
- ``"turns"``: ``max_turns`` model turns without an answer. ``truncated``, reward 0.
- ``"error"``: the engine finished the request with an error; reward None (skipped, logged).

``keep`` other than ``"chain"`` re-renders the transcript each turn (thinking of earlier turns dropped with
``"none"``), so an episode is no longer one append-only sequence; that is for evaluation (the interleaved-thinking
ablation), and such episodes carry no trainable tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xinzhou.chat.parsers.m2 import parse_m2
from xinzhou.chat.template import EOS, KEEP_MODES, render
from xinzhou.chat.types import Message
from xinzhou.engine import LLM, RequestOutput, SamplingParams
from xinzhou.rl.advantages import overlong_penalty
from xinzhou.rl.env import Env, TaskEnv, observation_text
from xinzhou.rl.rollout import RolloutBatch, Trajectory
from xinzhou.tasks import Task

log = logging.getLogger(__name__)

OVERLONG = ("zero", "mask", "penalty")
EnvSource = str | Task | Callable[[], Env]


def env_factory(task: EnvSource, difficulty: int | Sequence[int] = 1, *, max_turns: int = 8) -> Callable[[], Env]:
    """A function that makes a fresh environment per episode: a task name or `Task` becomes a `TaskEnv`; a callable
    is returned as is. An unknown task name is a ValueError listing the valid ones (raised here, not mid-run)."""
    if callable(task) and not isinstance(task, Task):
        return task
    TaskEnv(task, difficulty, max_turns=max_turns)  # validates the name and the difficulty now
    return lambda: TaskEnv(task, difficulty, max_turns=max_turns)


def mix_seed(*parts: int) -> int:
    """A deterministic 62-bit seed from integers (per episode and turn), independent of the batch composition."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & ((1 << 62) - 1)


@dataclass
class _Episode:
    index: int
    env: Env
    traj: Trajectory
    messages: list[Message]
    output: RequestOutput | None = None  # the engine output so far (chain mode)
    forced: list[int] = field(default_factory=list)  # observation tokens to force before the next turn
    prompt: list[int] = field(default_factory=list)  # the next turn's prompt (re-rendered modes)
    turns: int = 0
    tool_calls: int = 0
    sampled: int = 0


def _finish(ep: _Episode, end: str, reward: float | None, **info: Any) -> None:
    ep.traj.reward = reward
    ep.traj.truncated = end in ("length", "repetition", "turns")
    ep.traj.info.update(info, end=end, turns=ep.turns, tool_calls=ep.tool_calls, sampled_tokens=ep.sampled,
                        task_reward=reward, messages=ep.messages)


def run_episodes(
    llm: LLM,
    envs: Sequence[Env],
    seeds: Sequence[int],
    params: SamplingParams,
    *,
    group_ids: Sequence[int] | None = None,
    keep: str = "chain",
    max_turns: int = 8,
    max_tokens: int = 1024,
    max_turn_tokens: int = 256,
    sample_seed: int = 0,
    tokenizer: Any = None,
) -> list[Trajectory]:
    """Play one episode per `(env, seed)`, all batched on the engine; returns one `Trajectory` per episode, in order.

    `params` is the template for every turn (temperature, top-p/k, repetition stop, logprobs); each turn gets
    `max_tokens = min(max_turn_tokens, what is left of the episode budget)` and its own seed
    `mix_seed(sample_seed, group, replica, turn)` (replica: the episode's rank among those of its group), so an
    episode's samples depend neither on the rest of the batch nor on how a batch is split over processes. In
    chain mode with `params.logprobs`, the trajectory holds the whole token sequence (sampled runs with their
    behaviour logprobs, forced observation runs); otherwise only the prompt and the episode's `info`
    (`end`, `turns`, `tool_calls`, `sampled_tokens`, `task_reward`, `messages`).
    """
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
    if len(envs) != len(seeds):
        raise ValueError(f"got {len(envs)} environments for {len(seeds)} seeds")
    if min(max_turns, max_tokens, max_turn_tokens) < 1:
        raise ValueError(f"max_turns, max_tokens and max_turn_tokens must be >= 1, got {max_turns}, {max_tokens}, "
                         f"{max_turn_tokens}")
    tok = tokenizer if tokenizer is not None else llm.tokenizer
    if tok is None:
        raise ValueError("rollouts need a tokenizer: build LLM(model, tokenizer) or pass tokenizer=")
    chain = keep == "chain"
    context = llm.engine.max_model_len
    groups = list(group_ids) if group_ids is not None else list(range(len(envs)))
    live: list[_Episode] = []
    replicas: dict[int, int] = {}
    keys = []
    for g in groups:
        keys.append((g, replicas.get(g, 0)))
        replicas[g] = keys[-1][1] + 1
    for i, (env, seed) in enumerate(zip(envs, seeds)):
        messages = env.reset(seed)
        ids = tok.encode(render(messages, env.tools, add_generation_prompt=True, keep=keep))
        traj = Trajectory(ids, groups[i], info={"seed": seed})
        live.append(_Episode(i, env, traj, list(messages), prompt=ids))
    episodes = list(live)
    round_ = 0
    while live:
        requests, plist = [], []
        for ep in list(live):
            used = (len(ep.output.token_ids) if ep.output is not None else 0) if chain else ep.sampled
            history = len(ep.traj.prompt_ids) + used if chain else len(ep.prompt)
            room = min(max_turn_tokens, max_tokens - used - len(ep.forced), context - 1 - history - len(ep.forced))
            if room < 1:
                _finish(ep, "length", 0.0)
                live.remove(ep)
                continue
            requests.append(ep)
            plist.append(_turn_params(params, room, mix_seed(sample_seed, *keys[ep.index], round_)))
        if not requests:
            break
        if chain and round_ > 0:
            outs = llm.continue_([ep.output for ep in requests], [ep.forced for ep in requests], plist)
        else:
            outs = llm.generate([ep.prompt for ep in requests], plist)
        for ep, out in zip(requests, outs):
            if _step(ep, out, tok, keep, max_turns):
                live.remove(ep)
        round_ += 1
    if chain and params.logprobs:
        for ep in episodes:
            if ep.output is not None:
                _fill(ep.traj, ep.output)
    return [ep.traj for ep in episodes]


def _turn_params(template: SamplingParams, max_tokens: int, seed: int | None,
                 logprobs: bool | None = None) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=template.temperature, top_p=template.top_p,
                          top_k=template.top_k, stop=template.stop, seed=seed,
                          logprobs=template.logprobs if logprobs is None else logprobs,
                          logprobs_mode=template.logprobs_mode, repetition_stop=template.repetition_stop)


def _step(ep: _Episode, out: RequestOutput, tok: Any, keep: str, max_turns: int) -> bool:
    """Take one engine output for episode `ep`; True when the episode ended."""
    chain = keep == "chain"
    start = len(ep.output.token_ids) + len(ep.forced) if chain and ep.output is not None else 0
    new = out.token_ids[start:]
    ep.output = out if chain else None
    ep.forced = []
    ep.sampled += len(new)
    ep.turns += 1
    if out.finish_reason in ("error", "abort"):
        log.warning("episode %d (seed %s): the engine ended the request: %s", ep.index, ep.traj.info["seed"],
                    out.error or out.finish_reason)
        _finish(ep, "error", None, error=out.error or out.finish_reason)
        return True
    text = tok.decode(new)
    if out.finish_reason in ("length", "repetition"):
        _finish(ep, out.finish_reason, 0.0, last_text=text)
        return True
    message = parse_m2(text.split(EOS)[0], ep.env.tools).message
    ep.messages.append(message)
    ep.tool_calls += len(message.tool_calls)
    try:
        result = ep.env.step(message)
    except Exception as e:  # noqa: BLE001 (a broken environment skips the sample; it must not end the run)
        log.warning("episode %d (seed %s): the environment raised %r; sample skipped", ep.index,
                    ep.traj.info["seed"], e)
        _finish(ep, "error", None, error=f"{type(e).__name__}: {e}")
        return True
    if result.done:
        end = "turns" if result.info.get("truncated") else "done"
        _finish(ep, end, result.reward, **{k: v for k, v in result.info.items() if k != "truncated"})
        return True
    if ep.turns >= max_turns:
        _finish(ep, "turns", 0.0)
        return True
    ep.messages.extend(result.observation)
    try:
        text = observation_text(result.observation) if chain else render(ep.messages, ep.env.tools,
                                                                          add_generation_prompt=True, keep=keep)
    except ValueError as e:  # e.g. tool results without a tool call cannot be rendered when re-rendering
        log.warning("episode %d (seed %s): cannot render the observation: %s", ep.index, ep.traj.info["seed"], e)
        _finish(ep, "error", None, error=f"{type(e).__name__}: {e}")
        return True
    if chain:
        ep.forced = tok.encode(text)
    else:
        ep.prompt = tok.encode(text)
    return False


def _fill(traj: Trajectory, out: RequestOutput) -> None:
    """Copy the engine's completion (runs of sampled and forced tokens) into the trajectory."""
    ids, mask, lps = out.token_ids, out.mask, out.logprobs
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        if mask[i]:
            traj.add_sampled(ids[i:j], lps[i:j])
        else:
            traj.add_forced(ids[i:j])
        i = j


def apply_overlong(trajectories: Sequence[Trajectory], mode: str, *, max_tokens: int, cache: int = 0
                   ) -> list[Trajectory]:
    """How truncated (overlong) episodes enter the loss, in place:

    - ``"zero"``: they keep reward 0 and are trained on like any failure (the default; ScaleRL's setting);
    - ``"mask"``: reward 0 still counts in the group baseline, but none of their tokens is trained on (TRL's
      ``mask_truncated_completions``);
    - ``"penalty"``: DAPO's soft overlong punishment on the completion length (``overlong_penalty`` with
      ``L_max = max_tokens``, ``L_cache = cache``) is added to every episode's reward.
    """
    if mode not in OVERLONG:
        raise ValueError(f"unknown overlong mode {mode!r}; valid: {', '.join(OVERLONG)}")
    trajs = list(trajectories)
    if mode == "penalty":
        lengths = torch.tensor([len(tr.completion_ids) for tr in trajs])
        for tr, pen in zip(trajs, overlong_penalty(lengths, max_tokens, cache).tolist()):
            if tr.reward is not None:
                tr.reward += pen
    elif mode == "mask":
        for tr in trajs:
            if tr.truncated:
                tr.sampled = [False] * len(tr.sampled)
    return trajs


def collect_trajectories(
    llm: LLM,
    task: EnvSource,
    seeds: Sequence[int],
    group_size: int,
    params: SamplingParams,
    *,
    difficulty: int | Sequence[int] = 1,
    max_turns: int = 8,
    max_tokens: int = 1024,
    max_turn_tokens: int = 256,
    sample_seed: int = 0,
    tokenizer: Any = None,
    group_ids: Sequence[int] | None = None,
) -> list[Trajectory]:
    """`group_size` chain-mode episodes per problem seed (group id `group_ids[j]`, default `j`, for `seeds[j]`),
    behaviour logprobs recorded. `task`: a task name, a `Task`, or a function returning a fresh `Env`."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2: a group of 1 has no baseline (its advantage is always 0); got "
                         f"{group_size}")
    make = env_factory(task, difficulty, max_turns=max_turns)
    envs, ep_seeds, groups = [], [], []
    for seed, g in zip(seeds, range(len(seeds)) if group_ids is None else group_ids, strict=True):
        for _ in range(group_size):
            envs.append(make())
            ep_seeds.append(seed)
            groups.append(g)
    return run_episodes(llm, envs, ep_seeds, _turn_params(params, params.max_tokens, params.seed, logprobs=True),
                        group_ids=groups, keep="chain", max_turns=max_turns, max_tokens=max_tokens,
                        max_turn_tokens=max_turn_tokens, sample_seed=sample_seed, tokenizer=tokenizer)


def collect(
    llm: LLM,
    task: EnvSource,
    seeds: Sequence[int],
    group_size: int,
    params: SamplingParams,
    *,
    overlong: str = "zero",
    overlong_cache: int = 0,
    max_tokens: int = 1024,
    **kwargs: Any,
) -> RolloutBatch:
    """`collect_trajectories`, then `apply_overlong`, then one padded `RolloutBatch` (samples whose reward is None
    and groups left with fewer than 2 samples are dropped there, with a warning)."""
    trajs = collect_trajectories(llm, task, seeds, group_size, params, max_tokens=max_tokens, **kwargs)
    apply_overlong(trajs, overlong, max_tokens=max_tokens, cache=overlong_cache)
    tok = kwargs.get("tokenizer") or llm.tokenizer
    return RolloutBatch.from_trajectories(trajs, pad_id=getattr(tok, "pad_id", 0) or 0)
