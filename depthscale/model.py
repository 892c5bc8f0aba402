"""DepthScaleModel: a recurrent-depth decoder (Universal-YOCO style) with BitNet b1.58 linears.

Read top to bottom (docs/design.md). Shapes: B batch, n positions (real tokens, plus reasoning tokens when
config.reason_tokens > 0), d = d_model, H heads of size dh, Hkv key/value heads, V vocab.

    ids [B, N] -> embed -> (reasoning tokens) -> prelude -> e [B, n, d]
    s_0 = 0; repeat t = 1..T:  u = A·[norm(s); e] -> core layers -> s̃ = norm(u)
                               per-token δ_t, exit, freeze
    global KV from norm(s_T) -> cross-decoder layers (W_Q, W_O only) -> head -> logits [B, N, V]

Exit means exit: once a token is done (δ_t < tol after at least min_iters iterations, or its row's
max_iters reached) its state s *and* its memory at every core layer (its keys and values: what other
tokens' queries read of it) are frozen; tokens still running attend to a done token's frozen K/V. So a
token's outputs depend only on the tokens up to it, and incremental decoding (prefill / decode, with
caches of the K/V at iteration min(t, exit)) reproduces the whole-sequence pass.

The recursion is exposed step by step (init / step / finish). forward() runs the steps in a Python
loop, or as one torch while_loop when exporting (or when loop="while"), which becomes one ONNX Loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._higher_order_ops import while_loop

from .bitlinear import BitLinear, PackedBitLinear, make_linear
from depthscale_runtime.config import DepthScaleConfig
from .exact_math import exact_linear, exact_sqrt, tree_sum, zeros
from .retention import GatedRetention
from .rope import apply_rope, rope_tables
from .window_attention import cached_attention, window_attention


ACTIVE_CROSSOVER = (4, 5)  # the active-set step runs once at most 4/5 of the positions are running
ACTIVE_SUB_BLOCKS = 4   # the active set's attention: a window spans this many query blocks
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NO_CAP = 1 << 62            # max_iters of a row without a cap (the step API: the caller decides when to stop)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · w, with backend-exact arithmetic (exact_math.py)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = tree_sum(x * x) / x.shape[-1]                                   # [..., 1]
        return x * torch.reciprocal(exact_sqrt(mean_sq + self.eps)) * self.weight


@dataclass
class Past:
    """What a mixer reads of the positions before the current ones (incremental decoding).

    memory: the past positions' memory items, chronological, each [B, Hkv, P, dh];
    q_start [B] int64: position of the first current position; k_start [B]: position of the first past one
    (q_start - P; positions below 0 are empty slots, never attended)."""
    memory: tuple[torch.Tensor, ...]
    q_start: torch.Tensor
    k_start: torch.Tensor


class WindowSelfAttention(nn.Module):
    """Causal sliding-window self-attention with grouped KV heads and RoPE.

    A token's memory is its (k, v), each [B, Hkv, n, dh] (RoPE on k)."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.h, self.h_kv, self.dh, self.window = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.window
        self.qkv = make_linear(cfg.d_model, (self.h + 2 * self.h_kv) * self.dh, cfg.bitnet)
        self.out = make_linear(self.h * self.dh, cfg.d_model, cfg.bitnet)

    def project(self, x: torch.Tensor, rope) -> tuple[tuple[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """x [B, n, d] -> ((q [B, H, n, dh],), memory (k, v))."""
        B, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.dh, self.h_kv * self.dh, self.h_kv * self.dh], dim=-1)
        q = apply_rope(q.view(B, n, self.h, self.dh).transpose(1, 2), *rope)      # [B, H, n, dh]
        k = apply_rope(k.view(B, n, self.h_kv, self.dh).transpose(1, 2), *rope)   # [B, Hkv, n, dh]
        v = v.view(B, n, self.h_kv, self.dh).transpose(1, 2)                      # [B, Hkv, n, dh]
        return (q,), (k, v)

    def attend(self, queries, memory, past: Past | None = None) -> torch.Tensor:
        """The current positions' queries over their own memory (and the past's) -> [B, n, d]."""
        (q,), (k, v) = queries, memory
        B, _, n, _ = q.shape
        if past is None:
            o = window_attention(q, k, v, self.window)                             # [B, H, n, dh]
        else:
            o = cached_attention(q, torch.cat([past.memory[0], k], 2), torch.cat([past.memory[1], v], 2),
                                 past.q_start, past.k_start, self.window)
        return self.out(o.transpose(1, 2).reshape(B, n, self.h * self.dh))

    def attend_active(self, queries, memory, active: ActiveSet) -> torch.Tensor:
        """Queries of the active tokens (q [1, H, M, dh]) over the whole memory (k, v, each [B, Hkv, n, dh])
        -> [1, M, d]. By blocks, as the dense window_attention: positions in blocks of b queries; each block
        holding an active token attends to its own and the R blocks before it (its queries in place, zeros
        for done tokens, whose results are dropped), so the keys are gathered (R + 1)-fold, not W-fold.
        A window of at most ACTIVE_SUB_BLOCKS makes blocks of one query: the active tokens themselves."""
        (q,), (k, v) = queries, memory
        B, _, n, _ = k.shape
        b = ceil_div(self.window, ACTIVE_SUB_BLOCKS)                               # queries per block (static)
        R = ceil_div(self.window - 1, b)                                           # key blocks before a query block
        if b == 1:
            row, first = active.row, active.pos                                    # [M] each block's row, position
            qb = q[0].transpose(0, 1)[:, :, None]                                  # [M, H, 1, dh]
        else:
            nb = ceil_div(n, b)
            ids, slot = active.blocks(b)                                           # [Mb] blocks; [M] row of each token
            row = torch.div(ids, nb, rounding_mode="floor")                       # [Mb] each block's row
            first = (ids - row * nb) * b                                           # [Mb] its first position
            qgrid = zeros(q, B * nb * b, self.h, self.dh).index_put((active.row * (nb * b) + active.pos,),
                                                                     q[0].transpose(0, 1))
            qb = qgrid.reshape(B * nb, b, self.h, self.dh)[ids].transpose(1, 2)  # [Mb, H, b, dh]
        # each block's keys: positions first - R·b ..< first + b, read clamped to 0..n-1 (the ones outside,
        # before the sequence or past its end, are masked: cached_attention reads their true positions)
        kpos = (first - R * b)[:, None] + torch.arange((R + 1) * b, device=q.device)        # [Mb, K]
        heads = torch.arange(self.h_kv, device=q.device)
        flat = ((row[:, None] * self.h_kv + heads)[:, :, None] * n + kpos.clamp(0, n - 1)[:, None])  # [Mb, Hkv, K]
        o = cached_attention(qb, k.reshape(-1, self.dh)[flat], v.reshape(-1, self.dh)[flat], first,
                             first - R * b, self.window)                           # [Mb, H, b, dh]
        o = o.transpose(1, 2).reshape(-1, self.h * self.dh)                        # [Mb · b, H·dh]
        return self.out((o if b == 1 else o[slot])[None])

    def empty_memory(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero memory for the positions of x [B, n, d]: (k, v), each [B, Hkv, n, dh]."""
        B, n, _ = x.shape
        zero = zeros(x, B, self.h_kv, n, self.dh)
        return zero, zero.clone()


class FeedForward(nn.Module):
    """Gated (SwiGLU) FFN: d -> 2·d_ff (gate, up) -> silu(gate)·up -> d. The gate is fused into
    w_out (a gated BitLinear), where it is computed in float64 so that backends agree to the bit."""

    def __init__(self, cfg: DepthScaleConfig):
        super().__init__()
        self.w_in = make_linear(cfg.d_model, 2 * cfg.d_ff, cfg.bitnet)
        self.w_out = make_linear(cfg.d_ff, cfg.d_model, cfg.bitnet, gated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.w_in(x))


def _token_mask(done: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """done [B, n] shaped to broadcast over a memory item whose token axis is 2 ([B, heads, n, ...])."""
    return done.view(done.shape[0], 1, done.shape[1], *([1] * (item.dim() - 3)))


def ceil_div(a, b):
    """⌈a / b⌉ for a >= 0, b > 0 (ints or the sizes torch.export traces: -(-a // b) would become a
    truncating ONNX Div of a negative number)."""
    return (a + b - 1) // b


@dataclass
class ActiveSet:
    """The tokens still running in a step, of a [B, n] grid: flat int64 [M] (b·n + p), row b and position p;
    done, the grid's bool [B, n]."""
    flat: torch.Tensor
    row: torch.Tensor
    pos: torch.Tensor
    done: torch.Tensor

    @classmethod
    def of(cls, done: torch.Tensor) -> "ActiveSet":
        """done bool [B, n] -> the positions not done (row-major order)."""
        n = done.shape[1]
        flat = torch.nonzero(~done.reshape(-1)).squeeze(1)
        row = torch.div(flat, n, rounding_mode="floor")
        return cls(flat, row, flat - row * n, done)

    def blocks(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions in blocks of b (the last one padded, as done): the blocks holding an active token, as
        int64 [Mb] ids (row · nb + block, ascending), and each active token's row in the [Mb · b] positions
        of those blocks, int64 [M]."""
        B, n = self.done.shape
        nb = ceil_div(n, b)
        running = ~F.pad(self.done, (0, nb * b - n), value=True).reshape(B * nb, b).all(-1)   # [B · nb]
        ids = torch.nonzero(running).squeeze(1)
        rank = torch.cumsum(running.to(torch.int64), 0) - 1                        # block id -> its index in ids
        block_in_row = torch.div(self.pos, b, rounding_mode="floor")
        return ids, rank[self.row * nb + block_in_row] * b + (self.pos - block_in_row * b)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, n, ...] -> its active tokens [M, ...]."""
        return x.reshape(-1, *x.shape[2:])[self.flat]

    def scatter(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """x [B, n, ...] with its active tokens replaced by values [M, ...] (a new tensor)."""
        return x.reshape(-1, *x.shape[2:]).index_put((self.flat,), values).reshape(x.shape)

    def scatter_memory(self, item: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A memory item [B, heads, n, dh] with the active tokens' entries replaced by values [M, heads, dh]."""
        heads = torch.arange(item.shape[1], device=item.device)
        return item.index_put((self.row[:, None], heads[None, :], self.pos[:, None]), values)


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

    def forward(self, x: torch.Tensor, rope, frozen=None, done: torch.Tensor | None = None,
                past: Past | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x [B, n, d] -> (x [B, n, d], memory): this layer's memory of the current positions, where the
        positions that are done (done [B, n]) keep their `frozen` memory instead of a fresh one."""
        queries, memory = self.mixer.project(self.norm1(x), rope)
        if frozen is not None:
            memory = tuple(torch.where(_token_mask(done, m), f, m) for f, m in zip(frozen, memory))
        x = x + self.mixer.attend(queries, memory, past)
        return x + self.ffn(self.norm2(x)), memory

    def forward_active(self, x: torch.Tensor, rope, memory, active: ActiveSet
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The same layer over the active tokens only: x [1, M, d] (the tokens of `active`), rope tables
        at their positions [M, dh/2]; memory: the layer's (k, v), each [B, Hkv, n, dh], where done tokens
        hold their frozen entries. Returns (x [1, M, d], the memory with the active tokens' fresh entries)."""
        queries, fresh = self.mixer.project(self.norm1(x), rope)                 # k, v [1, Hkv, M, dh]
        memory = tuple(active.scatter_memory(m, f[0].transpose(0, 1)) for m, f in zip(memory, fresh))
        x = x + self.mixer.attend_active(queries, memory, active)
        return x + self.ffn(self.norm2(x)), memory


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

    def forward(self, y: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope,
                q_start: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, n, d]; k, v [B, Hkv, S, dh] (RoPE on k). Whole sequence (S = n) when q_start is None;
        else y's positions start at q_start [B] and k, v hold positions 0..S-1 (a decode step)."""
        B, n, _ = y.shape
        q = apply_rope(self.wq(self.norm1(y)).view(B, n, self.h, self.dh).transpose(1, 2), *rope)
        if q_start is None:
            o = window_attention(q, k, v, self.full_window)                        # [B, H, n, dh]
        else:
            o = cached_attention(q, k, v, q_start, torch.zeros_like(q_start), self.full_window)
        y = y + self.wo(o.transpose(1, 2).reshape(B, n, self.h * self.dh))
        return y + self.ffn(self.norm2(y))


@dataclass
class RecurrentState:
    """The recursion between steps. n counts positions (reasoning tokens included).

    e [B, n, d] prelude output, injected every step; s [B, n, d] hidden state;
    done [B, n] bool; iterations [B, n] int64 (each token's exit iteration, or t while running);
    delta [B, n] activation dtype, the last step's δ (inf before the first step); t, steps taken;
    memory: per core layer, the memory items the last step used (done tokens' frozen ones), each
    [B, heads, n, ...]; max_iters [B] int64 and tol [B] float32, each row's budget (a row's tokens are
    done once t reaches its max_iters); rope, the (cos, sin) tables [n, dh/2] (or [B, 1, n, dh/2]).
    """

    e: torch.Tensor
    s: torch.Tensor
    done: torch.Tensor
    iterations: torch.Tensor
    delta: torch.Tensor
    t: int
    memory: tuple[tuple[torch.Tensor, ...], ...]
    max_iters: torch.Tensor
    tol: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]


@dataclass
class DepthScaleOutput:
    logits: torch.Tensor       # [B, N, V] float32, at real-token positions
    iterations: torch.Tensor   # [B, N] int64, each token's exit iteration


def per_row(value, batch: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """A scalar, or a [] or [B] tensor -> a [B] tensor of `dtype` (each row's max_iters or tol)."""
    return torch.as_tensor(value, dtype=dtype, device=device).expand(batch).clone()


class DepthScaleModel(nn.Module):
    def __init__(self, config: DepthScaleConfig, loop: str = "auto"):
        super().__init__()
        if loop not in ("auto", "python", "while"):
            raise ValueError(f"loop must be 'auto', 'python' or 'while', got {loop!r}")
        self.config = cfg = config
        self.loop = loop
        # compute only the tokens still running (ActiveSet); the dense step where that is not exact:
        # retention carries a state along positions, float linears sum in a row-count-dependent order
        self.active_set = cfg.mixer == "window" and cfg.bitnet
        self.active_crossover = ACTIVE_CROSSOVER     # (num, den): active-set steps once num/den or fewer run
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

    # ---- the pieces of a pass ----------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 [B, N] -> x [B, n, d], each real token followed by its reasoning tokens."""
        cfg = self.config
        x = self.embed(input_ids)                                                  # [B, N, d]
        if cfg.scale_embeddings:
            x = x * math.sqrt(cfg.d_model)
        if self.reason is not None:                                                # real, R reasoning, real, ...
            B, N, d = x.shape
            r = self.reason[None, None].expand(B, N, cfg.reason_tokens, d)
            x = torch.cat([x[:, :, None], r], dim=2).reshape(B, N * (1 + cfg.reason_tokens), d)
        return x

    def rope_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables at per-row positions int64 [B, n] -> (cos, sin), each [B, 1, n, dh/2]."""
        return self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)

    def global_kv(self, s: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """YOCO's global keys and values from the final states s [B, n, d]: k, v [B, Hkv, n, dh]."""
        cfg = self.config
        B, n, _ = s.shape
        k, v = self.kv(self.kv_norm(s)).chunk(2, dim=-1)
        k = apply_rope(k.view(B, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2), *rope)
        return k, v.view(B, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)

    def decode_out(self, s: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope, iterations: torch.Tensor,
                   q_start: torch.Tensor | None = None) -> DepthScaleOutput:
        """Cross-decoder over the global k, v and the head; reads real-token positions only.

        The head is exact_linear (float64, rounded once): a float32 matmul's result depends on how many
        rows it has (1 in a decode step, n in a whole pass), its float64 result rounded to float32 does not."""
        y = s
        for layer in self.cross:
            y = layer(y, k, v, rope, q_start)
        logits = exact_linear(self.head_norm(y), self.head.weight)                # [B, n, V]
        step = 1 + self.config.reason_tokens
        return DepthScaleOutput(logits=logits[:, ::step], iterations=iterations[:, ::step])

    # ---- the recursion, step by step -------------------------------------------------------------

    def init(self, input_ids: torch.Tensor, max_iters=None, tol=None, lengths: torch.Tensor | None = None
             ) -> RecurrentState:
        """Embedding and prelude: input_ids int64 [B, N] -> state with t = 0, s = 0.

        max_iters, tol: each row's budget (scalars, or [B]); by default no cap (the caller decides when
        to stop stepping) and config.tol. lengths int64 [B]: real tokens per row (right padding after
        them); padding positions are done from the start and never iterate."""
        state, _ = self._start(input_ids, max_iters, tol, lengths)
        return state

    def _start(self, input_ids, max_iters, tol, lengths) -> tuple[RecurrentState, list]:
        """init(), also returning each prelude layer's memory of every position."""
        x = self.embed_tokens(input_ids)
        rope = (self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]])
        prelude_memory = []
        for block in self.prelude:
            x, memory = block(x, rope)
            prelude_memory.append(memory)
        B = x.shape[0]
        max_iters = per_row(NO_CAP if max_iters is None else max_iters, B, torch.int64, x.device)
        tol = per_row(self.config.tol if tol is None else tol, B, torch.float32, x.device)
        return self._fresh_state(x, rope, max_iters, tol, self._position_lengths(input_ids, lengths)), prelude_memory

    def _position_lengths(self, input_ids, lengths) -> torch.Tensor | None:
        return None if lengths is None else lengths.to(input_ids.device) * (1 + self.config.reason_tokens)

    def _fresh_state(self, e, rope, max_iters, tol, position_lengths=None) -> RecurrentState:
        """t = 0: s = 0; done where the row's budget is 0 or the position is padding (>= its row's length)."""
        B, n, _ = e.shape
        done = (max_iters <= 0)[:, None].expand(B, n)
        if position_lengths is not None:
            done = done | (torch.arange(n, device=e.device)[None, :] >= position_lengths[:, None])
        return RecurrentState(
            e=e, s=torch.zeros_like(e), done=done.clone(),
            iterations=torch.zeros(B, n, dtype=torch.int64, device=e.device),
            delta=torch.full((B, n), float("inf"), dtype=e.dtype, device=e.device),
            t=0, memory=tuple(block.mixer.empty_memory(e) for block in self.core),
            max_iters=max_iters, tol=tol, rope=rope)

    def step(self, state: RecurrentState, tol=None, past=None) -> RecurrentState:
        """One application of the shared core: t -> t + 1. Done tokens keep their state and memory.

        tol (a scalar or [B]) replaces the state's for this step and the next. past: the per-layer
        decode cache of the previous positions (a decode step; see decode())."""
        if tol is not None:
            state = replace(state, tol=per_row(tol, state.s.shape[0], torch.float32, state.s.device))
        t = state.t + 1
        s, done, iterations, delta, memory = self._core_step(
            state.e, state.s, state.done, state.iterations, state.delta, state.memory, t, state.tol,
            state.max_iters, state.rope, past)
        return replace(state, s=s, done=done, iterations=iterations, delta=delta, memory=memory, t=t)

    def finish(self, state: RecurrentState) -> DepthScaleOutput:
        """Global KV (computed once), cross-decoder and head; reads real-token positions only."""
        k, v = self.global_kv(state.s, state.rope)
        return self.decode_out(state.s, k, v, state.rope, state.iterations)

    def _core_step(self, e, s, done, iterations, delta, memory, t, tol, max_iters, rope, past=None, sparse=None):
        """The body of the recursion, shared by step() and the while_loop. t: int or int64 [] tensor;
        tol float32 [B], max_iters int64 [B]. past: None (the whole sequence), or the decode cache
        (see _past_at). Returns fresh tensors s, done, iterations, delta and the memory used; a done
        token's s, iterations, delta and memory are unchanged.

        Over the active tokens only (_core_step_active) where the model skips done tokens and few enough
        tokens still run (sparse=None: decided from done, dense when exporting; True / False: the caller
        decided); else dense."""
        if self._skips(past, rope):
            if sparse is None:              # exporting step by step (an unrolled graph) cannot branch on data
                sparse = not torch.compiler.is_exporting() and bool(self._sparse(done))
            if sparse:
                return self._core_step_active(e, s, done, iterations, delta, memory, t, tol, max_iters, rope)
        return self._core_step_dense(e, s, done, iterations, delta, memory, t, tol, max_iters, rope, past)

    def _skips(self, past, rope) -> bool:
        """Whether this pass can skip done tokens: a whole-sequence pass of a model computed by active set."""
        return self.active_set and past is None and rope[0].dim() == 2

    def _sparse(self, done: torch.Tensor) -> torch.Tensor:
        """bool []: few enough tokens still run (at most active_crossover of the positions) that the
        active-set step is the faster one."""
        num, den = self.active_crossover
        positions = torch.ones_like(done, dtype=torch.int64).sum()     # a tensor, not done.numel(): a symbolic
        return (~done).sum() * den <= positions * num                   # size torch.export cannot carry into a Loop

    def _core_step_dense(self, e, s, done, iterations, delta, memory, t, tol, max_iters, rope, past=None):
        """_core_step over every position (done ones' results discarded)."""
        u = self.inject(torch.cat([self.inject_norm(s), e], dim=-1))               # [B, n, d]
        used = []
        for i, (block, frozen) in enumerate(zip(self.core, memory)):
            u, layer_memory = block(u, rope, frozen, done, None if past is None else past(i, t))
            used.append(layer_memory)
        s_new = self.core_norm(u)
        delta_new = self._delta(s_new, s)                                          # [B, n]
        stops = self._stops(delta_new, t, tol[:, None], max_iters[:, None])
        return (torch.where(done[..., None], s, s_new), done | stops, torch.where(done, iterations, t),
                torch.where(done, delta, delta_new), tuple(used))

    def _core_step_active(self, e, s, done, iterations, delta, memory, t, tol, max_iters, rope):
        """_core_step over the M tokens still running: gathered [M, d], through the core layers (each
        reading its whole memory, where done tokens hold their frozen K/V), scattered back. The same
        results as the dense step, bit for bit: every op is per token (BitLinear quantises per token and
        its integer products are exact; RMSNorm sums in a fixed order), and attention runs in float64."""
        active = ActiveSet.of(done)
        s_a = active.gather(s)                                                     # [M, d]
        rope_a = (rope[0][active.pos], rope[1][active.pos])                        # [M, dh/2]
        u = self.inject(torch.cat([self.inject_norm(s_a), active.gather(e)], dim=-1))[None]   # [1, M, d]
        used = []
        for block, layer_memory in zip(self.core, memory):
            u, layer_memory = block.forward_active(u, rope_a, layer_memory, active)
            used.append(layer_memory)
        s_new = self.core_norm(u[0])                                               # [M, d]
        delta_new = self._delta(s_new, s_a)                                        # [M]
        stops = self._stops(delta_new, t, tol[active.row], max_iters[active.row])
        return (active.scatter(s, s_new), active.scatter(done, stops),
                torch.where(done, iterations, t), active.scatter(delta, delta_new),
                tuple(used))

    def _delta(self, s_new: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """δ = |s_new - s| / (|s_new| + eps) per token: [..., d] -> [...] (fixed-order sums, exact sqrt)."""
        diff = s_new - s
        return (exact_sqrt(tree_sum(diff * diff)) / (
            exact_sqrt(tree_sum(s_new * s_new)) + self.config.norm_eps)).squeeze(-1)

    def _stops(self, delta: torch.Tensor, t, tol: torch.Tensor, max_iters: torch.Tensor) -> torch.Tensor:
        """Which tokens are done after step t: converged (δ < tol, from min_iters on) or at their row's cap.
        tol, max_iters: per token, or broadcastable to delta."""
        return ((t >= self.config.min_iters) & (delta < tol)) | (t >= max_iters)

    # ---- whole passes ----------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, max_iters=None, tol=None,
                lengths: torch.Tensor | None = None) -> DepthScaleOutput:
        """input_ids int64 [B, N]; max_iters int, or int64 [] or [B] (each row's budget), default
        config.max_iters; tol float, or float32 [] or [B], default config.tol; lengths int64 [B], real
        tokens per row when right-padded (default N). Returns logits [B, N, V], iterations [B, N]
        (padding positions: 0 iterations, logits of no meaning)."""
        max_iters = self.config.max_iters if max_iters is None else max_iters
        state = self.init(input_ids, max_iters, tol, lengths)
        return self.finish(self.recur(state))

    def recur(self, state: RecurrentState, past=None, record=None):
        """Step until every row's budget is spent or every token is done: a Python loop, a truncated
        loop when training, or one while_loop (exporting, or loop="while"). record: see _recur_while.
        Returns the final state (and the records, when asked for)."""
        if self.training and torch.is_grad_enabled():
            return self._recur_truncated(state)
        if self.loop == "while" or (self.loop == "auto" and torch.compiler.is_exporting()):
            return self._recur_while(state, past, record)
        return self._recur_python(state, past, record)

    def _trip(self, state: RecurrentState):
        """The most steps any row may take: max(max_iters), at least 0."""
        return state.max_iters.max().clamp(min=0)

    def _recur_python(self, state: RecurrentState, past=None, record=None, until: int | None = None):
        until = int(self._trip(state)) if until is None else until
        records = None if record is None else record.start(state)
        while state.t < until and not bool(state.done.all()):
            state = self.step(state, past=past)
            if record is not None:
                records = record.write(records, state.memory, state.t)
        return state if record is None else (state, record.finish(records, state.memory, state.t))

    def _recur_truncated(self, state: RecurrentState) -> RecurrentState:
        """Training: the first T - grad_iters steps without autograd, the last grad_iters with it."""
        until = int(self._trip(state))
        with torch.no_grad():
            state = self._recur_python(state, until=max(0, until - self.config.grad_iters))
        state = replace(state, s=state.s.detach(), memory=tuple(tuple(m.detach() for m in layer)
                                                                for layer in state.memory))
        return self._recur_python(state, until=until)

    def _recur_while(self, state: RecurrentState, past=None, record=None):
        """The same recursion as torch while_loops (ONNX Loops on export): one, or where the pass skips done
        tokens two, a dense one while more than active_crossover of the positions run, then an active-set one.

        record: a Recorder that keeps each iteration's memory of some positions (the decode cache's);
        its tensors are carried through the loop."""
        e, rope, tol, max_iters = state.e, state.rope, state.tol, state.max_iters
        trip = self._trip(state)
        shapes = [len(layer) for layer in state.memory]
        records = [] if record is None else list(record.start(state))

        def unflatten(flat):
            it = iter(flat)
            return tuple(tuple(next(it) for _ in range(k)) for k in shapes)

        def loop(carried, sparse: bool, dense_while=None):
            """One while_loop of steps, all active-set (sparse) or all dense; dense_while: a condition on
            done that also has to hold for the next step."""
            def cond(t, s, done, iterations, delta, *rest):
                go = (t < trip) & ~done.all()
                return go if dense_while is None else go & dense_while(done)

            def body(t, s, done, iterations, delta, *rest):
                memory, recs = unflatten(rest[:sum(shapes)]), rest[sum(shapes):]
                t = t + 1
                s, done, iterations, delta, memory = self._core_step(e, s, done, iterations, delta, memory, t,
                                                                      tol, max_iters, rope, past, sparse)
                flat = [m for layer in memory for m in layer]
                if record is not None:
                    recs = record.write(recs, memory, t)
                return (t, s, done, iterations, delta, *flat, *recs)

            return tuple(while_loop(cond, body, carried))

        t0 = torch.zeros((), dtype=torch.int64, device=state.s.device)
        flat = [m for layer in state.memory for m in layer]
        carried = (t0, state.s, state.done, state.iterations, state.delta, *flat, *records)
        if self._skips(past, rope):
            # dense while most tokens run, then active-set: done tokens stay done, so the switch is once
            carried = loop(loop(carried, False, lambda done: ~self._sparse(done)), True)
        else:
            carried = loop(carried, False)
        t, s, done, iterations, delta, *rest = carried
        memory = unflatten(rest[:sum(shapes)])
        state = replace(state, s=s, done=done, iterations=iterations, delta=delta, memory=memory, t=t)
        return state if record is None else (state, record.finish(tuple(rest[sum(shapes):]), memory, t))

    # ---- incremental decoding (depthscale/decode.py) -----------------------------------------------

    def prefill(self, input_ids, lengths=None, max_iters=None, tol=None, capacity=None, cache_iters=None):
        """The whole-sequence pass plus the cache a decode step needs. See depthscale.decode.prefill."""
        from .decode import prefill
        return prefill(self, input_ids, lengths, max_iters, tol, capacity, cache_iters)

    def decode(self, cache, input_ids):
        """The next tokens (int64 [B, c]) against the cache -> (output, new cache). See depthscale.decode.decode."""
        from .decode import decode
        return decode(self, cache, input_ids)

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
