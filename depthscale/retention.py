"""Gated retention (YOCO's GateRetention), the alternative token mixer, in its parallel form.

Per head, a data-dependent decay γ_n = exp(logsigmoid(x_n W_γ) / 16);
S_n = γ_n S_{n-1} + k_nᵀ v_n and o_n = q_n S_n, i.e. o = ((q kᵀ) ⊙ D) v with
D[n, m] = Π_{i=m+1..n} γ_i for m <= n, else 0. A per-head RMS norm and a swish gate follow.

A token's memory (what later queries read of it, frozen once the token is done) is (k, v, log γ).

Everything after the (integer-exact) BitLinear projections and RoPE runs in float64 and is rounded to
float32 once, before the output projection: like window attention (window_attention.py), this keeps
eager PyTorch and ONNX Runtime bit-identical in all but vanishingly rare cases, which a BitNet
recurrence needs (exact_math.py). The exported graph therefore holds float64 ops for this mixer.

Incremental decoding is not implemented for this mixer (its exact recurrent form is future work):
attend() refuses a decode cache.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bitlinear import make_linear
from .exact_math import zeros
from .rope import apply_rope


class GatedRetention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bitnet: bool, eps: float):
        super().__init__()
        self.h, self.h_kv, self.dh, self.eps = n_heads, n_kv_heads, d_model // n_heads, eps
        self.qkv = make_linear(d_model, (n_heads + 2 * n_kv_heads) * self.dh, bitnet)
        self.gate = make_linear(d_model, d_model, bitnet)
        self.decay = nn.Linear(d_model, n_heads, bias=True)        # W_γ, float (tiny)
        self.out = make_linear(d_model, d_model, bitnet)

    def project(self, x: torch.Tensor, rope):
        """x [B, n, d] -> ((q [B, H, n, dh], gate float64 [B, n, d]),
        memory (k [B, Hkv, n, dh], v [B, Hkv, n, dh], log γ float64 [B, H, n]))."""
        B, n, d = x.shape
        q, k, v = self.qkv(x).split([self.h * self.dh, self.h_kv * self.dh, self.h_kv * self.dh], dim=-1)
        q = apply_rope(q.view(B, n, self.h, self.dh).transpose(1, 2), *rope)      # [B, H, n, dh]
        k = apply_rope(k.view(B, n, self.h_kv, self.dh).transpose(1, 2), *rope)   # [B, Hkv, n, dh]
        v = v.view(B, n, self.h_kv, self.dh).transpose(1, 2)
        decay = F.linear(x.double(), self.decay.weight.double(), self.decay.bias.double())
        log_gamma = F.logsigmoid(decay).transpose(1, 2) / 16.0                    # [B, H, n] float64
        return (q, F.silu(self.gate(x).double())), (k, v, log_gamma)

    def attend(self, queries, memory, past=None) -> torch.Tensor:
        if past is not None:
            raise NotImplementedError("incremental decoding is not implemented for the retention mixer")
        (q, gate), (k, v, log_gamma) = queries, memory
        B, _, n, _ = q.shape
        group = self.h // self.h_kv
        q = q.double()
        k = k.double().repeat_interleave(group, dim=1) * (self.dh ** -0.5)
        v = v.double().repeat_interleave(group, dim=1)
        c = torch.cumsum(log_gamma, dim=-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        log_decay = (c[..., :, None] - c[..., None, :]).masked_fill(~causal, float("-inf"))
        o = torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * log_decay.exp(), v)  # [B, H, n, dh]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)             # per-head norm
        o = o.transpose(1, 2).reshape(B, n, self.h * self.dh) * gate
        return self.out(o.to(memory[0].dtype))

    def empty_memory(self, x: torch.Tensor):
        """Zero memory for the positions of x [B, n, d]: (k, v [B, Hkv, n, dh], log γ float64 [B, H, n])."""
        B, n, _ = x.shape
        return (zeros(x, B, self.h_kv, n, self.dh), zeros(x, B, self.h_kv, n, self.dh),
                torch.zeros(B, self.h, n, dtype=torch.float64, device=x.device))
