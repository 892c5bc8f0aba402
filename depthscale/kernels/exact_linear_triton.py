"""The head (depthscale.exact_math.exact_linear) in Triton: y = x · wᵀ accumulated in float64 and rounded
once to y's dtype, so results round to the eager op's values in all but vanishingly rare cases. Arguments
in the order a TensorRT plugin passes them: inputs, int32 scalars, outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def exact_linear_kernel(x_ptr, w_ptr, M, N, K, y_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """x [M, K], w [N, K] (any float dtype) -> y [M, N] (y's dtype), tiled BM x BN over the output."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float64)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc += tl.dot(x.to(tl.float64), tl.trans(w.to(tl.float64)), input_precision="ieee", out_dtype=tl.float64)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


BLOCKS = dict(BM=16, BN=16, BK=16)


def exact_linear_triton(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Same contract as torch.ops.depthscale.exact_linear: x [..., in], w [out, in] -> [..., out] in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, K = x2.shape
    N = w.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, BLOCKS["BM"]), triton.cdiv(N, BLOCKS["BN"]))
    exact_linear_kernel[grid](x2, w.contiguous(), M, N, K, y, enable_fp_fusion=False, **BLOCKS)
    return y.reshape(*lead, N)
