"""`xinzhou demo`: train a hybrid lightning-MoE agent from scratch that thinks, calls tools and is served."""

from xinzhou.demo.pipeline import STAGES, run_demo
from xinzhou.demo.presets import PRESETS, DemoPreset, get_preset

__all__ = ["STAGES", "PRESETS", "DemoPreset", "get_preset", "run_demo"]
