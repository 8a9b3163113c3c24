"""Model configuration: one typed dataclass for both MiniMax families, and a named registry.

``family="text01"`` is MiniMax-Text-01 / M1: hybrid lightning + softmax layers, post-norm residual scaled by
α/β (DeepNorm), softmax top-k router. ``family="m2"`` is MiniMax-M2: softmax attention everywhere with QK-norm,
pre-norm residual, sigmoid router with a selection-only bias. Both use partial RoPE on the first ``rotary_dim``
channels of each head. The registry holds the real shapes (``minimax-text-01``, ``minimax-m1``, ``minimax-m2``)
and tiny ``debug-*`` sizes for tests and laptops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

LINEAR = "linear_attention"
FULL = "full_attention"
LAYER_TYPES = (LINEAR, FULL)
FAMILIES = ("text01", "m2")


@dataclass
class ModelConfig:
    """All hyper-parameters of a MiniMax-style model. Validated on construction."""

    family: Literal["text01", "m2"] = "text01"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    layer_types: tuple[str, ...] = ()  # empty: Text-01 pattern (softmax where (i+1) % 8 == 0) or all-softmax (M2)
    rotary_dim: int = 16
    rope_theta: float = 10_000_000.0
    max_position_embeddings: int = 8192
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    router: Literal["softmax", "sigmoid"] = "softmax"
    use_routing_bias: bool = False  # M2: e_score_correction_bias used only to choose experts
    router_aux_loss_coef: float = 0.001
    use_qk_norm: bool = False  # M2: RMSNorm over the whole q and k projections
    postnorm: bool = True  # Text-01: residual is the normed input; M2: plain pre-norm
    linear_attn_alpha: float = 1.0
    linear_attn_beta: float = 1.0
    full_attn_alpha: float = 1.0
    full_attn_beta: float = 1.0
    mlp_alpha: float = 1.0
    mlp_beta: float = 1.0
    rms_norm_eps: float = 1e-5
    lightning_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    fp32_lm_head: bool = True  # M1: logits from an fp32 LM head (rollout/trainer probabilities agree)
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.layer_types:
            self.layer_types = default_layer_types(self.family, self.num_layers)
        self.layer_types = tuple(self.layer_types)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "num_experts", "num_experts_per_tok", "moe_intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_layers is {self.num_layers}"
            )
        bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
        if bad:
            raise ValueError(f"unknown layer type(s) {bad} in layer_types; valid options: {list(LAYER_TYPES)}")
        if self.family == "m2" and LINEAR in self.layer_types:
            raise ValueError("family 'm2' has softmax attention in every layer; layer_types must all be "
                             f"{FULL!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if not (0 < self.rotary_dim <= self.head_dim) or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds num_experts ({self.num_experts})"
            )
        if self.router not in ("softmax", "sigmoid"):
            raise ValueError(f"router must be 'softmax' or 'sigmoid', got {self.router!r}")

    @property
    def num_linear_layers(self) -> int:
        return sum(t == LINEAR for t in self.layer_types)

    @property
    def num_full_layers(self) -> int:
        return sum(t == FULL for t in self.layer_types)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (``layer_types`` is re-derived if ``num_layers`` changes)."""
        if "num_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = ()
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


def default_layer_types(family: str, num_layers: int) -> tuple[str, ...]:
    """Text-01/M1: softmax at every 8th layer (index % 8 == 7), lightning elsewhere; M2: all softmax."""
    if family == "m2":
        return (FULL,) * num_layers
    return tuple(FULL if i % 8 == 7 else LINEAR for i in range(num_layers))


def text01_alpha(num_layers: int) -> float:
    """DeepNorm residual scale α = (2N)^¼ (3.5566 for 80 layers, as in the released config)."""
    return (2 * num_layers) ** 0.25


_REGISTRY: dict[str, ModelConfig] = {}


def register_config(name: str, config: ModelConfig) -> None:
    """Add a named config to the registry (names are unique)."""
    if name in _REGISTRY:
        raise ValueError(f"config {name!r} is already registered")
    _REGISTRY[name] = dataclasses.replace(config, name=name)


def get_config(name: str, **overrides) -> ModelConfig:
    """A copy of the named config, with optional field overrides."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model config {name!r}; valid options: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].replace(**overrides) if overrides else dataclasses.replace(_REGISTRY[name])


def list_configs() -> list[str]:
    return sorted(_REGISTRY)


def _text01(**kw) -> ModelConfig:
    a = text01_alpha(kw["num_layers"])
    base = dict(family="text01", router="softmax", postnorm=True, rope_theta=1e7,
                linear_attn_alpha=a, full_attn_alpha=a, mlp_alpha=a)
    return ModelConfig(**{**base, **kw})


def _m2(**kw) -> ModelConfig:
    base = dict(family="m2", router="sigmoid", use_routing_bias=True, use_qk_norm=True, postnorm=False,
                rope_theta=5e6, rms_norm_eps=1e-6)
    return ModelConfig(**{**base, **kw})


_TEXT01_REAL = dict(vocab_size=200_064, hidden_size=6144, num_layers=80, num_heads=64, num_kv_heads=8,
                    head_dim=128, rotary_dim=64, num_experts=32, num_experts_per_tok=2,
                    moe_intermediate_size=9216, max_position_embeddings=10_240_000, router_aux_loss_coef=0.001)
register_config("minimax-text-01", _text01(**_TEXT01_REAL))
register_config("minimax-m1", _text01(**_TEXT01_REAL))
register_config("minimax-m2", _m2(vocab_size=200_064, hidden_size=3072, num_layers=62, num_heads=48,
                                  num_kv_heads=8, head_dim=128, rotary_dim=64, num_experts=256,
                                  num_experts_per_tok=8, moe_intermediate_size=1536,
                                  max_position_embeddings=196_608, router_aux_loss_coef=0.001))
# Tiny sizes for tests and laptops. debug-text01 keeps the hybrid pattern (softmax every 4th layer here, so the
# 8 layers hold 2 softmax layers) and many-expert routing; a few M parameters.
register_config("debug-text01", _text01(vocab_size=2048, hidden_size=256, num_layers=8, num_heads=4,
                                        num_kv_heads=2, head_dim=64, rotary_dim=32, num_experts=8,
                                        num_experts_per_tok=2, moe_intermediate_size=256,
                                        max_position_embeddings=65_536,
                                        layer_types=tuple(FULL if i % 4 == 3 else LINEAR for i in range(8))))
register_config("debug-m2", _m2(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                                head_dim=64, rotary_dim=32, num_experts=16, num_experts_per_tok=4,
                                moe_intermediate_size=128, max_position_embeddings=65_536))
