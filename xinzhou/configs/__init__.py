"""Typed dataclass configs and their named registries (no exec-style configurators, no YAML inheritance)."""

from xinzhou.configs.model import ModelConfig, get_config, list_configs, register_config

__all__ = ["ModelConfig", "get_config", "list_configs", "register_config"]
