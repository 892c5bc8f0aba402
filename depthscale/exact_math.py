"""Arithmetic that gives the same bits in eager PyTorch and in ONNX Runtime.

A BitNet recurrence amplifies the last bit: int8 activation rounding turns a 1-ulp difference into a
1/127 jump, and the next iterations carry it on. So every float op on the way to a quantiser is one
that both backends compute identically:
  * tree_sum: a reduction in a fixed order (halves added pairwise), not a library reduction whose
    order depends on the backend and the vector width;
  * exact_sqrt: the correctly rounded square root. ONNX Runtime's Sqrt is; torch's vectorised CPU
    sqrt is not (it is within 1 ulp), so eager goes through float64, which rounds to the correctly
    rounded float32 result. The exported graph holds a plain float Sqrt;
  * exact_exp: exp through float64, rounded once to float32. Neither torch's nor ONNX Runtime's float32
    exp is correctly rounded, and they differ; their float64 results round to the same float32 in all
    but vanishingly rare cases. The exported graph holds the same Cast / Exp / Cast;
  * add, sub, mul, div, reciprocal, max, where: correctly rounded or exact everywhere;
  * exact_linear: a float linear layer (the head) computed in float64 and rounded once, which also makes
    its result independent of how many rows it has (a float32 matmul's summation order depends on that:
    1 row in a decode step, n in a whole pass). It is a custom op (ONNX node ExactLinear) so that TensorRT,
    which has no float64, runs it as a plugin instead of lowering it to float32;
  * zeros: made in float32 and cast, so a half-precision export holds a float32 ConstantOfShape (which
    every opset and TensorRT take) and a Cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim in a fixed pairwise order: [..., d] -> [..., 1]."""
    d = x.shape[-1]
    width = 1 << max(0, (d - 1).bit_length())
    if width != d:
        x = F.pad(x, (0, width - d))
    while width > 1:
        width //= 2
        x = x[..., :width] + x[..., width:]
    return x


def exact_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root (what IEEE, ONNX Runtime and CUDA sqrtf give)."""
    if torch.compiler.is_exporting() or x.dtype != torch.float32:
        return torch.sqrt(x)
    return torch.sqrt(x.double()).float()


def exact_exp(x: torch.Tensor) -> torch.Tensor:
    """exp of a float32 tensor, computed in float64 and rounded once (the same float32 on every backend)."""
    if x.dtype != torch.float32:
        return torch.exp(x)
    return torch.exp(x.double()).float()


def zeros(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """Zeros of `shape` in like's dtype and device."""
    return torch.zeros(*shape, dtype=torch.float32, device=like.device).to(like.dtype)


@torch.library.custom_op("depthscale::exact_linear", mutates_args=())
def exact_linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., in], w [out, in] (float32, float16 or bfloat16) -> [..., out] in x's dtype: x · wᵀ in float64,
    rounded once."""
    return F.linear(x.double(), w.double()).to(x.dtype)


@exact_linear_op.register_fake
def _(x, w):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def exact_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Differentiable plain-torch path under autograd; the custom op otherwise (always when exporting)."""
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) and not torch.compiler.is_exporting():
        return F.linear(x.double(), w.double()).to(x.dtype)
    return exact_linear_op(x, w)
