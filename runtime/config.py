"""DepthScaleConfig: the model's hyper-parameters, validated, with a JSON round-trip.

Field names are public API (docs/design.md). `tokenizer` and `task` are optional extras that let a
checkpoint carry its character vocabulary and the synthetic task it was trained on. It lives in the
torch-free runtime, which validates an artifact's config.json with it; `depthscale` re-exports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

MIXERS = ("window", "retention")
# Upper bounds, checked before a model is built or an artifact is run: far above any model this toolkit
# targets, and low enough that a hostile or mistyped config cannot make the loader allocate without end.
LIMITS = {"vocab_size": 1 << 20, "d_model": 1 << 15, "n_heads": 1 << 10, "n_kv_heads": 1 << 10, "d_ff": 1 << 17,
          "window": 1 << 20, "prelude_layers": 256, "core_layers": 256, "cross_layers": 256, "max_iters": 1024,
          "min_iters": 1024, "reason_tokens": 64, "max_seq_len": 1 << 20, "grad_iters": 1024}
MAX_PARAMETERS = 4_000_000_000      # estimated from the sizes (16 GB in float32)


@dataclass(frozen=True)
class DepthScaleConfig:
    vocab_size: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 128
    window: int = 8               # sliding-window size in positions, the query itself included
    prelude_layers: int = 1
    core_layers: int = 1
    cross_layers: int = 1
    max_iters: int = 16           # default T at inference (a run-time input overrides it)
    min_iters: int = 1            # T_min: no token exits before this many iterations
    tol: float = 1e-3             # exit when δ_t < tol
    mixer: str = "window"         # "window" | "retention"
    bitnet: bool = True           # BitNet b1.58 linears (else float nn.Linear)
    reason_tokens: int = 0        # R learned tokens inserted after every real token
    max_seq_len: int = 4096       # in real tokens
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    scale_embeddings: bool = False  # multiply embeddings by sqrt(d_model)
    grad_iters: int = 4           # training backpropagates through the last grad_iters iterations
    tokenizer: str | None = None  # characters of the CharTokenizer, if the model has one
    task: str | None = None       # name of the synthetic task the model was trained on

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{f.name} must be an int, got {v!r}")
            if f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number, got {v!r}")
                object.__setattr__(self, f.name, float(v))
            if f.type in ("bool", bool) and not isinstance(v, bool):
                raise ValueError(f"{f.name} must be a bool, got {v!r}")
        positive = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "window", "max_seq_len",
                    "grad_iters")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prelude_layers", "core_layers", "cross_layers", "max_iters", "min_iters",
                     "reason_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, limit in LIMITS.items():
            if getattr(self, name) > limit:
                raise ValueError(f"{name} must be <= {limit}, got {getattr(self, name)}")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ValueError(f"the sizes make about {self.estimated_parameters():.3g} parameters, over the "
                             f"{MAX_PARAMETERS:.3g} this toolkit builds")
        if self.core_layers < 1:
            raise ValueError("core_layers must be >= 1: the shared core needs a layer")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads ({self.d_model // self.n_heads}) must be even for RoPE")
        if self.min_iters > self.max_iters:
            raise ValueError(f"min_iters ({self.min_iters}) must be <= max_iters ({self.max_iters})")
        if not (self.tol >= 0.0 and self.tol != float("inf")):
            raise ValueError(f"tol must be finite and >= 0, got {self.tol}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.tokenizer is not None:
            if not isinstance(self.tokenizer, str) or len(set(self.tokenizer)) != len(self.tokenizer):
                raise ValueError("tokenizer must be a string of distinct characters")
            if len(self.tokenizer) + 1 > self.vocab_size:
                raise ValueError(f"vocab_size ({self.vocab_size}) is smaller than the tokenizer "
                                 f"({len(self.tokenizer)} characters + BOS)")

    def estimated_parameters(self) -> int:
        """Parameters the sizes imply (attention and FFN per layer, the embedding and the head)."""
        d, kv = self.d_model, self.n_kv_heads * (self.d_model // max(1, self.n_heads))
        layer = 2 * d * d + 2 * d * kv + 3 * d * self.d_ff
        layers = self.prelude_layers + self.core_layers + self.cross_layers
        return layers * layer + (1 if self.tie_embeddings else 2) * self.vocab_size * d + 2 * d * d

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes: Any) -> "DepthScaleConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DepthScaleConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DepthScaleConfig":
        return cls.from_dict(json.loads(text))
