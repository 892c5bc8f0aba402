"""Incremental decoding: prefill(ids) -> cache, decode(cache, next_ids) -> logits, iterations, cache.

Exact: prefill then decode gives the whole-sequence forward's exit iterations and logits for every
position (in all but vanishingly rare float64 roundings), because a done token's memory is frozen
(exit means exit, model.py) and the cache keeps, for every iteration t, the K/V each earlier position
had at iteration min(t, its exit). Shapes: B rows, P = window - 1 (the earlier positions a window
reads), Hkv, dh as the model; T the cache's iterations (max_iters of the generation, or the export's cap);
C the global KV's capacity in positions. Positions count reasoning tokens (1 + R per real token).

The cache (all batch-first, so rows can be dropped or reordered by indexing dim 0):

    prelude    [B, L_p, 2, Hkv, P, dh]     per prelude layer, the last P positions' (k, v), oldest first
    core       [B, L_c, T, 2, Hkv, P, dh]  per core layer and iteration t (index t - 1), the last P
                                           positions' (k, v) as iteration t read them
    global_kv  [B, 2, Hkv, C, dh]          every position's global (k, v) (YOCO), valid below length
    lengths    int64 [B]                   real tokens in the cache per row
    max_iters  int64 [B], tol float32 [B]  each row's budget, the same for the prefill and every step

Window caches are kept in chronological order (a shift register: append the new positions, keep the
last P): a ring buffer would have to be gathered back into order before every attention anyway, as the
summation order must match the whole-sequence pass. Slots before position 0 (a sequence shorter than
P) hold zeros and are never attended (their position is negative). Ragged batches are right-padded with
lengths: padding positions are done from the start, never attended, and overwritten by decode steps.

The retention mixer has no incremental form here: prefill() refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .exact_math import zeros
from .model import DepthScaleModel, DepthScaleOutput, Past


@dataclass
class DecodeCache:
    prelude: torch.Tensor
    core: torch.Tensor
    global_kv: torch.Tensor
    lengths: torch.Tensor
    max_iters: torch.Tensor
    tol: torch.Tensor

    @property
    def capacity(self) -> int:
        """Positions the global KV holds."""
        return self.global_kv.shape[3]

    def select(self, rows: torch.Tensor) -> "DecodeCache":
        """The cache of some rows (int64 indices or a bool mask over dim 0)."""
        return DecodeCache(*(t[rows] for t in (self.prelude, self.core, self.global_kv, self.lengths,
                                                self.max_iters, self.tol)))


def check_decodable(model: DepthScaleModel) -> None:
    """Raise NotImplementedError for a model without an incremental form (the retention mixer)."""
    if model.config.mixer != "window":
        raise NotImplementedError(f"incremental decoding needs the window mixer; this model's mixer is "
                                  f"{model.config.mixer!r} (use the whole-sequence forward)")


def gather_positions(item: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """item [B, heads, n, dh], index int64 [B, m] (positions per row) -> [B, heads, m, dh]."""
    B, heads, _, dh = item.shape
    return torch.gather(item, 2, index[:, None, :, None].expand(B, heads, index.shape[1], dh))


def shift_in(window: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A window cache [..., P, dh] with new positions [..., c, dh] appended, oldest dropped: [..., P, dh]."""
    P = window.shape[-2]
    return torch.cat([window, new], dim=-2)[..., new.shape[-2]:, :] if P else window


class Recorder:
    """Keeps, for iterations t = 1..T, the core memory of some positions at iteration min(t, exit):
    per layer and item a tensor [B, T, heads, m, dh] of the positions index [B, m] (the last P of each
    row in a prefill, every new position in a decode step). Works in the Python loop and, carried as
    loop state, in the while_loop: writes select by comparing t with an arange, no data-dependent index."""

    def __init__(self, index: torch.Tensor | None, iterations: int):
        self.index, self.T = index, iterations

    def _pick(self, memory):
        return [m if self.index is None else gather_positions(m, self.index) for layer in memory for m in layer]

    def _at(self, t, like: torch.Tensor) -> torch.Tensor:
        """bool [1, T, 1, 1, 1]: the slots of iteration t (t int or int64 [] tensor)."""
        return (torch.arange(self.T, device=like.device) == t - 1).view(1, self.T, 1, 1, 1)

    def start(self, state) -> tuple[torch.Tensor, ...]:
        return tuple(m.unsqueeze(1).expand(-1, self.T, -1, -1, -1).clone() for m in self._pick(state.memory))

    def write(self, records, memory, t) -> tuple[torch.Tensor, ...]:
        return tuple(torch.where(self._at(t, r), m.unsqueeze(1), r) for r, m in zip(records, self._pick(memory)))

    def finish(self, records, memory, t) -> tuple[torch.Tensor, ...]:
        """After the loop ended at t: iterations past t hold the final (frozen) memory."""
        later = (torch.arange(self.T, device=records[0].device) >= t).view(1, self.T, 1, 1, 1)
        return tuple(torch.where(later, m.unsqueeze(1), r) for r, m in zip(records, self._pick(memory)))


def _stack_layers(items: list[torch.Tensor], layers: int, axis: int) -> torch.Tensor:
    """[k0, v0, k1, v1, ...] (each [B, ...]) -> [B, layers, ..., 2, ...] with the (k, v) pair at `axis`."""
    pairs = [torch.stack(items[2 * i: 2 * i + 2], dim=axis) for i in range(layers)]
    return torch.stack(pairs, dim=1)


def prefill(model: DepthScaleModel, input_ids: torch.Tensor, lengths: torch.Tensor | None = None, max_iters=None,
            tol=None, capacity: int | None = None, cache_iters: int | None = None
            ) -> tuple[DepthScaleOutput, DecodeCache]:
    """The whole-sequence pass over input_ids int64 [B, N] (right-padded; lengths int64 [B] real tokens,
    default N), plus its decode cache. max_iters, tol: each row's budget (scalars or [B]; default the
    config's), kept in the cache for every later step. capacity: positions the global KV holds (default
    the prompt's; decode() grows it when needed, an exported decode graph cannot). cache_iters: the
    cache's T (default the largest max_iters). Returns (logits [B, N, V], iterations [B, N]) and the cache."""
    check_decodable(model)
    cfg = model.config
    B, N = input_ids.shape
    lengths = torch.full((B,), N, dtype=torch.int64) if lengths is None else lengths.to(torch.int64)
    max_iters = cfg.max_iters if max_iters is None else max_iters
    state, prelude_memory = model._start(input_ids, max_iters, tol, lengths)
    n = state.e.shape[1]
    P = cfg.window - 1
    ends = lengths * (1 + cfg.reason_tokens)                                       # positions per row
    last = (ends[:, None] - P + torch.arange(P)).clamp(min=0)                      # [B, P]
    T = int(state.max_iters.max().clamp(min=0)) if cache_iters is None else cache_iters
    state, records = model.recur(state, record=Recorder(last, T))
    k, v = model.global_kv(state.s, state.rope)
    out = model.decode_out(state.s, k, v, state.rope, state.iterations)
    C = n if capacity is None else capacity
    if C < n:
        raise ValueError(f"capacity ({C} positions) is smaller than the prompt ({n} positions)")
    prelude = [gather_positions(m, last) for layer in prelude_memory for m in layer]
    cache = DecodeCache(
        prelude=_stack_layers(prelude, cfg.prelude_layers, axis=1) if prelude else
        zeros(state.s, B, 0, 2, cfg.n_kv_heads, P, cfg.head_dim),
        core=_stack_layers(list(records), cfg.core_layers, axis=2),
        global_kv=F.pad(torch.stack([k, v], dim=1), (0, 0, 0, C - n)),
        lengths=lengths, max_iters=state.max_iters, tol=state.tol)
    return out, cache


def _core_past(core: torch.Tensor, starts: torch.Tensor, P: int):
    """past(layer, t) for _core_step: core cache [B, L_c, T, 2, Hkv, P, dh] at iteration t (int or tensor)."""
    def past(layer: int, t) -> Past:
        t = torch.as_tensor(t, device=core.device).reshape(1) - 1
        kv = torch.index_select(core[:, layer], 1, t).squeeze(1)                  # [B, 2, Hkv, P, dh]
        return Past(memory=(kv[:, 0], kv[:, 1]), q_start=starts, k_start=starts - P)
    return past


def decode(model: DepthScaleModel, cache: DecodeCache, input_ids: torch.Tensor, return_state: bool = False):
    """The next real tokens input_ids int64 [B, c] (usually c = 1) after each row's cached ones.
    Returns (logits [B, c, V], iterations [B, c]) and the cache with them appended (and, with
    return_state, the recursion's final state: the parity gate's per-iteration check reads its s)."""
    check_decodable(model)
    cfg = model.config
    B = input_ids.shape[0]
    P = cfg.window - 1
    x = model.embed_tokens(input_ids)                                              # [B, c', d]
    c = x.shape[1]
    starts = cache.lengths * (1 + cfg.reason_tokens)                              # first new position per row
    positions = starts[:, None] + torch.arange(c)                                  # [B, c']
    eager = not torch.compiler.is_exporting()
    if eager and int(positions.max()) >= model.rope_cos.shape[0]:
        raise ValueError(f"decoding past max_seq_len ({cfg.max_seq_len} tokens)")
    rope = model.rope_at(positions)
    prelude = []
    for layer, block in enumerate(model.prelude):
        kv = cache.prelude[:, layer]
        x, (k, v) = block(x, rope, past=Past(memory=(kv[:, 0], kv[:, 1]), q_start=starts, k_start=starts - P))
        prelude.append(torch.stack([shift_in(kv[:, 0], k), shift_in(kv[:, 1], v)], dim=1))
    state = model._fresh_state(x, rope, cache.max_iters, cache.tol)
    T = cache.core.shape[2]
    state, records = model.recur(state, past=_core_past(cache.core, starts, P), record=Recorder(None, T))
    new = _stack_layers(list(records), cfg.core_layers, axis=2)                    # [B, L_c, T, 2, Hkv, c', dh]
    k, v = model.global_kv(state.s, rope)
    global_kv = cache.global_kv
    if eager and int(positions.max()) >= global_kv.shape[3]:                       # grow (eager only)
        global_kv = F.pad(global_kv, (0, 0, 0, int(positions.max()) + 1 - global_kv.shape[3]))
    index = positions[:, None, None, :, None].expand(B, 2, cfg.n_kv_heads, c, cfg.head_dim)
    global_kv = global_kv.scatter(3, index, torch.stack([k, v], dim=1))
    out = model.decode_out(state.s, global_kv[:, 0], global_kv[:, 1], rope, state.iterations, q_start=starts)
    cache = replace(cache, prelude=torch.stack(prelude, dim=1) if prelude else cache.prelude,
                    core=shift_in(cache.core, new), global_kv=global_kv, lengths=cache.lengths + input_ids.shape[1])
    return (out, cache, state) if return_state else (out, cache)
