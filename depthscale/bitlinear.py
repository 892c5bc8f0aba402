"""BitLinear (BitNet b1.58): ternary weights with a per-tensor scale, int8 per-token activations.

Three forms of one linear, all computing y = (x_q · W_tᵀ) · γ / s  (DESIGN §1):
  * training:  straight-through estimator over fake-quantised x and W (gradients reach the float W);
  * eval:      the integer-valued path, ternarising the float W on the fly;
  * packed:    the deployed form, W_t stored 2 bits per weight plus γ, run by the custom op
               torch.ops.depthscale.bitlinear (the exporter turns it into one ONNX node).
Eval and packed give bit-identical results: unpack(pack(W_t)) == W_t and the arithmetic is shared.

Integer-valued products are accumulated in float32. They are exact (|x_q| ≤ 128, |W_t| ≤ 1, so every
partial sum is an integer below 2^24 for in_features < 131072) and so independent of summation order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .exact_math import exact_exp

ACT_MAX = 127.0
EPS = 1e-5


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w float [out, in] -> (W_t int8 [out, in] in {-1, 0, 1}, γ float32 [] = mean|w|).

    The mean is taken in float64 and rounded once, so γ does not depend on how many threads summed it
    (a float32 mean does: one ulp of γ changes every output of the layer)."""
    gamma = w.detach().double().abs().mean().float().clamp(min=EPS)
    w_t = (w.detach().float() / gamma).round().clamp(-1, 1).to(torch.int8)
    return w_t, gamma


def pack_ternary(w_t: torch.Tensor) -> torch.Tensor:
    """W_t int8 [out, in] in {-1,0,1} -> uint8 [out, ceil(in/4)].

    Code c = w + 1 in {0, 1, 2}; element 4j+i sits in bits 2i..2i+1 of byte j. Padding codes mean 0.
    """
    out_f, in_f = w_t.shape
    pad = (-in_f) % 4
    codes = (w_t.to(torch.int16) + 1)
    codes = F.pad(codes, (0, pad), value=1).view(out_f, -1, 4)
    packed = codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)
    return packed.to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 [out, ceil(in/4)] -> W_t float32 [out, in] in {-1, 0, 1} (the inverse of pack_ternary)."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 3                   # [out, in/4, 4]
    w = codes.reshape(packed.shape[0], -1)[:, :in_features]
    return w.to(torch.float32) - 1.0


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [..., in] -> (x_q float32 [..., in], integer-valued in [-128, 127]; s float32 [..., 1]).

    s = 127 / max|x| per token (x ≈ x_q / s).
    """
    amax = x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    s = torch.reciprocal(amax) * ACT_MAX
    x_q = (x * s).round().clamp(-128.0, 127.0)
    return x_q, s


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """x float32 [..., 2k] = (a, b) -> silu(a) · b float32 [..., k], as a · (1 / (1 + exp(-a))) · b.

    Every op is correctly rounded float32 except exp, which goes through float64 (exact_math.exact_exp),
    so every backend gets the same bits; the GatedBitLinear function body runs the same ops in the
    same order."""
    a, b = x.chunk(2, dim=-1)
    return a * torch.reciprocal(exact_exp(-a) + 1.0) * b


def bitlinear_int(x: torch.Tensor, w_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The integer-valued BitLinear: x float [..., in], W_t float [out, in] ternary, γ [] -> [..., out]."""
    x_q, s = quantize_activations(x)
    acc = torch.matmul(x_q, w_t.t())                              # exact integers in float32
    return acc * (gamma / s)


@torch.library.custom_op("depthscale::bitlinear", mutates_args=())
def bitlinear_op(x: torch.Tensor, w_packed: torch.Tensor, gamma: torch.Tensor, in_features: int) -> torch.Tensor:
    """Packed BitLinear: x [..., in] float32, float16 or bfloat16, w_packed uint8 [out, ceil(in/4)], γ float32 []
    -> [..., out] in x's dtype. Computed in float32 whatever x's dtype (a half-precision model rounds only
    the result)."""
    return bitlinear_int(x.float(), unpack_ternary(w_packed, in_features), gamma).to(x.dtype)


@bitlinear_op.register_fake
def _(x, w_packed, gamma, in_features):
    return x.new_empty((*x.shape[:-1], w_packed.shape[0]))


@torch.library.custom_op("depthscale::gated_bitlinear", mutates_args=())
def gated_bitlinear_op(x: torch.Tensor, w_packed: torch.Tensor, gamma: torch.Tensor, in_features: int) -> torch.Tensor:
    """BitLinear over swiglu(x): x [..., 2·in] -> [..., out] (the FFN's down projection); dtypes and float32
    inside as bitlinear_op."""
    return bitlinear_int(swiglu(x.float()), unpack_ternary(w_packed, in_features), gamma).to(x.dtype)


@gated_bitlinear_op.register_fake
def _(x, w_packed, gamma, in_features):
    return x.new_empty((*x.shape[:-1], w_packed.shape[0]))


class BitLinear(nn.Module):
    """A bias-free BitNet b1.58 linear: in_features -> out_features; float weight, quantised use.
    gated=True takes [..., 2·in_features] and applies swiglu first (fused into one op when packed)."""

    def __init__(self, in_features: int, out_features: int, gated: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.gated = in_features, out_features, gated
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=in_features ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            x = swiglu(x)
        if self.training and torch.is_grad_enabled():
            # straight-through estimator: forward the quantised values, backward the identity
            x_q, s = quantize_activations(x)
            x_ste = x + (x_q / s - x).detach()
            w_t, gamma = ternarize(self.weight)
            w_ste = self.weight + (w_t.float() * gamma - self.weight).detach()
            return F.linear(x_ste, w_ste)
        w_t, gamma = ternarize(self.weight)
        return bitlinear_int(x, w_t.float(), gamma)

    def packed(self) -> "PackedBitLinear":
        w_t, gamma = ternarize(self.weight)
        return PackedBitLinear(pack_ternary(w_t), gamma, self.in_features, self.gated)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gated={self.gated}"


class PackedBitLinear(nn.Module):
    """The deployed BitLinear: 2-bit packed ternary weight + γ, inference only, one custom op."""

    def __init__(self, w_packed: torch.Tensor, gamma: torch.Tensor, in_features: int, gated: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.gated = in_features, w_packed.shape[0], gated
        self.register_buffer("w_packed", w_packed)
        self.register_buffer("gamma", gamma.reshape(()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = gated_bitlinear_op if self.gated else bitlinear_op
        return op(x, self.w_packed, self.gamma, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gated={self.gated}, bits=2"


class GatedLinear(nn.Linear):
    """The float counterpart of BitLinear(gated=True): swiglu, then a bias-free linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(swiglu(x))


def make_linear(in_features: int, out_features: int, bitnet: bool, gated: bool = False) -> nn.Module:
    """BitLinear when the model is BitNet, else a bias-free float linear; gated: swiglu first."""
    if bitnet:
        return BitLinear(in_features, out_features, gated)
    lin = (GatedLinear if gated else nn.Linear)(in_features, out_features, bias=False)
    nn.init.normal_(lin.weight, std=in_features ** -0.5)
    return lin
