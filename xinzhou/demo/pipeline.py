"""`xinzhou demo`: the whole MiniMax stack on a laptop, as a resumable sequence of stages.

tokenizer → data (calculator traces that think, call, read, think again, answer, half of them from a demonstrator
who does the last step in its head, which RL has to unlearn; and copy drills) → a fresh
hybrid lightning-attention MoE model → pretraining on the copy drills (the copying circuit, see `drills.py`) →
SFT (rerun with another data order if its policy stalled) → held-out eval → CISPO RL with the real calculator in
the rollouts → held-out eval (+ the interleaved-thinking ablation) → Hugging Face export → report.

Each finished stage writes ``OUT/stages/<stage>.json`` (its results and wall time) atomically; a rerun skips
finished stages, and the SFT and RL stages resume from their own checkpoints, so Ctrl-C loses at most the work
since the last checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from xinzhou import fileio
from xinzhou.demo.presets import DemoPreset

if TYPE_CHECKING:
    from xinzhou.configs.train import TrainConfig
    from xinzhou.tasks.base import Task

STAGES = ("tokenizer", "data", "init", "pretrain", "sft", "eval_sft", "rl", "eval_rl", "export", "report")
EVAL_SEED_START = 1_000_000  # held-out problems; SFT data uses seeds below 100_000, RL 100_000..900_000
PROBE_SEED_START = 950_000  # the SFT stall probe's problems (between RL's and the held-out ones)
# An SFT run can stall (a model that cannot read the problems; which seeds do depends on the CPU's floating-point
# path, README Demo): sampled at temperature 1 on training problems, as RL's rollouts are, stalled policies solved
# 0% (this probe) and working ones 31-52%, including one that skips a call every time greedily.
# Below SFT_STALLED, RL has nothing to reward, so SFT reruns with another data order (up to preset.sft_attempts).
SFT_STALLED = 0.1


@dataclass
class Context:
    out: Path
    preset: DemoPreset
    console: Console
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = fileio.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- stages
def stage_tokenizer(ctx: Context) -> dict[str, Any]:
    from xinzhou.chat import render
    from xinzhou.data.corpus import default_corpus
    from xinzhou.data.tokenizer import train_tokenizer
    from xinzhou.tasks import get_task

    task = get_task(ctx.preset.task)
    traces = []
    for i in range(400):
        rec = sft_record(task, ctx.preset, 90_000 + i)
        traces.append(render(rec["messages"], rec.get("tools")))
    tok = train_tokenizer(traces + default_corpus()[:400], ctx.preset.vocab_size)
    tok.save(ctx.path("tokenizer"))
    return {"vocab_size": tok.vocab_size, "tokens_per_trace": round(sum(len(tok.encode(t)) for t in traces[:50]) / 50)}


def mental_last(preset: DemoPreset, seed: int) -> bool:
    """Whether the SFT example of problem ``seed`` comes from the demonstrator who does the last step in its head
    (a ``preset.mental_last_frac`` share, drawn per seed; arithmetic task only)."""
    return preset.task == "arithmetic" and random.Random(f"mental_last/{preset.seed}/{seed}").random() < \
        preset.mental_last_frac


def sft_record(task: Task, preset: DemoPreset, seed: int) -> dict[str, Any]:
    """The SFT example of problem ``seed`` (difficulties in turn), from the demonstrator `mental_last` picks."""
    problem = task.generate(seed, preset.train_difficulties[seed % len(preset.train_difficulties)])
    return task.sft_record(problem, mental_last=True) if mental_last(preset, seed) else task.sft_record(problem)


def stage_data(ctx: Context) -> dict[str, Any]:
    from xinzhou.chat.template import to_ids
    from xinzhou.data.tokenizer import Tokenizer
    from xinzhou.demo.drills import copy_drills
    from xinzhou.tasks import get_task

    task, p = get_task(ctx.preset.task), ctx.preset
    tok = Tokenizer.from_dir(ctx.path("tokenizer"))
    path = ctx.path("data", "sft.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    calls, longest, mental = 0, 0, 0
    fd, tmp = fileio.mkstemp(dir=path.parent, prefix=".sft.jsonl.")
    with os.fdopen(fd, "w") as f:
        for i in range(p.sft_examples):
            rec = sft_record(task, p, i)
            mental += mental_last(p, i)
            calls += sum(len(m.get("tool_calls") or []) for m in rec["messages"] if m.get("role") == "assistant")
            longest = max(longest, len(to_ids(rec["messages"], tok, rec.get("tools")).ids))
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    drills = ctx.path("data", "drills.jsonl")
    fd, tmp = fileio.mkstemp(dir=path.parent, prefix=".drills.jsonl.")
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in copy_drills(p.pretrain_examples, seed=p.seed))
    os.replace(tmp, drills)
    return {"examples": p.sft_examples, "path": str(path), "tool_calls_per_example": calls / max(p.sft_examples, 1),
            "longest_tokens": longest, "drills": p.pretrain_examples, "mental_last": mental}


def stage_init(ctx: Context) -> dict[str, Any]:
    from xinzhou.chat import save_chat_template
    from xinzhou.configs.model import ModelConfig
    from xinzhou.data.tokenizer import Tokenizer
    from xinzhou.model.model import Model

    tok = Tokenizer.from_dir(ctx.path("tokenizer"))
    cfg = ModelConfig(**{**ctx.preset.model, "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_id,
                         "bos_token_id": tok.bos_id, "pad_token_id": tok.pad_id}, name=f"demo-{ctx.preset.name}")
    model = Model(cfg)
    model.reset_parameters(seed=ctx.preset.seed)
    out = ctx.path("init")
    import warnings

    with warnings.catch_warnings():  # partial rotary: transformers would rotate the whole head (documented)
        warnings.simplefilter("ignore")
        model.save_pretrained(out)
    tok.save(out)
    save_chat_template(out)
    total, active = model.count_parameters()
    pattern = "".join("L" if t == "linear_attention" else "S" for t in cfg.layer_types)
    return {"params_total": total, "params_active": active, "pattern": pattern, "experts": cfg.num_experts,
            "top_k": cfg.num_experts_per_tok}


def _resume_flags(run_dir: Path) -> dict[str, bool]:
    has_ckpt = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    return {"resume": True} if has_ckpt else {"overwrite": True}


def train_config(out_dir: str | Path, init: str, data: str, seed: int, *, seq_len: int, batch: int, steps: int,
                 lr: float, **options: Any) -> TrainConfig:
    """The ``TrainConfig`` of a demo training stage (pretraining or SFT): one row shape per micro-batch, no
    weight decay, the last checkpoint kept."""
    from xinzhou.configs.train import TrainConfig

    return TrainConfig(task="sft", recipe="demo", out_dir=str(out_dir), init_from=init, data=data, seq_len=seq_len,
                       batch_size=batch, micro_batch_size=batch, max_steps=steps, lr=lr, weight_decay=0.0,
                       keep_last=1, seed=seed, **options)


def _train(ctx: Context, name: str, init: str, data: str, *, seq_len: int, batch: int, steps: int, lr: float,
           seed: int | None = None, **options: Any) -> dict[str, Any]:
    """One `xinzhou.train.sft` run into ``OUT/name`` (resumed from its checkpoint if there is one); ``seed``
    (default: the preset's) orders the data."""
    from xinzhou.train.sft import sft

    seed = ctx.preset.seed if seed is None else seed
    cfg = train_config(ctx.path(name), init, data, seed, seq_len=seq_len, batch=batch, steps=steps,
                       lr=lr, **options, **_resume_flags(ctx.path(name)))
    cfg.validate()
    res = sft(cfg)
    return {"steps": res.steps, "final_eval_loss": res.final_eval_loss, "baseline": res.baseline,
            "export": str(res.export_dir), "resumed_from": res.resumed_from}


# drill eval loss once the copying circuit has formed (measured: 0.02-0.07 formed, 1.2-1.9 not); pretraining stops
# at the first eval at or below COPY_LOSS_FORMED after pretrain_steps, and the status warns above COPY_LOSS_OK
COPY_LOSS_FORMED = 0.1
COPY_LOSS_OK = 0.5


def stage_pretrain(ctx: Context) -> dict[str, Any]:
    """Copy drills until the model copies digits (why: `xinzhou/demo/drills.py`), at a constant lr."""
    p = ctx.preset
    # the circuit forms abruptly at a seed-dependent step (seeds 0, 1: before 400; seed 2: 500-550), so train
    # at least pretrain_steps, then on until the drill loss shows it formed, up to pretrain_max_steps
    cap = max(p.pretrain_steps, p.pretrain_max_steps)
    return _train(ctx, "pretrain", str(ctx.path("init")), str(ctx.path("data", "drills.jsonl")),
                  seq_len=p.pretrain_seq_len, batch=p.pretrain_batch, steps=cap, lr=p.pretrain_lr,
                  schedule="constant", warmup_steps=max(1, p.pretrain_steps // 15),
                  eval_every=max(1, min(50, p.pretrain_steps // 2)), save_every=max(1, p.pretrain_steps // 3),
                  eval_tokens=4 * p.pretrain_seq_len, stop_eval_loss=COPY_LOSS_FORMED,
                  stop_min_step=p.pretrain_steps)


def sft_seq_len(preset: DemoPreset, longest: int | None) -> int:
    """SFT row length: ``preset.sft_seq_len``, raised (to a multiple of 64) if the longest trace is longer, so
    no trace is truncated. Why the preset's rows are as short as the traces allow (padding):
    `xinzhou.train.sft.warn_about_padding` and the README's Demo section."""
    return max(preset.sft_seq_len, -(-(longest or 0) // 64) * 64)


def sft_options(preset: DemoPreset, seq_len: int) -> dict[str, Any]:
    """The SFT stage's settings for rows of ``seq_len``, as keyword arguments of :func:`train_config` (experiments
    use them to train exactly as the demo does on other data)."""
    steps = preset.sft_steps
    # a quarter of the run warms up: with steps // 12, the default seed on an AVX-512 CPU left SFT stuck at loss
    # 0.13 with a model that could not read the problems (0% solved, so RL had nothing to reward); this gave 0.078
    # and 97% / 98% after RL there. Runs this small are chaotic (another seed lost 17 points with it): README, Demo
    return {"seq_len": seq_len, "batch": preset.sft_batch, "steps": steps, "lr": preset.sft_lr,
            "warmup_steps": max(1, steps // 4), "eval_every": max(1, steps // 4),
            "save_every": max(1, steps // 4), "eval_tokens": 8 * seq_len}


def stage_sft(ctx: Context) -> dict[str, Any]:
    """SFT from the pretrained model; a run whose policy stalls (:func:`sampled_success` below
    ``SFT_STALLED``) is rerun from the same start with another data order, up to ``preset.sft_attempts`` runs
    (``OUT/sft``, ``OUT/sft_retry1``, ...). The stage's result is the last run's, with every run in ``attempts``."""
    p = ctx.preset
    if p.sft_attempts < 1:
        raise ValueError(f"sft_attempts must be at least 1 (SFT runs at most), got {p.sft_attempts}")
    seq_len = sft_seq_len(p, ctx.results["data"].get("longest_tokens"))
    attempts: list[dict[str, Any]] = []
    for k in range(p.sft_attempts):
        name = "sft" if k == 0 else f"sft_retry{k}"
        res = _train(ctx, name, ctx.results["pretrain"]["export"], str(ctx.path("data", "sft.jsonl")),
                     seed=p.seed + 1000 * k, **sft_options(p, seq_len))
        attempt = {"dir": name, "final_eval_loss": res["final_eval_loss"]}
        attempts.append(attempt)
        if p.sft_attempts == 1:
            break  # nothing to fall back on: no probe
        attempt["sampled_success"] = share = sampled_success(ctx, Path(res["export"]))
        if share >= SFT_STALLED:
            break
        ctx.console.print(f"[yellow]    SFT run {k + 1} stalled: its policy solved {share:.0%} of sampled training "
                          f"problems (< {SFT_STALLED:.0%}); "
                          + ("rerunning with another data order[/]" if k + 1 < p.sft_attempts else
                             "no runs left: RL will have little to reward; try another --seed and a new --out[/]"))
    return {**res, "dir": attempts[-1]["dir"], "attempts": attempts}


def sampled_success(ctx: Context, model_dir: Path, n: int = 64) -> float:
    """Share of ``n`` training-difficulty problems the policy solves sampling at temperature 1, as RL's rollouts
    do (seeded; problems ``PROBE_SEED_START ..``, used nowhere else)."""
    from xinzhou.engine import LLM
    from xinzhou.rl.evaluate import evaluate

    p = ctx.preset
    return evaluate(LLM(str(model_dir)), p.task, n, tuple(p.train_difficulties), start_seed=PROBE_SEED_START,
                    max_tokens=p.max_tokens, max_turn_tokens=p.max_turn_tokens, temperature=1.0,
                    sample_seed=p.seed).success


def _evaluate(ctx: Context, model_dir: Path, difficulties: tuple[int, ...], keep: str = "chain") -> dict[str, Any]:
    from xinzhou.engine import LLM
    from xinzhou.rl.evaluate import evaluate

    llm = LLM(str(model_dir))
    out = {}
    for d in difficulties:
        r = evaluate(llm, ctx.preset.task, ctx.preset.eval_n, d, keep=keep, start_seed=EVAL_SEED_START,
                     max_tokens=ctx.preset.max_tokens, max_turn_tokens=ctx.preset.max_turn_tokens)
        out[str(d)] = r.to_dict()
        ctx.console.print(f"    difficulty {d} (keep={keep}): {r}")
    return out


def stage_eval_sft(ctx: Context) -> dict[str, Any]:
    return {"chain": _evaluate(ctx, Path(ctx.results["sft"]["export"]), ctx.preset.eval_difficulties)}


def stage_rl(ctx: Context) -> dict[str, Any]:
    from xinzhou.configs.rl import RLConfig
    from xinzhou.rl.loop import train_rl

    p = ctx.preset
    cfg = RLConfig(recipe="demo", out_dir=str(ctx.path("rl")), model=ctx.results["sft"]["export"], task=p.task,
                   difficulty=max(p.train_difficulties), difficulties=tuple(p.train_difficulties), objective="cispo", group_size=p.rl_group,
                   prompts_per_batch=p.rl_prompts, minibatches=p.rl_minibatches, max_steps=p.rl_steps, lr=p.rl_lr,
                   max_tokens=p.max_tokens, max_turn_tokens=p.max_turn_tokens, eval_every=0,
                   eval_n=max(2, p.eval_n // 4), seed=p.seed, **_resume_flags(ctx.path("rl")))
    cfg.validate()
    res = train_rl(cfg)
    return {"steps": res.steps, "seconds_per_step": res.seconds_per_step, "export": str(res.export_dir),
            "evals": res.evals, "history": [{k: h.get(k) for k in ("step", "reward", "success", "clip_frac",
                                                                     "is_weight", "prob_corr") if k in h}
                                            for h in res.history]}


def stage_eval_rl(ctx: Context) -> dict[str, Any]:
    model_dir = Path(ctx.results["rl"]["export"])
    main = str(max(ctx.preset.train_difficulties))
    chain = _evaluate(ctx, model_dir, ctx.preset.eval_difficulties, keep="chain")
    none = _evaluate(ctx, model_dir, (int(main),), keep="none")
    return {"chain": chain, "none": none, "main_difficulty": main, "transcript": _transcript(ctx, model_dir)}


def _transcript(ctx: Context, model_dir: Path) -> list[dict[str, Any]]:
    from xinzhou.chat import messages_to_dicts
    from xinzhou.engine import LLM, SamplingParams
    from xinzhou.rl.rollout_engine import env_factory, run_episodes

    llm = LLM(str(model_dir))
    env = env_factory(ctx.preset.task, max(ctx.preset.train_difficulties))()
    traj = run_episodes(llm, [env], [EVAL_SEED_START], SamplingParams(temperature=0.0),
                        max_tokens=ctx.preset.max_tokens, max_turn_tokens=ctx.preset.max_turn_tokens)[0]
    msgs = traj.info.get("messages") or []
    return messages_to_dicts(msgs) if msgs and not isinstance(msgs[0], dict) else list(msgs)


def stage_export(ctx: Context) -> dict[str, Any]:
    src, dst = Path(ctx.results["rl"]["export"]), ctx.path("model")
    tmp = fileio.mkdtemp(ctx.out, prefix=".model.")
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return {"path": str(dst), "files": sorted(p.name for p in dst.iterdir())}


def stage_report(ctx: Context) -> dict[str, Any]:
    from xinzhou.demo.report import write_report

    return {"path": str(write_report(ctx))}


STAGE_FNS: dict[str, Callable[[Context], dict[str, Any]]] = {name: globals()[f"stage_{name}"] for name in STAGES}


def run_demo(out: str | os.PathLike, preset: DemoPreset, *, console: Console | None = None,
             stop_after: str | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) every stage in ``out``; returns each stage's results."""
    console = console or Console()
    ctx = Context(Path(out), preset, console)
    ctx.out.mkdir(parents=True, exist_ok=True)
    meta = ctx.path("stages", "preset.json")
    if meta.exists() and json.loads(meta.read_text()) != json.loads(json.dumps(asdict(preset))):
        raise ValueError(f"{ctx.out} holds a demo run with another preset; use a new --out or delete it")
    write_json_atomic(meta, asdict(preset))
    for i, name in enumerate(STAGES, 1):
        marker = ctx.path("stages", f"{name}.json")
        if marker.exists():
            ctx.results[name] = json.loads(marker.read_text())
            console.print(f"[dim][{i}/{len(STAGES)}] {name}: done earlier ({ctx.results[name]['seconds']:.0f}s)[/]")
            if name == stop_after:
                break
            continue
        console.print(f"[bold][{i}/{len(STAGES)}] {name}[/] …")
        t0 = time.perf_counter()
        res = STAGE_FNS[name](ctx)
        res["seconds"] = time.perf_counter() - t0
        ctx.results[name] = res
        write_json_atomic(marker, res)
        console.print(f"[green][{i}/{len(STAGES)}] {name}: done in {res['seconds']:.0f}s[/] {_summary(name, res)}")
        if name == stop_after:
            break
    return ctx.results


def _summary(name: str, res: dict[str, Any]) -> str:
    if name == "init":
        return f"{res['params_total'] / 1e6:.2f}M params ({res['params_active'] / 1e6:.2f}M active), {res['pattern']}"
    if name in ("pretrain", "sft"):
        loss = res.get("final_eval_loss")
        if loss is None:
            return ""
        line = f"eval loss {loss:.3f} (unigram {res['baseline']:.3f})"
        if len(res.get("attempts", ())) > 1:
            line += f", run {len(res['attempts'])} of SFT (the earlier ones stalled)"
        if name == "pretrain" and loss > COPY_LOSS_OK:
            line += (f"\n[yellow]warning: the copying circuit did not form (drill loss {loss:.2f} > {COPY_LOSS_OK});"
                     " SFT will not learn to copy digits. It forms abruptly, and for this seed not within"
                     " pretrain_max_steps: rerun with another --seed and a new --out.[/]")
        return line
    if name in ("eval_sft", "eval_rl"):
        return ", ".join(f"d{d}: {r['success']:.0%}" for d, r in res["chain"].items())
    if name == "rl":
        return f"{res['steps']} steps, {res['seconds_per_step']:.1f}s/step"
    return ""
