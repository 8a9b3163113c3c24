"""Pure tensor functions (no nn.Module, no config objects): lightning attention, softmax attention, MoE.

Each op has a plain reference beside its fast path, one signature across implementations, and an ``impl=``
switch so tests and bug reports can force a path.
"""

from xinzhou.ops.lightning import lightning_attn

__all__ = ["lightning_attn"]
