"""Sliding-window causal attention with grouped KV heads, at cost linear in sequence length.

Query i attends to keys j with i - window < j <= i. The sequence is cut into blocks of
b = min(window, n) queries; each block attends to itself and the block before it, so the work is
n · 2b · head_dim rather than n² · head_dim.

Scores, softmax and the weighted sum run in float64 and round to float32 at the end: torch and ONNX
Runtime order their float32 dot products and exponentials differently, but their float64 results
round to the same float32 value (in all but vanishingly rare cases), which keeps the recurrence
bit-identical across backends (see exact_math.py). Cross-decoder attention is this op with a window
of at least n, i.e. full causal attention.

`window_attention` dispatches: with autograd on, the plain-torch function (differentiable);
otherwise the custom op torch.ops.depthscale.window_attention, which the exporter turns into one ONNX
node. Both run the same arithmetic, so their results are identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def band_mask(n: int, window: int, device=None) -> torch.Tensor:
    """bool [n, n], True where query i may attend to key j (i - window < j <= i)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= i) & (j > i - window)


def blocked_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q [B, H, n, D], k/v [B, Hkv, n, D] float32 (H divisible by Hkv) -> [B, H, n, D] float32."""
    B, H, n, D = q.shape
    q, k, v = q.double(), k.double(), v.double()
    group = H // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    b = min(window, n)                                             # block size
    nb = -(-n // b)                                                # number of blocks
    pad = nb * b - n
    qb = F.pad(q, (0, 0, 0, pad)).reshape(B, H, nb, b, D)
    kp = F.pad(k, (0, 0, b, pad)).reshape(B, H, nb + 1, b, D)     # a zero block in front
    vp = F.pad(v, (0, 0, b, pad)).reshape(B, H, nb + 1, b, D)
    kb = torch.cat([kp[:, :, :-1], kp[:, :, 1:]], dim=3)           # [B, H, nb, 2b, D] previous + own
    vb = torch.cat([vp[:, :, :-1], vp[:, :, 1:]], dim=3)
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # [B, H, nb, b, 2b]
    # query position blk*b + i, key position blk*b - b + j
    i = torch.arange(b, device=q.device)[:, None]
    j = torch.arange(2 * b, device=q.device)[None, :]
    dist = i - j + b                                               # query pos - key pos
    allowed = (dist >= 0) & (dist < window)                        # [b, 2b]
    blk = torch.arange(nb, device=q.device)[:, None, None]
    allowed = allowed[None] & ((blk > 0) | (j >= b)[None])         # [nb, b, 2b] no keys before 0
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vb)                                  # [B, H, nb, b, D]
    return out.reshape(B, H, nb * b, D)[:, :, :n].float()


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
