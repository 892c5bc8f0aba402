"""Sliding-window causal attention in Triton (flash-style online softmax), linear in sequence length;
and its positioned form (cached_attention_kernel: new queries against keys given with their positions,
what a decode step runs), which shares the inner loop.

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
def _attend(q, k_ptr, v_ptr, kv_off, qpos, k_start, lo, hi, NK, window, D: tl.constexpr, BN: tl.constexpr,
            acc_t: tl.constexpr):
    """Online softmax of q [BM, D] (scaled; query i at position qpos[i]) over keys lo..hi-1 of one (batch,
    KV head) at kv_off, key j at position k_start + j; key j is read iff 0 <= qpos - kpos < window, kpos >= 0
    and j < NK. Returns [BM, D] in acc_t."""
    BM: tl.constexpr = q.shape[0]
    rd = tl.arange(0, D)
    m_i = tl.full((BM,), float("-inf"), acc_t)
    l_i = tl.zeros((BM,), acc_t)
    acc = tl.zeros((BM, D), acc_t)
    for start in range(lo, hi, BN):
        rn = start + tl.arange(0, BN)
        kmask = rn[:, None] < NK
        k = tl.load(k_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0).to(acc_t)
        v = tl.load(v_ptr + kv_off + rn[:, None] * D + rd[None, :], mask=kmask, other=0.0).to(acc_t)
        s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=acc_t)         # [BM, BN]
        kpos = k_start + rn
        dist = qpos[:, None] - kpos[None, :]
        s = tl.where((dist >= 0) & (dist < window) & (kpos[None, :] >= 0) & (rn[None, :] < NK), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                # rows with no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee", out_dtype=acc_t)
        m_i = m_new
    return acc / l_i[:, None]


@triton.jit
def window_attention_kernel(q_ptr, k_ptr, v_ptr, H, HKV, N, window, o_ptr,
                            D: tl.constexpr, SCALE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            F64: tl.constexpr):
    """q [B, H, N, D], k/v [B, HKV, N, D] (any float dtype) -> o [B, H, N, D] (o's dtype); SCALE = 1/sqrt(D)."""
    acc_t = tl.float64 if F64 else tl.float32
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    kvh = h // (H // HKV)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rd = tl.arange(0, D)
    q = tl.load(q_ptr + (b * H + h) * N * D + rm[:, None] * D + rd[None, :], mask=rm[:, None] < N,
                other=0.0).to(acc_t) * SCALE
    q_lo = tl.program_id(1) * BM
    lo = tl.maximum(q_lo - window + 1, 0) // BN * BN
    hi = tl.minimum(q_lo + BM, N)
    out = _attend(q, k_ptr, v_ptr, (b * HKV + kvh) * N * D, rm, 0, lo, hi, N, window, D, BN, acc_t)
    tl.store(o_ptr + (b * H + h) * N * D + rm[:, None] * D + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rm[:, None] < N)


@triton.jit
def cached_attention_kernel(q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, H, HKV, NQ, NK, window, o_ptr,
                            D: tl.constexpr, SCALE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """depthscale.window_attention.positioned_attention in float64: q [B, H, NQ, D] with query i of row b
    at position qs[b] + i, k/v [B, HKV, NK, D] with key j at ks[b] + j (qs, ks int64 [B]) -> o [B, H, NQ, D]."""
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    kvh = h // (H // HKV)
    q_start = tl.load(qs_ptr + b)
    k_start = tl.load(ks_ptr + b)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rd = tl.arange(0, D)
    q = tl.load(q_ptr + (b * H + h) * NQ * D + rm[:, None] * D + rd[None, :], mask=rm[:, None] < NQ,
                other=0.0).to(tl.float64) * SCALE
    first = q_start + tl.program_id(1) * BM                          # position of this block's first query
    lo = tl.maximum(first - window + 1 - k_start, 0) // BN * BN
    hi = tl.minimum(first + BM - k_start, NK)
    out = _attend(q, k_ptr, v_ptr, (b * HKV + kvh) * NK * D, q_start + rm, k_start, lo, hi, NK, window, D, BN,
                  tl.float64)
    tl.store(o_ptr + (b * H + h) * NQ * D + rm[:, None] * D + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rm[:, None] < NQ)


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


def cached_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: torch.Tensor,
                            k_start: torch.Tensor, window: int) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.cached_attention: q [B,H,c,D], k/v [B,Hkv,S,D], q_start and
    k_start int64 [B]; the result in q's dtype, computed in float64 as the eager op does."""
    B, H, NQ, D = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    cached_attention_kernel[(B * H, triton.cdiv(NQ, BLOCKS["BM"]))](
        q, k, v, q_start.contiguous(), k_start.contiguous(), H, k.shape[1], NQ, k.shape[2], window, out, D=D,
        SCALE=1.0 / math.sqrt(D), enable_fp_fusion=False, **BLOCKS)
    return out
