"""Sliding-window causal attention with grouped KV heads, at cost linear in sequence length.

Query i attends to keys j with i - window < j <= i.

  * window >= n (the cross-decoder's case, whose window is max_seq_len): causal attention. Below
    CHUNKED_FROM positions, over one [n, n] score matrix; from there on, the queries go in
    CAUSAL_CHUNKS chunks and chunk i attends only to the keys up to its end, which skips most of
    the masked upper triangle (work (C + 1) / 2C of n², 56% for C = 8) and keeps the float64 score
    tensors to 1/C of [n, n].
  * window < n: the sequence is cut into blocks of b = ceil(window / SUB_BLOCKS) queries; each block
    attends to itself and the SUB_BLOCKS blocks before it, so the work is n · (SUB_BLOCKS + 1) · b ·
    head_dim, about 1.5 · n · window · head_dim, rather than n² · head_dim. (With SUB_BLOCKS = 1 it
    would be 2 · n · window, half of it masked.)

Scores, softmax and the weighted sum run in float64 and round to float32 at the end: torch and ONNX
Runtime order their float32 dot products and exponentials differently, but their float64 results
round to the same float32 value (in all but vanishingly rare cases), which keeps the recurrence
bit-identical across backends (see exact_math.py).

`window_attention` dispatches: with autograd on, the plain-torch function (differentiable);
otherwise the custom op torch.ops.depthscale.window_attention, which the exporter turns into one ONNX
node. Both run the same arithmetic, so their results are identical. The ONNX function body
(depthscale_export.graph.ops.WindowAttention) mirrors this file step for step.

`cached_attention` is the incremental-decoding form: a few new queries against keys given with their
positions (a decode cache's window, or the global KV), one [c, S] score block per row; the custom op
torch.ops.depthscale.cached_attention (ONNX node CachedAttention) runs it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SUB_BLOCKS = 2          # a window spans this many query blocks
CAUSAL_CHUNKS = 8       # full causal attention over n >= CHUNKED_FROM positions: this many query chunks
CHUNKED_FROM = 256


def band_mask(n: int, window: int, device=None) -> torch.Tensor:
    """bool [n, n], True where query i may attend to key j (i - window < j <= i)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= i) & (j > i - window)


def _softmax_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """float64 q [..., m, D], k/v [..., j, D], allowed bool broadcastable to [..., m, j] -> [..., m, D].

    The scale goes on q and the mask is an additive 0 / -inf bias of the mask's own (small) shape:
    fewer elementwise passes over the [..., m, j] scores than scaling and masking them."""
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def blocked_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q [B, H, n, D], k/v [B, Hkv, n, D] (H divisible by Hkv), float32, float16 or bfloat16 -> [B, H, n, D]
    in q's dtype."""
    B, H, n, D = q.shape
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    group = H // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if window >= n:                                                # full causal attention
        pos = torch.arange(n, device=q.device)
        if n < CHUNKED_FROM:
            return _softmax_attend(q, k, v, pos[None, :] <= pos[:, None]).to(dtype)
        c = -(-n // CAUSAL_CHUNKS)                                  # chunk size; every chunk is non-empty
        chunks = []
        for i in range(CAUSAL_CHUNKS):
            end = min((i + 1) * c, n)                              # chunk i: queries i·c..end-1, keys 0..end-1
            allowed = pos[None, :end] <= pos[i * c:end, None]
            chunks.append(_softmax_attend(q[:, :, i * c:end], k[:, :, :end], v[:, :, :end], allowed))
        return torch.cat(chunks, dim=2).to(dtype)
    R = SUB_BLOCKS
    b = -(-window // R)                                            # block size
    nb = -(-n // b)                                                # number of blocks
    pad = nb * b - n
    qb = F.pad(q, (0, 0, 0, pad)).reshape(B, H, nb, b, D)
    kp = F.pad(k, (0, 0, R * b, pad)).reshape(B, H, nb + R, b, D)  # R zero blocks in front
    vp = F.pad(v, (0, 0, R * b, pad)).reshape(B, H, nb + R, b, D)
    idx = (torch.arange(nb, device=q.device)[:, None] + torch.arange(R + 1, device=q.device)).reshape(-1)
    kb = kp[:, :, idx].reshape(B, H, nb, (R + 1) * b, D)          # query block m: key blocks m-R..m
    vb = vp[:, :, idx].reshape(B, H, nb, (R + 1) * b, D)
    # query position blk*b + i, key position (blk - R)*b + j
    i = torch.arange(b, device=q.device)[:, None]
    j = torch.arange((R + 1) * b, device=q.device)[None, :]
    dist = i - j + R * b                                           # query pos - key pos
    blk = torch.arange(nb, device=q.device)[:, None, None]
    allowed = ((dist >= 0) & (dist < window))[None] & (j[None] >= (R - blk) * b)   # [nb, b, (R+1)b]
    out = _softmax_attend(qb, kb, vb, allowed)                     # [B, H, nb, b, D]
    return out.reshape(B, H, nb * b, D)[:, :, :n].to(dtype)


def positioned_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: torch.Tensor,
                         k_start: torch.Tensor, window: int) -> torch.Tensor:
    """q [B, H, c, D], k/v [B, Hkv, S, D]; query i of row b sits at position q_start[b] + i and key j at
    k_start[b] + j (q_start, k_start int64 [B]). Query i attends to key j iff 0 <= qpos - kpos < window and
    kpos >= 0 (keys at negative positions are empty cache slots). Float64 inside, as
    blocked_window_attention: the same float32 result as the whole-sequence pass gives those queries
    (in all but vanishingly rare cases). Returns [B, H, c, D] in q's dtype."""
    B, H, c, D = q.shape
    S = k.shape[2]
    group = H // k.shape[1]
    qpos = q_start[:, None] + torch.arange(c, device=q.device)                  # [B, c]
    kpos = k_start[:, None] + torch.arange(S, device=q.device)                  # [B, S]
    dist = qpos[:, :, None] - kpos[:, None, :]                                  # [B, c, S]
    allowed = (dist >= 0) & (dist < window) & (kpos[:, None, :] >= 0)
    out = _softmax_attend(q.double(), k.double().repeat_interleave(group, dim=1),
                          v.double().repeat_interleave(group, dim=1), allowed[:, None])
    return out.to(q.dtype)


@torch.library.custom_op("depthscale::cached_attention", mutates_args=())
def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: torch.Tensor,
                     k_start: torch.Tensor, window: int) -> torch.Tensor:
    """Custom-op form of positioned_attention (same contract)."""
    return positioned_attention(q, k, v, q_start, k_start, window)


@cached_attention.register_fake
def _(q, k, v, q_start, k_start, window):
    return torch.empty_like(q)


@torch.library.custom_op("depthscale::window_attention", mutates_args=())
def window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Custom-op form of blocked_window_attention (same contract)."""
    return blocked_window_attention(q, k, v, window)


@window_attention_op.register_fake
def _(q, k, v, window):
    return torch.empty_like(q)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Differentiable plain-torch path under autograd; the custom op otherwise (always when exporting)."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad and not torch.compiler.is_exporting():
        return blocked_window_attention(q, k, v, window)
    return window_attention_op(q, k, v, window)
