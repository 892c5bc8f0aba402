"""Ahead-of-time compilation of the Triton kernels to PTX for a given NVIDIA GPU architecture: what a
TensorRT AOT plugin embeds in a plan (depthscale_export.engines.plugins). Runs without a GPU: Triton
compiles for the named target (sm_90 by default) with the compiler it ships.

Each function returns an AotKernel: the kernel's name, its PTX, and the launch facts the plugin needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .bitlinear_triton import FUSED_BLOCKS, bitlinear_fused_kernel
from .window_attention_triton import BLOCKS, window_attention_kernel

DTYPES = ("fp32", "fp16", "bf16")            # Triton's names of the activation dtypes


@dataclass(frozen=True)
class AotKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int                          # bytes of dynamic shared memory
    blocks: dict                             # the constexpr tile sizes the grid is computed from


def _compile(fn, signature: dict, constexprs: dict, arch: int) -> triton.compiler.CompiledKernel:
    """No FMA contraction: every float op rounds as the eager op's does (see bitlinear_fused_kernel)."""
    return triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False})


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def bitlinear(dtype: str, gated: bool, arch: int = 90) -> AotKernel:
    """bitlinear_fused_kernel for activations of `dtype` (one of DTYPES); grid (cdiv(M, BM), cdiv(N, BN))."""
    _check_dtype(dtype)
    signature = {"x_ptr": f"*{dtype}", "w_ptr": "*u8", "g_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
                 "K4": "i32", "y_ptr": f"*{dtype}", **{k: "constexpr" for k in (*FUSED_BLOCKS, "GATED")}}
    k = _compile(bitlinear_fused_kernel, signature, {**FUSED_BLOCKS, "GATED": gated}, arch)
    return AotKernel(k.metadata.name, k.asm["ptx"], k.metadata.num_warps, k.metadata.shared, dict(FUSED_BLOCKS))


def window_attention(dtype: str, head_dim: int, arch: int = 90) -> AotKernel:
    """window_attention_kernel in float64 (as the eager op) for `dtype` q/k/v/o and a static head_dim;
    grid (batch · heads, cdiv(n, BM))."""
    _check_dtype(dtype)
    signature = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "H": "i32", "HKV": "i32",
                 "N": "i32", "window": "i32", "o_ptr": f"*{dtype}",
                 **{k: "constexpr" for k in ("D", "SCALE", *BLOCKS, "F64")}}
    constexprs = {"D": head_dim, "SCALE": 1.0 / math.sqrt(head_dim), **BLOCKS, "F64": True}
    k = _compile(window_attention_kernel, signature, constexprs, arch)
    return AotKernel(k.metadata.name, k.asm["ptx"], k.metadata.num_warps, k.metadata.shared, dict(BLOCKS))
