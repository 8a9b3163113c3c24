"""Training checkpoints that survive a crash at any instant and resume bit-identically.

A checkpoint is a directory ``checkpoints/step_NNNNNNNN/`` holding

* ``model.pt``     full (unsharded) model state dict, parameter name → tensor;
* ``optimizer.pt`` full AdamW state keyed by parameter name (so any number of processes can load it);
* ``trainer.pt``   step, data position, config, metrics to carry over, and every process's RNG states;
* ``meta.json``    a human-readable summary, written last.

Atomicity: rank 0 writes everything into a hidden sibling ``.tmp-step_…`` directory, ``fsync``s each file and the
directory, and only then renames it into place (``rename`` is atomic on POSIX). A process killed at any moment
leaves either the complete new checkpoint or only a ``.tmp-*`` directory that :meth:`Checkpointer.latest` ignores
and the next save deletes; the previous checkpoint is untouched. Old checkpoints are pruned (``keep_last``) only
after the new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xinzhou.parallel.data_parallel import full_state_dicts, load_full_state_dicts
from xinzhou.parallel.dist import DistInfo, all_gather_object, barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")
FILES = ("model.pt", "optimizer.pt", "trainer.pt", "meta.json")


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states, in ``torch.load``-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


class Checkpointer:
    """Save, find and load checkpoints under ``root`` (``out_dir/checkpoints``); keeps the ``keep_last`` newest."""

    def __init__(self, root: str | os.PathLike, *, keep_last: int = 2, info: DistInfo | None = None) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.info = info or DistInfo()

    # --- finding --------------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and all((p / f).is_file() for f in FILES):
                found.append(int(m.group(1)))
        return sorted(found)

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def remove_partial(self) -> None:
        """Delete ``.tmp-*`` directories a killed writer left behind (rank 0 only)."""
        if self.info.is_main and self.root.is_dir():
            for p in self.root.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)

    # --- saving ---------------------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
        """Write checkpoint ``step``; ``state`` is the trainer's (JSON-like: step, data position, ...). A collective:
        every process calls it; rank 0 writes."""
        model_sd, optim_sd = full_state_dicts(model, optimizer)
        rngs = all_gather_object(rng_state())
        final = self.path(step)
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_partial()
            tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
            tmp.mkdir()
            try:
                _save(model_sd, tmp / "model.pt")
                _save(optim_sd, tmp / "optimizer.pt")
                _save({**state, "rng": rngs}, tmp / "trainer.pt")
                meta = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": self.info.world_size,
                        **{k: v for k, v in state.items() if k in ("data", "metrics")}}
                with open(tmp / "meta.json", "w") as f:
                    json.dump(meta, f, indent=2, default=str)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
                if final.exists():  # the same step saved again (a rerun from an older checkpoint): replace it
                    old = self.root / f".tmp-old-{final.name}-{os.getpid()}"
                    os.replace(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, final)
                _fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old_step in self.steps()[: -self.keep_last]:
                shutil.rmtree(self.path(old_step), ignore_errors=True)
        barrier()
        return final

    # --- loading --------------------------------------------------------------------------------------------------
    def read_state(self, path: str | os.PathLike) -> dict[str, Any]:
        """The trainer state of checkpoint ``path`` (no model or optimizer is touched)."""
        path = Path(path)
        if not (path / "trainer.pt").is_file():
            raise ValueError(f"{path} is not a complete checkpoint (trainer.pt missing); complete ones: "
                             f"{[self.path(s).name for s in self.steps()]}")
        return torch.load(path / "trainer.pt", weights_only=True)

    def load(self, path: str | os.PathLike, model: nn.Module,
             optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        """Load weights and optimizer state of checkpoint ``path`` into (wrapped) ``model``/``optimizer``, restore
        this process's RNG states, and return the trainer state. A collective."""
        path = Path(path)
        state = self.read_state(path)
        model_sd: dict = {}
        optim_sd: dict = {}
        if self.info.is_main:
            model_sd = torch.load(path / "model.pt", weights_only=True)
            optim_sd = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else {}
        load_full_state_dicts(model, optimizer, model_sd, optim_sd, self.info)
        rngs = state.pop("rng")
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:  # resumed with another number of processes: every rank continues from rank 0's generators
            set_rng_state(rngs[0])
        return state
