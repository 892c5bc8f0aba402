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
  * add, sub, mul, div, reciprocal, max, where: correctly rounded or exact everywhere.
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
