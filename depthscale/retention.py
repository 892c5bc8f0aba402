"""Gated retention (YOCO's GateRetention), the alternative token mixer, in its parallel form.

Per head, a data-dependent decay γ_n = exp(logsigmoid(x_n W_γ) / 16);
S_n = γ_n S_{n-1} + k_nᵀ v_n and o_n = q_n S_n, i.e. o = ((q kᵀ) ⊙ D) v with
D[n, m] = Π_{i=m+1..n} γ_i for m <= n, else 0. A per-head RMS norm and a swish gate follow.

Everything after the (integer-exact) BitLinear projections and RoPE runs in float64 and is rounded to
float32 once, before the output projection: like window attention (window_attention.py), this keeps
eager PyTorch and ONNX Runtime bit-identical in all but vanishingly rare cases, which a BitNet
recurrence needs (exact_math.py). The exported graph therefore holds float64 ops for this mixer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bitlinear import make_linear
from .rope import apply_rope


class GatedRetention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bitnet: bool, eps: float):
        super().__init__()
        self.h, self.h_kv, self.dh, self.eps = n_heads, n_kv_heads, d_model // n_heads, eps
        self.qkv = make_linear(d_model, (n_heads + 2 * n_kv_heads) * self.dh, bitnet)
        self.gate = make_linear(d_model, d_model, bitnet)
        self.decay = nn.Linear(d_model, n_heads, bias=True)        # W_γ, float (tiny)
        self.out = make_linear(d_model, d_model, bitnet)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, n, d = x.shape
        q, k, v = self.qkv(x).split([self.h * self.dh, self.h_kv * self.dh, self.h_kv * self.dh], dim=-1)
        q = apply_rope(q.view(B, n, self.h, self.dh).transpose(1, 2), *rope)      # [B, H, n, dh]
        k = apply_rope(k.view(B, n, self.h_kv, self.dh).transpose(1, 2), *rope)   # [B, Hkv, n, dh]
        v = v.view(B, n, self.h_kv, self.dh).transpose(1, 2)
        group = self.h // self.h_kv
        q = q.double()
        k = k.double().repeat_interleave(group, dim=1) * (self.dh ** -0.5)
        v = v.double().repeat_interleave(group, dim=1)
        decay = F.linear(x.double(), self.decay.weight.double(), self.decay.bias.double())
        log_gamma = F.logsigmoid(decay).transpose(1, 2) / 16.0                    # [B, H, n] float64
        c = torch.cumsum(log_gamma, dim=-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        log_decay = (c[..., :, None] - c[..., None, :]).masked_fill(~causal, float("-inf"))
        o = torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * log_decay.exp(), v)  # [B, H, n, dh]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)             # per-head norm
        o = o.transpose(1, 2).reshape(B, n, d) * F.silu(self.gate(x).double())
        return self.out(o.to(x.dtype))
