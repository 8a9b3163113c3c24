"""Inference: continuous batching over hybrid lightning/softmax models, with state reuse across turns.

Parts, each in its own file: :class:`SamplingParams` / :class:`EngineConfig` (params.py), :class:`Sequence` and
the outputs (sequence.py), :class:`CacheManager` (slots of lightning states and softmax KV), :class:`PrefixCache`
(reusable states of finished sequences), :class:`Scheduler`, :class:`ModelRunner`, :class:`Sampler`, the
:class:`Engine` loop and the offline :class:`LLM` API.
"""

from xinzhou.engine.engine import Engine
from xinzhou.engine.llm import LLM
from xinzhou.engine.params import EngineConfig, SamplingParams
from xinzhou.engine.sequence import RequestOutput, StreamOutput

__all__ = ["LLM", "Engine", "EngineConfig", "RequestOutput", "SamplingParams", "StreamOutput"]
