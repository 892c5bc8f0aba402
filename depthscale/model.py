"""DepthScaleModel: a recurrent-depth decoder (Universal-YOCO style) with BitNet b1.58 linears.

Read top to bottom (DESIGN §1). Shapes: B batch, n positions (real tokens, plus reasoning tokens when
config.reason_tokens > 0), d = d_model, H heads of size dh, Hkv key/value heads, V vocab.

    ids [B, N] -> embed -> (reasoning tokens) -> prelude -> e [B, n, d]
    s_0 = 0; repeat t = 1..T:  u = A·[norm(s); e] -> core layers -> s̃ = norm(u)
                               per-token δ_t, exit, freeze
    global KV from norm(s_T) -> cross-decoder layers (W_Q, W_O only) -> head -> logits [B, N, V]

The recursion is exposed step by step (init / step / finish). forward() runs the steps in a Python
loop, or as one torch while_loop when exporting (or when loop="while"), which becomes one ONNX Loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch._higher_order_ops import while_loop

from .bitlinear import BitLinear, PackedBitLinear, make_linear
from .config import DepthScaleConfig
from .exact_math import exact_sqrt, tree_sum
from .retention import GatedRetention
from .rope import apply_rope, rope_tables
from .window_attention import window_attention


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · w, with backend-exact arithmetic (exact_math.py)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = tree_sum(x * x) / x.shape[-1]                                   # [..., 1]
        return x * torch.reciprocal(exact_sqrt(mean_sq + self.eps)) * self.weight


class WindowSelfAttention(nn.Module):
    """Causal sliding-window self-attention with grouped KV heads and RoPE."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.h, self.h_kv, self.dh, self.window = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.window
        self.qkv = make_linear(cfg.d_model, (self.h + 2 * self.h_kv) * self.dh, cfg.bitnet)
        self.out = make_linear(self.h * self.dh, cfg.d_model, cfg.bitnet)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.dh, self.h_kv * self.dh, self.h_kv * self.dh], dim=-1)
        q = apply_rope(q.view(B, n, self.h, self.dh).transpose(1, 2), *rope)      # [B, H, n, dh]
        k = apply_rope(k.view(B, n, self.h_kv, self.dh).transpose(1, 2), *rope)   # [B, Hkv, n, dh]
        v = v.view(B, n, self.h_kv, self.dh).transpose(1, 2)                      # [B, Hkv, n, dh]
        o = window_attention(q, k, v, self.window)                                # [B, H, n, dh]
        return self.out(o.transpose(1, 2).reshape(B, n, self.h * self.dh))


class FeedForward(nn.Module):
    """Gated (SwiGLU) FFN: d -> 2·d_ff (gate, up) -> silu(gate)·up -> d. The gate is fused into
    w_out (a gated BitLinear), where it is computed in float64 so that backends agree to the bit."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.w_in = make_linear(cfg.d_model, 2 * cfg.d_ff, cfg.bitnet)
        self.w_out = make_linear(cfg.d_ff, cfg.d_model, cfg.bitnet, gated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.w_in(x))


class Block(nn.Module):
    """Pre-norm layer: x += mixer(norm(x)); x += FFN(norm(x))."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.mixer == "window":
            self.mixer = WindowSelfAttention(cfg)
        else:
            self.mixer = GatedRetention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.bitnet, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), rope)
        return x + self.ffn(self.norm2(x))


class CrossLayer(nn.Module):
    """YOCO cross-decoder layer: causal attention of W_Q·norm(y) over the shared global K, V."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.h, self.dh = cfg.n_heads, cfg.head_dim
        self.full_window = cfg.max_seq_len * (1 + cfg.reason_tokens)   # >= n: full causal attention
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.wq = make_linear(cfg.d_model, self.h * self.dh, cfg.bitnet)
        self.wo = make_linear(self.h * self.dh, cfg.d_model, cfg.bitnet)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, y: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """y [B, n, d]; k, v [B, Hkv, n, dh] (RoPE on k)."""
        B, n, _ = y.shape
        q = apply_rope(self.wq(self.norm1(y)).view(B, n, self.h, self.dh).transpose(1, 2), *rope)
        o = window_attention(q, k, v, self.full_window)                            # [B, H, n, dh]
        y = y + self.wo(o.transpose(1, 2).reshape(B, n, self.h * self.dh))
        return y + self.ffn(self.norm2(y))


@dataclass
class RecurrentState:
    """The recursion between steps. n counts positions (reasoning tokens included).

    e [B, n, d] prelude output, injected every step; s [B, n, d] hidden state;
    done [B, n] bool; iterations [B, n] int64 (each token's exit iteration, or t while running);
    delta [B, n] activation dtype, the last step's δ (inf before the first step); t, steps taken;
    rope, the (cos, sin) tables [n, dh/2].
    """

    e: torch.Tensor
    s: torch.Tensor
    done: torch.Tensor
    iterations: torch.Tensor
    delta: torch.Tensor
    t: int
    rope: tuple[torch.Tensor, torch.Tensor]


@dataclass
class DepthScaleOutput:
    logits: torch.Tensor       # [B, N, V] activation dtype (float32 unless to_precision), at real-token positions
    iterations: torch.Tensor   # [B, N] int64, each token's exit iteration


class DepthScaleModel(nn.Module):
    def __init__(self, config: DepthScaleConfig, loop: str = "auto"):
        super().__init__()
        if loop not in ("auto", "python", "while"):
            raise ValueError(f"loop must be 'auto', 'python' or 'while', got {loop!r}")
        self.config = cfg = config
        self.loop = loop
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=1.0)
        self.reason = nn.Parameter(torch.randn(cfg.reason_tokens, cfg.d_model)) if cfg.reason_tokens else None
        cos, sin = rope_tables(cfg.max_seq_len * (1 + cfg.reason_tokens), cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)                  # [positions, dh/2]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.prelude_layers))
        self.inject_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.inject = make_linear(2 * cfg.d_model, cfg.d_model, cfg.bitnet)          # A: 2d -> d
        self.core = nn.ModuleList(Block(cfg) for _ in range(cfg.core_layers))
        self.core_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.kv_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.kv = make_linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.head_dim, cfg.bitnet)
        self.cross = nn.ModuleList(CrossLayer(cfg) for _ in range(cfg.cross_layers))
        self.head_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=cfg.d_model ** -0.5)

    # ---- the recursion, step by step -------------------------------------------------------------

    def init(self, input_ids: torch.Tensor) -> RecurrentState:
        """Embedding and prelude. input_ids int64 [B, N] -> state with t = 0, s = 0."""
        cfg = self.config
        x = self.embed(input_ids)                                                  # [B, N, d]
        if cfg.scale_embeddings:
            x = x * math.sqrt(cfg.d_model)
        if self.reason is not None:                                                # real, R reasoning, real, ...
            B, N, d = x.shape
            r = self.reason[None, None].expand(B, N, cfg.reason_tokens, d)
            x = torch.cat([x[:, :, None], r], dim=2).reshape(B, N * (1 + cfg.reason_tokens), d)
        rope = (self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]])
        for block in self.prelude:
            x = block(x, rope)
        B, n, _ = x.shape
        return RecurrentState(
            e=x, s=torch.zeros_like(x),
            done=torch.zeros(B, n, dtype=torch.bool, device=x.device),
            iterations=torch.zeros(B, n, dtype=torch.int64, device=x.device),
            delta=torch.full((B, n), float("inf"), dtype=x.dtype, device=x.device),
            t=0, rope=rope)

    def step(self, state: RecurrentState, tol: float | None = None) -> RecurrentState:
        """One application of the shared core: t -> t + 1. Done tokens keep their state."""
        tol = self.config.tol if tol is None else tol
        t = state.t + 1
        s, done, iterations, delta = self._core_step(state.e, state.s, state.done, state.iterations,
                                                     t, tol, state.rope)
        return replace(state, s=s, done=done, iterations=iterations, delta=delta, t=t)

    def finish(self, state: RecurrentState) -> DepthScaleOutput:
        """Global KV (computed once), cross-decoder and head; reads real-token positions only."""
        cfg = self.config
        B, n, _ = state.s.shape
        k, v = self.kv(self.kv_norm(state.s)).chunk(2, dim=-1)
        k = apply_rope(k.view(B, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2), *state.rope)
        v = v.view(B, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)             # [B, Hkv, n, dh]
        y = state.s
        for layer in self.cross:
            y = layer(y, k, v, state.rope)
        logits = self.head(self.head_norm(y))                                      # [B, n, V]
        iterations = state.iterations
        if cfg.reason_tokens:
            logits = logits[:, :: 1 + cfg.reason_tokens]
            iterations = iterations[:, :: 1 + cfg.reason_tokens]
        return DepthScaleOutput(logits=logits, iterations=iterations)

    def _core_step(self, e, s, done, iterations, t, tol, rope):
        """The body of the recursion, shared by step() and the while_loop. t: int or int64 [] tensor.

        Returns fresh tensors (s [B,n,d], done [B,n], iterations [B,n], delta [B,n]).
        """
        u = self.inject(torch.cat([self.inject_norm(s), e], dim=-1))               # [B, n, d]
        for block in self.core:
            u = block(u, rope)
        s_new = self.core_norm(u)
        diff = s_new - s
        delta = (exact_sqrt(tree_sum(diff * diff)) / (
            exact_sqrt(tree_sum(s_new * s_new)) + self.config.norm_eps)).squeeze(-1)  # [B, n]
        s_next = torch.where(done[..., None], s, s_new)
        exits = (~done) & (t >= self.config.min_iters) & (delta < tol)
        iterations = torch.where(done, iterations, t)
        return s_next, done | exits, iterations, delta

    # ---- whole passes ----------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, max_iters=None, tol=None) -> DepthScaleOutput:
        """input_ids int64 [B, N]; max_iters int (or int64 []), default config.max_iters;
        tol float (or float32 []), default config.tol. Returns logits [B, N, V], iterations [B, N]."""
        max_iters = self.config.max_iters if max_iters is None else max_iters
        tol = self.config.tol if tol is None else tol
        state = self.init(input_ids)
        if self.training and torch.is_grad_enabled():
            state = self._recur_truncated(state, int(max_iters), float(tol))
        elif self.loop == "while" or (self.loop == "auto" and torch.compiler.is_exporting()):
            state = self._recur_while(state, max_iters, tol)
        else:
            state = self._recur_python(state, int(max_iters), float(tol))
        return self.finish(state)

    def _recur_python(self, state: RecurrentState, max_iters: int, tol: float) -> RecurrentState:
        while state.t < max_iters and not bool(state.done.all()):
            state = self.step(state, tol)
        return state

    def _recur_truncated(self, state: RecurrentState, max_iters: int, tol: float) -> RecurrentState:
        """Training: the first T - grad_iters steps without autograd, the last grad_iters with it."""
        free = max(0, max_iters - self.config.grad_iters)
        with torch.no_grad():
            state = self._recur_python(state, free, tol)
        state = replace(state, s=state.s.detach())
        return self._recur_python(state, max_iters, tol)

    def _recur_while(self, state: RecurrentState, max_iters, tol) -> RecurrentState:
        """The same recursion as one torch while_loop (one ONNX Loop on export)."""
        device = state.s.device
        max_iters = torch.as_tensor(max_iters, dtype=torch.int64, device=device)
        tol = torch.as_tensor(tol, dtype=torch.float32, device=device)
        e, rope = state.e, state.rope

        def cond(t, s, done, iterations, delta):
            return (t < max_iters) & ~done.all()

        def body(t, s, done, iterations, delta):
            t = t + 1
            s, done, iterations, delta = self._core_step(e, s, done, iterations, t, tol, rope)
            return t, s, done, iterations, delta

        t0 = torch.zeros((), dtype=torch.int64, device=device)
        t, s, done, iterations, delta = while_loop(
            cond, body, (t0, state.s, state.done, state.iterations, state.delta))
        return replace(state, s=s, done=done, iterations=iterations, delta=delta, t=t)

    # ---- deployment form -------------------------------------------------------------------------

    def packed(self) -> "DepthScaleModel":
        """This model in place, every BitLinear swapped for its 2-bit PackedBitLinear; eval mode.

        The packed model gives bit-identical outputs to the unpacked one in eval mode; it cannot train.
        """
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, BitLinear):
                    setattr(module, name, child.packed())
        return self.eval()

    def to_precision(self, precision: str) -> "DepthScaleModel":
        """This packed model in place with its float tensors in `precision` ("fp32", "fp16" or "bf16"):
        embeddings, norms, RoPE tables, head, and so every activation between ops. BitLinear scales γ
        stay float32, and the custom ops compute inside as in float32 (attention in float64), rounding
        only their results to the activation dtype."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        scales = {m: m.gamma for m in self.modules() if isinstance(m, PackedBitLinear)}
        self.to(PRECISIONS[precision])
        for module, gamma in scales.items():
            module.gamma = gamma
        return self

    @property
    def precision(self) -> str:
        """"fp32", "fp16" or "bf16": the dtype of the model's activations."""
        return {v: k for k, v in PRECISIONS.items()}[self.embed.weight.dtype]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
