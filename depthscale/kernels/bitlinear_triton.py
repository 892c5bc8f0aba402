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
