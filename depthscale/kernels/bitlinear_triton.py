"""BitLinear in Triton: int8 activations x 2-bit packed ternary weights, int32 accumulation.

y = acc · (γ / s) with acc = x_q · W_tᵀ, exactly as depthscale.bitlinear.bitlinear_int (the
accumulator is an exact integer there too), so results are bit-identical to the eager op.
Weights stay packed in memory ([out, ceil(in/4)] uint8): each kernel unpacks its tile in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..bitlinear import quantize_activations


@triton.jit
def _unpack_tile(w_ptr, rn, rk, N, K, K4):
    """Ternary int8 tile [BK, BN] of W_tᵀ from the packed weight (element k in bits 2(k%4))."""
    mask = (rn[None, :] < N) & (rk[:, None] < K)
    byte = tl.load(w_ptr + rn[None, :] * K4 + rk[:, None] // 4, mask=mask, other=85)   # 85: four zeros
    code = (byte >> ((rk[:, None] % 4) * 2).to(tl.uint8)) & 3
    return code.to(tl.int8) - 1


@triton.jit
def bitlinear_prefill_kernel(x_ptr, w_ptr, acc_ptr, M, N, K, K4,
                             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc int32 [M, N] = x int8 [M, K] · W_tᵀ, tiled BM x BN over the output."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)
        acc += tl.dot(x, _unpack_tile(w_ptr, rn, rk, N, K, K4))
    tl.store(acc_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def bitlinear_decode_kernel(x_ptr, w_ptr, acc_ptr, N, K, K4, BN: tl.constexpr, BK: tl.constexpr):
    """acc int32 [N] = W_t · x for one token x int8 [K] (a GEMV: bandwidth-bound on the 2-bit weights)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros((BN,), dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rk, mask=rk < K, other=0).to(tl.int32)
        w = _unpack_tile(w_ptr, rn, rk, N, K, K4).to(tl.int32)             # [BK, BN]
        acc += tl.sum(w * x[:, None], axis=0)
    tl.store(acc_ptr + rn, acc, mask=rn < N)


def bitlinear_triton(x: torch.Tensor, w_packed: torch.Tensor, gamma: torch.Tensor, in_features: int) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.bitlinear: x float32 [..., in] -> [..., out]."""
    x_q, s = quantize_activations(x)
    lead = x.shape[:-1]
    x_i8 = x_q.reshape(-1, in_features).to(torch.int8).contiguous()
    M, K = x_i8.shape
    N, K4 = w_packed.shape
    acc = torch.empty((M, N), dtype=torch.int32, device=x.device)
    if M == 1:
        bitlinear_decode_kernel[(triton.cdiv(N, 64),)](x_i8, w_packed, acc, N, K, K4, BN=64, BK=64)
    else:
        bitlinear_prefill_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 32))](
            x_i8, w_packed, acc, M, N, K, K4, BM=32, BN=32, BK=32)
    return acc.to(torch.float32).reshape(*lead, N) * (gamma / s)


# ---- one fused kernel per BitLinear call: the form a TensorRT AOT plugin launches (no torch around it) ----

@triton.jit
def _round_half_even(v):
    """torch.round on float32 (ties to even), from exact ops only."""
    f = tl.floor(v)
    d = v - f
    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + (f - 2.0 * tl.floor(f * 0.5))))


@triton.jit
def _input_tile(x_ptr, rm, rk, M, K, GATED: tl.constexpr):
    """float32 [BM, BK] tile of BitLinear's input: x itself ([M, K]), or for GATED swiglu(x) from
    x = [a, b] ([M, 2K]) as depthscale.bitlinear.swiglu computes it: a · (1 / (exp(-a) + 1)) · b with
    the exp in float64."""
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    if GATED:
        a = tl.load(x_ptr + rm[:, None] * (2 * K) + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + rm[:, None] * (2 * K) + K + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        e = tl.exp((-a).to(tl.float64)).to(tl.float32)
        return a * tl.math.div_rn(tl.full(a.shape, 1.0, tl.float32), e + 1.0) * b
    return tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def bitlinear_fused_kernel(x_ptr, w_ptr, g_ptr, M, N, K, K4, y_ptr,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr):
    """y [M, N] (y's dtype) = BitLinear of x [M, K] (or GatedBitLinear of x [M, 2K]), any float dtype,
    with packed W [N, K4] uint8 and γ float32 [1]; the arithmetic of depthscale.bitlinear.bitlinear_int
    (per-token absmax, int8, exact int32 product), so results are bit-identical to the eager op.
    Arguments in the order a TensorRT AOT plugin passes them: inputs, int32 scalars, outputs.
    Compile it with enable_fp_fusion=False: a fused multiply-add in the quantiser (x·s - floor(x·s))
    would round differently from the eager op's separate multiply and subtract."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    amax = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(0, K, BK):                                         # pass 1: per-token absmax
        h = _input_tile(x_ptr, rm, k0 + tl.arange(0, BK), M, K, GATED)
        amax = tl.maximum(amax, tl.max(tl.abs(h), axis=1))
    s = tl.math.div_rn(tl.full((BM,), 1.0, tl.float32), tl.maximum(amax, 1e-5)) * 127.0
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):                                         # pass 2: int8 x ternary, int32
        rk = k0 + tl.arange(0, BK)
        h = _input_tile(x_ptr, rm, rk, M, K, GATED)
        q = tl.minimum(tl.maximum(_round_half_even(h * s[:, None]), -128.0), 127.0).to(tl.int8)
        acc += tl.dot(q, _unpack_tile(w_ptr, rn, rk, N, K, K4))
    scale = tl.math.div_rn(tl.load(g_ptr + tl.zeros((BM,), dtype=tl.int32)), s)
    y = acc.to(tl.float32) * scale[:, None]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


FUSED_BLOCKS = dict(BM=16, BN=64, BK=64)    # BM 16: tl.dot's minimum, also the decode (one-token) shape


def bitlinear_fused(x: torch.Tensor, w_packed: torch.Tensor, gamma: torch.Tensor, in_features: int,
                    gated: bool = False) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.bitlinear (gated: gated_bitlinear) in one kernel launch:
    x [..., in] (gated [..., 2·in]) float32/float16/bfloat16 -> [..., out] in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, (N, K4) = x2.shape[0], w_packed.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, FUSED_BLOCKS["BM"]), triton.cdiv(N, FUSED_BLOCKS["BN"]))
    bitlinear_fused_kernel[grid](x2, w_packed, gamma.reshape(1).float(), M, N, in_features, K4, y,
                                 GATED=gated, enable_fp_fusion=False, **FUSED_BLOCKS)
    return y.reshape(*lead, N)
