"""Sliding-window causal attention in Triton (flash-style online softmax), linear in sequence length.

Each program takes BM queries of one (batch, head) and visits only the key blocks inside
[first query - window + 1, last query]: O(n · window) work (O(n²/2) for a full window, the
cross-decoder's case). F64=True computes in float64 as the eager op does, so results round to the same
float32 (or half) values in all but rare cases (launched without FMA contraction, so each op rounds
as in the eager op); F64=False is float32 throughout (dot products in IEEE float32, not TF32) and
agrees to about 1e-6. Arguments in the order a TensorRT AOT plugin passes them:
inputs, int32 scalars, outputs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def window_attention_kernel(q_ptr, k_ptr, v_ptr, H, HKV, N, window, o_ptr,
                            D: tl.constexpr, SCALE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            F64: tl.constexpr):
    """q [B, H, N, D], k/v [B, HKV, N, D] (any float dtype) -> o [B, H, N, D] (o's dtype); SCALE = 1/sqrt(D)."""
    acc_t = tl.float64 if F64 else tl.float32
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    kvh = h // (H // HKV)
    q_base = q_ptr + (b * H + h) * N * D
    kv_off = (b * HKV + kvh) * N * D
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rd = tl.arange(0, D)
    q = tl.load(q_base + rm[:, None] * D + rd[None, :], mask=rm[:, None] < N, other=0.0).to(acc_t) * SCALE
    m_i = tl.full((BM,), float("-inf"), acc_t)
    l_i = tl.zeros((BM,), acc_t)
    acc = tl.zeros((BM, D), acc_t)
    q_lo = tl.program_id(1) * BM
    lo = tl.maximum(q_lo - window + 1, 0) // BN * BN
    hi = tl.minimum(q_lo + BM, N)
    for start in range(lo, hi, BN):
        rn = start + tl.arange(0, BN)
        kmask = rn[:, None] < N
        k = tl.load(k_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0).to(acc_t)
        v = tl.load(v_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0).to(acc_t)
        s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=acc_t)         # [BM, BN]
        dist = rm[:, None] - rn[None, :]
        s = tl.where((dist >= 0) & (dist < window) & (rn[None, :] < N), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                # rows with no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee", out_dtype=acc_t)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + (b * H + h) * N * D + rm[:, None] * D + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rm[:, None] < N)


BLOCKS = dict(BM=16, BN=16)


def window_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                            f64: bool = True) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.window_attention: q [B,H,n,D], k/v [B,Hkv,n,D], result in
    q's dtype. f64 (the default) computes as the eager op does; f64=False trades that for speed."""
    B, H, N, D = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    window_attention_kernel[(B * H, triton.cdiv(N, BLOCKS["BM"]))](
        q, k, v, H, k.shape[1], N, window, out, D=D, SCALE=1.0 / math.sqrt(D), F64=f64, enable_fp_fusion=not f64,
        **BLOCKS)
    return out
