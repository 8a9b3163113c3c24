"""The RL loop: rollouts on the engine → group-relative advantages → k minibatch updates with an objective → metrics.

`train_rl(cfg)` loads the SFT policy and its tokenizer, builds the engine over the *same* model object (s = 0) or
over a copy refreshed before it gets more than s steps old (staleness s > 0, `generator.py`), and repeats, for each
rollout batch (a *step*):

1. `prompts_per_batch` problems × `group_size` episodes on the engine (`rollout_engine.py`), behaviour logprobs
   from the sampler, tool results forced and masked out; each process collects its share under `torchrun`;
2. zero-variance groups dropped (or DAPO dynamic sampling), overlong episodes handled, advantages normalised
   (batch-level std over all processes);
3. `minibatches` (k) optimizer updates on shuffled slices of the samples through the shared `Trainer.train_step`
   (`update.py`): the first on-policy, the rest off-policy, which is where CISPO (capped IS weight, every token
   keeps its gradient) and DAPO/GRPO (clipped tokens get none) differ;
4. metrics to `metrics.jsonl` and the progress line: reward, success, clip fraction, IS weight, entropy,
   approximate KL (with `kl_coef`, also `ref_kl`, the KL to the starting policy that the penalty acts on),
   zero-gradient fraction, rollout-vs-trainer probability correlation (M1 Fig. 3), tokens/s,
   truncation rate; greedy held-out success (`evaluate.py`) before the first step, every `eval_every` steps and
   after the last; checkpoints through the trainer's `Checkpointer` (resume is bit-identical); a Hugging Face
   export with tokenizer and chat template at the end.

Problems and sampling seeds are pure functions of (seed, step, problem index), never of the process count, so a
run is reproducible and resumable, and rollouts do not depend on how they are split over processes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xinzhou.configs.rl import RLConfig, config_diff
from xinzhou.engine import SamplingParams
from xinzhou.parallel.data_parallel import parallelize, resolve_mode
from xinzhou.parallel.dist import DistInfo, all_gather_object, barrier, init_distributed
from xinzhou.rl.advantages import dynamic_sampling, zero_variance_groups
from xinzhou.rl.env import Env
from xinzhou.rl.evaluate import EvalResult, evaluate
from xinzhou.rl.generator import Generator
from xinzhou.rl.report import RLProgress, plot_rl
from xinzhou.rl.rollout import RolloutBatch, Trajectory
from xinzhou.rl.rollout_engine import apply_overlong, collect_trajectories, mix_seed
from xinzhou.rl.update import PolicyUpdate, batch_advantages
from xinzhou.train.checkpoint import Checkpointer
from xinzhou.train.loop import Trainer
from xinzhou.train.metrics import MetricsLogger
from xinzhou.train.optim import Schedule, build_optimizer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SEED_RANGE = 800_000  # training problem seeds: train_seed_start + [0, SEED_RANGE)


@dataclass
class RLResult:
    """A finished run: `history` holds one record per step, `evals` one per evaluation (`success`, `ci_low`, ...)."""

    out_dir: Path
    steps: int
    seconds: float
    seconds_per_step: float
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    export_dir: Path | None = None
    resumed_from: int | None = None

    @property
    def final_eval(self) -> dict[str, Any] | None:
        return self.evals[-1] if self.evals else None


def rollout_stats(trajs: list[Trajectory], success_threshold: float) -> dict[str, float]:
    """Per-episode sums of this process's rollouts (merged over processes by adding)."""
    valid = [t for t in trajs if t.reward is not None]
    task = [t.info.get("task_reward") for t in valid]
    return {
        "episodes": len(trajs), "valid": len(valid), "skipped": len(trajs) - len(valid),
        "reward": sum(t.reward for t in valid),
        "task_reward": sum(r for r in task if r is not None),
        "successes": sum(r is not None and r >= success_threshold for r in task),
        "truncated": sum(t.truncated for t in trajs),
        "repetition_stops": sum(t.info.get("end") == "repetition" for t in trajs),
        "tool_calls": sum(t.info.get("tool_calls", 0) for t in trajs),
        "turns": sum(t.info.get("turns", 0) for t in trajs),
        "sampled_tokens": sum(t.info.get("sampled_tokens", 0) for t in trajs),
        "completion_tokens": sum(len(t.completion_ids) for t in trajs),
    }


# ------------------------------------------------------------------------------------------ the run
class RLRun:
    """One RL run's state; `train_rl` drives it. Separate so tests and experiments can call pieces."""

    def __init__(self, cfg: RLConfig, env: Callable[[], Env] | None = None) -> None:
        from xinzhou.data.tokenizer import Tokenizer  # noqa: PLC0415
        from xinzhou.model.hf import from_pretrained  # noqa: PLC0415

        cfg.validate()
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.info = init_distributed(cfg.device or None)
        if cfg.prompts_per_batch % self.info.world_size:
            raise ValueError(f"prompts_per_batch ({cfg.prompts_per_batch}) must be a multiple of the number of "
                             f"processes ({self.info.world_size})")
        self.out = Path(cfg.out_dir)
        _check_out_dir(cfg)
        path = Path(cfg.model)
        if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
            raise ValueError(f"--model={cfg.model}: need a Hugging Face checkpoint directory with config.json and "
                             "tokenizer.json (e.g. the export/ of `xinzhou sft`)")
        self.tokenizer = Tokenizer.from_dir(path)
        model = from_pretrained(path, dtype=torch.float32).to(self.info.device)
        model.config.fp32_lm_head = cfg.fp32_lm_head  # the engine's head and the trainer's read the same flag
        self.model = model
        self.env = env if env is not None else cfg.task
        # the KL penalty's reference: a frozen copy of the starting policy (made before a resume loads weights)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef else None
        self.generator = Generator(model, self.tokenizer, cfg, self.info)  # before DDP and the optimizer: the
        self.wrapped = parallelize(model, resolve_mode(cfg.parallel, self.info.world_size), self.info)  # layout
        optimizer = build_optimizer(self.wrapped, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay)
        schedule = Schedule(cfg.schedule, cfg.lr, cfg.max_steps * cfg.minibatches, cfg.warmup_steps,
                            cfg.min_lr_ratio)
        self.trainer = Trainer(self.wrapped, optimizer, schedule, info=self.info, grad_clip=cfg.grad_clip)
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep_last=cfg.keep_last, info=self.info)
        self.updater = PolicyUpdate(self.trainer, self.info, objective=cfg.objective,
                                    options=cfg.objective_options(), aggregation=cfg.aggregation,
                                    minibatches=cfg.minibatches, micro_batch_size=cfg.micro_batch_size,
                                    aux_loss_coef=cfg.aux_loss_coef, seed=cfg.seed, pad_id=self.tokenizer.pad_id,
                                    save_dir=self.out, temperature=cfg.temperature, kl_coef=cfg.kl_coef,
                                    reference=self.reference)
        # behaviour logprobs under the distribution actually sampled (temperature applied), which the trainer
        # reproduces by dividing its logits by the same temperature (PolicyUpdate)
        self.params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, logprobs=True,
                                     logprobs_mode="processed",
                                     repetition_stop=(cfg.repetition_stop, cfg.repetition_p)
                                     if cfg.repetition_stop else None)
        if cfg.top_p < 1 or cfg.top_k:
            log.warning("top-p/top-k rollouts: behaviour logprobs come from the truncated, renormalised distribution "
                        "but the trainer's from the full one at the same temperature, so the importance ratio is "
                        "biased (TRL #4159, #6789); temperature alone is handled exactly")
        self.step = 0

    # --------------------------------------------------------------------------------------- rollouts
    def problems(self, step: int, draw: int) -> tuple[list[int], list[int]]:
        """This process's `(problem seeds, global group ids)` for `step` (each process takes every
        world_size-th problem of the batch)."""
        cfg, info = self.cfg, self.info
        groups = list(range(info.rank, cfg.prompts_per_batch, info.world_size))
        seeds = [cfg.train_seed_start + mix_seed(cfg.seed, step, draw, j) % SEED_RANGE for j in groups]
        return seeds, [draw * cfg.prompts_per_batch + j for j in groups]

    def rollouts(self, step: int) -> tuple[RolloutBatch | None, dict[str, float]]:
        """Collect, filter and build this process's batch for `step` (None when nothing is left to train on)."""
        cfg = self.cfg
        stats: dict[str, float] = {}
        draws = [0]

        def draw() -> RolloutBatch:
            d = draws[0]
            draws[0] += 1
            seeds, groups = self.problems(step, d)
            trajs = collect_trajectories(
                self.generator.llm, self.env, seeds, cfg.group_size, self.params,
                difficulty=cfg.difficulties or cfg.difficulty,
                max_turns=cfg.max_turns, max_tokens=cfg.max_tokens, max_turn_tokens=cfg.max_turn_tokens,
                sample_seed=mix_seed(cfg.seed, step, d), tokenizer=self.tokenizer, group_ids=groups)
            for k, v in rollout_stats(trajs, cfg.success_threshold).items():
                stats[k] = stats.get(k, 0) + v
            apply_overlong(trajs, cfg.overlong, max_tokens=cfg.max_tokens, cache=cfg.overlong_cache)
            batch = RolloutBatch.from_trajectories(trajs, pad_id=self.tokenizer.pad_id)
            stats["groups"] = stats.get("groups", 0) + batch.num_groups
            return batch

        local_target = cfg.prompts_per_batch // self.info.world_size
        try:
            if cfg.dynamic_sampling:
                batch = dynamic_sampling(draw, local_target, max_draws=cfg.max_draws)
            else:
                batch = draw()
                if cfg.filter_zero_variance:
                    batch = batch.select(~zero_variance_groups(batch.rewards_B, batch.group_ids_B))
        except (ValueError, RuntimeError) as e:  # nothing valid or informative in this process's share
            log.warning("step %d: no trainable samples (%s)", step, e)
            batch = None
        if batch is not None and len(batch) == 0:
            batch = None
        stats["draws"] = draws[0]
        stats["informative_groups"] = 0 if batch is None else batch.num_groups
        return batch, stats


def _check_out_dir(cfg: RLConfig) -> None:
    """With `resume`, the saved config must match and a checkpoint exist; without, `out_dir` must not hold a run
    unless `overwrite`. ValueError says what to do."""
    out = Path(cfg.out_dir)
    saved = out / CONFIG_FILE
    if cfg.resume:
        if not saved.is_file():
            raise ValueError(f"--resume: {out} holds no RL run ({CONFIG_FILE} not found); drop --resume")
        diff = config_diff(RLConfig.from_dict(json.loads(saved.read_text())), cfg)
        if diff:
            lines = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"--resume: {out} was started with a different config ({lines})")
        if Checkpointer(out / "checkpoints").latest() is None:
            raise ValueError(f"--resume: {out} has no complete checkpoint yet; start over with --overwrite")
    elif saved.exists() and not cfg.overwrite:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start over, or "
                         "choose another --out_dir")


def _start_out_dir(cfg: RLConfig, info: DistInfo) -> None:
    import shutil  # noqa: PLC0415

    from xinzhou.fileio import atomic_write_text  # noqa: PLC0415

    out = Path(cfg.out_dir)
    if info.is_main and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "reward.png", "clip.png", "checkpoints", "export"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in out.glob("nonfinite_step*.pt"):
            p.unlink()
        atomic_write_text(out / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
    barrier()


def run_eval(run: RLRun, step: int) -> dict[str, Any]:
    """Greedy held-out success of the current weights, each process a share of the problems."""
    cfg, info = run.cfg, run.info
    t0 = time.perf_counter()
    seeds = list(range(cfg.eval_seed_start + info.rank, cfg.eval_seed_start + cfg.eval_n, info.world_size))
    with run.generator.current() as llm:
        res = evaluate(llm, run.env, difficulty=cfg.eval_difficulty or cfg.difficulty, keep=cfg.eval_keep,
                       seeds=seeds, max_turns=cfg.max_turns, max_tokens=cfg.max_tokens,
                       max_turn_tokens=cfg.max_turn_tokens, success_threshold=cfg.success_threshold,
                       tokenizer=run.tokenizer)
    merged = EvalResult.merge(all_gather_object(res))
    d = merged.to_dict()
    return {"step": step, "eval_success": d["success"], "eval_ci_low": d["ci_low"], "eval_ci_high": d["ci_high"],
            "eval_n": d["n"], "eval_tool_calls": d["mean_tool_calls"], "eval_turns": d["mean_turns"],
            "eval_truncation": d["truncation_rate"], "eval_skipped": d["skipped"],
            "eval_s": time.perf_counter() - t0}


def _step_record(step: int, age: int, stats: dict[str, float], upd: dict[str, float], times: dict[str, float]
                 ) -> dict[str, Any]:
    n = max(stats["episodes"], 1)
    valid = max(stats["valid"], 1)
    rec = {"step": step, "policy_age": age,
           "reward": stats["reward"] / valid, "task_reward": stats["task_reward"] / valid,
           "success_rate": stats["successes"] / n, "skipped": stats["skipped"], "episodes": stats["episodes"],
           "truncation_rate": stats["truncated"] / n, "repetition_stops": stats["repetition_stops"],
           "tool_calls": stats["tool_calls"] / n, "turns": stats["turns"] / n,
           "sampled_tokens": stats["sampled_tokens"] / n, "completion_tokens": stats["completion_tokens"] / n,
           "groups": stats.get("groups", 0), "informative_groups": stats["informative_groups"],
           "zero_variance_frac": 1 - stats["informative_groups"] / max(stats.get("groups", 0), 1),
           "draws": stats["draws"] / max(stats["processes"], 1)}
    rec.update(upd)
    rec.update(times, rollout_tokens_per_s=stats["sampled_tokens"] / max(times["rollout_s"], 1e-9),
               train_tokens_per_s=upd["positions"] / max(times["update_s"], 1e-9))
    return rec


def train_rl(cfg: RLConfig, *, env: Callable[[], Env] | None = None) -> RLResult:
    """Run RL as `cfg` says (see the module docstring); also under `torchrun` (DDP). `env`, if given, makes the
    episode environment instead of `cfg.task`'s `TaskEnv` (held-out evaluation uses it too)."""
    t_start = time.perf_counter()
    run = RLRun(cfg, env)
    info, out = run.info, run.out
    _start_out_dir(cfg, info)
    logger = MetricsLogger(out / "metrics.jsonl", enabled=info.is_main)
    resumed_from = None
    if cfg.resume:
        run.checkpointer.remove_partial()
        state = run.checkpointer.load(run.checkpointer.latest(), run.wrapped, run.trainer.optimizer)
        run.trainer.load_state_dict(state["trainer"])
        run.generator.load_state_dict(state["generator"])
        run.step = resumed_from = int(state["rl_step"])
        logger.truncate_after(run.step)
    bar = RLProgress(cfg.max_steps, run.step, enabled=cfg.progress and info.is_main)
    history, evals = [], []

    def do_eval(step: int) -> None:
        rec = run_eval(run, step)
        logger.log(rec)
        evals.append(rec)
        bar.held_out(rec["eval_success"])
        bar.print(f"step {step}: held-out success {rec['eval_success']:.3f} "
                  f"[{rec['eval_ci_low']:.3f}, {rec['eval_ci_high']:.3f}] (n={rec['eval_n']})")

    try:
        if run.step == 0:
            do_eval(0)
        while run.step < cfg.max_steps:
            step = run.step
            t0 = time.perf_counter()
            age = run.generator.prepare(step)
            batch, stats = run.rollouts(step)
            t1 = time.perf_counter()
            if batch is not None:
                batch = batch.with_advantages(batch_advantages(batch, cfg.advantage_scale))
            else:
                batch_advantages(None, cfg.advantage_scale)  # every process joins the collective
            upd = run.updater.update(batch, step)
            t2 = time.perf_counter()
            merged: dict[str, float] = {}
            for s in all_gather_object(stats):
                for k, v in s.items():
                    merged[k] = merged.get(k, 0) + v
            merged["processes"] = info.world_size
            run.step = step + 1
            rec = _step_record(run.step, age, merged, upd, {"rollout_s": t1 - t0, "update_s": t2 - t1,
                                                            "step_s": t2 - t0})
            history.append(rec)
            if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
                logger.log(rec)
            bar.update(run.step, rec)
            if run.step == cfg.max_steps or (cfg.eval_every and run.step % cfg.eval_every == 0):
                do_eval(run.step)
            if run.step == cfg.max_steps or (cfg.save_every and run.step % cfg.save_every == 0):
                state = {"rl_step": run.step, "trainer": run.trainer.state_dict(), "config": cfg.to_dict(),
                         "generator": run.generator.state_dict()}
                run.checkpointer.save(run.step, run.wrapped, run.trainer.optimizer, state)
    finally:
        bar.close()
        logger.close()
    if info.is_main:
        plot_rl(out / "metrics.jsonl", out, title=f"{cfg.objective} on {cfg.task} (k={cfg.minibatches})")
    export_dir = None
    if cfg.export:
        from xinzhou.train.export import export_checkpoint  # noqa: PLC0415

        export_dir = export_checkpoint(run.wrapped, run.model.config, run.tokenizer, out / "export", info)
    seconds = time.perf_counter() - t_start
    steps_run = [h["step_s"] for h in history]
    return RLResult(out, run.step, seconds, sum(steps_run) / len(steps_run) if steps_run else math.nan, history,
                    [{k.removeprefix("eval_"): v for k, v in e.items()} for e in evals], export_dir, resumed_from)
