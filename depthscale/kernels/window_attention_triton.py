"""Sliding-window causal attention in Triton (flash-style online softmax), linear in sequence length.

Each program takes BM queries of one (batch, head) and visits only the key blocks inside
[first query - window + 1, last query]: O(n · window) work. float32 throughout (the eager op uses
float64 inside; results agree to float32 rounding, not to the bit).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def window_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, H, HKV, N, window, scale,
                            D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    kvh = h // (H // HKV)
    q_base = q_ptr + (b * H + h) * N * D
    kv_off = (b * HKV + kvh) * N * D
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rd = tl.arange(0, D)
    q = tl.load(q_base + rm[:, None] * D + rd[None, :], mask=rm[:, None] < N, other=0.0)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, D), tl.float32)
    q_lo = tl.program_id(1) * BM
    lo = tl.maximum(q_lo - window + 1, 0) // BN * BN
    hi = tl.minimum(q_lo + BM, N)
    for start in range(lo, hi, BN):
        rn = start + tl.arange(0, BN)
        kmask = rn[:, None] < N
        k = tl.load(k_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0)
        v = tl.load(v_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale                                     # [BM, BN]
        dist = rm[:, None] - rn[None, :]
        s = tl.where((dist >= 0) & (dist < window) & (rn[None, :] < N), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                # rows with no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new
    tl.store(o_ptr + (b * H + h) * N * D + rm[:, None] * D + rd[None, :], acc / l_i[:, None], mask=rm[:, None] < N)


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.window_attention: q [B,H,n,D], k/v [B,Hkv,n,D] float32."""
    B, H, N, D = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    BM = BN = 16
    window_attention_kernel[(B * H, triton.cdiv(N, BM))](q, k, v, out, H, k.shape[1], N, window,
                                                         1.0 / math.sqrt(D), D=D, BM=BM, BN=BN)
    return out
