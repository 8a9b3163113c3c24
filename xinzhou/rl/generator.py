"""The engine's copy of the policy, and how old it may be (staleness).

Why: the rollout engine must see the weights the trainer updates. With staleness s = 0 it runs over the training
model object itself; the only thing the engine derives from weights and keeps across calls is its prefix cache
(states of earlier sequences), which is cleared before every rollout. With s > 0 it runs over a copy refreshed
once the copy would be more than s steps old, which reproduces an asynchronous pipeline's off-policyness
(PipelineRL, ScaleRL's k ≤ 8) deterministically on one machine. Evaluation always uses the current weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from xinzhou.configs.rl import RLConfig
from xinzhou.engine import LLM, EngineConfig
from xinzhou.parallel.dist import DistInfo


class Generator:
    """The engine's copy of the policy. s = 0: the training model itself (the engine sees every update; its prefix
    cache, the only thing it derives from weights across calls, is cleared before each rollout). s > 0: a copy
    whose weights are refreshed when they would become more than s steps old."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: RLConfig, info: DistInfo) -> None:
        self.model, self.staleness = model, cfg.staleness
        self.policy = model if cfg.staleness == 0 else copy.deepcopy(model)
        # input-major weights speed up CPU decoding; under DDP keep the layout DDP's gradient buckets expect
        engine_cfg = EngineConfig(max_num_seqs=cfg.max_num_seqs, max_prefill_tokens=8192,
                                  max_model_len=model.config.max_position_embeddings,
                                  input_major_weights=False if info.distributed else None)
        self.llm = LLM(self.policy, tokenizer, config=engine_cfg)
        self.version = 0  # the step whose weights the generator holds

    @torch.no_grad()
    def _copy_from(self, source: torch.nn.Module) -> None:
        for dst, src in zip(self.policy.state_dict().values(), source.state_dict().values()):
            dst.copy_(src)

    def prepare(self, step: int) -> int:
        """Before the rollouts of `step`: refresh stale weights, drop cached states; returns the policy's age."""
        if self.staleness and step - self.version > self.staleness:
            self._copy_from(self.model)
            self.version = step
        self.llm.engine.prefix.clear()
        self.policy.eval()
        return step - self.version if self.staleness else 0

    @contextmanager
    def current(self) -> Iterator[LLM]:
        """The engine over the current training weights (for evaluation), the stale copy restored afterwards."""
        saved = None
        if self.staleness:
            saved = {k: v.clone() for k, v in self.policy.state_dict().items()}
            self._copy_from(self.model)
        self.llm.engine.prefix.clear()
        self.policy.eval()
        try:
            yield self.llm
        finally:
            if saved is not None:
                self.policy.load_state_dict(saved)
            self.llm.engine.prefix.clear()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"version": self.version}
        if self.staleness:
            state["weights"] = {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version = int(state["version"])
        if self.staleness and "weights" in state:
            self.policy.load_state_dict(state["weights"])
