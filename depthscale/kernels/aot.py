"""Ahead-of-time compilation of the Triton kernels to PTX for a given NVIDIA GPU architecture: what a
TensorRT AOT plugin embeds in a plan (depthscale_export.engines.plugins). Runs without a GPU: Triton
compiles for the named target (sm_90 by default) with the compiler it ships.

Each function returns an AotKernel: the kernel's name, its PTX, and the launch facts the plugin needs.
The kernels take their arguments as the plugins pass them: inputs, int32 scalars, outputs, then the
scratch pointers Triton appends (passed as null: these kernels use no scratch memory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .bitlinear_triton import FUSED_BLOCKS, bitlinear_fused_kernel
from .exact_linear_triton import BLOCKS as LINEAR_BLOCKS
from .exact_linear_triton import exact_linear_kernel
from .window_attention_triton import BLOCKS, cached_attention_kernel, window_attention_kernel

DTYPES = ("fp32", "fp16", "bf16")            # Triton's names of the activation dtypes


@dataclass(frozen=True)
class AotKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int                          # bytes of dynamic shared memory
    blocks: dict                             # the constexpr tile sizes the grid is computed from
    scratch_pointers: int                    # trailing pointer parameters Triton adds (pass null)


def _compile(fn, signature: dict, constexprs: dict, blocks: dict, arch: int) -> AotKernel:
    """No FMA contraction: every float op rounds as the eager op's does (see bitlinear_fused_kernel)."""
    k = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                       options={"enable_fp_fusion": False})
    if k.metadata.global_scratch_size or k.metadata.profile_scratch_size:
        raise ValueError(f"{k.metadata.name} needs Triton scratch memory, which the plugins do not provide")
    params = len(re.findall(r"\.param\s", k.asm["ptx"].split(".entry", 1)[1].split(")", 1)[0]))
    arguments = sum(t != "constexpr" for t in signature.values())
    return AotKernel(k.metadata.name, k.asm["ptx"], k.metadata.num_warps, k.metadata.shared, dict(blocks),
                     params - arguments)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def bitlinear(dtype: str, gated: bool, arch: int = 90) -> AotKernel:
    """bitlinear_fused_kernel for activations of `dtype` (one of DTYPES); grid (cdiv(M, BM), cdiv(N, BN)).
    The packed weight comes as TensorRT's ONNX parser delivers the uint8 initializer: int32 [N, K4], one
    packed byte (0..255) per element."""
    _check_dtype(dtype)
    signature = {"x_ptr": f"*{dtype}", "w_ptr": "*i32", "g_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
                 "K4": "i32", "y_ptr": f"*{dtype}", **{k: "constexpr" for k in (*FUSED_BLOCKS, "GATED")}}
    return _compile(bitlinear_fused_kernel, signature, {**FUSED_BLOCKS, "GATED": gated}, FUSED_BLOCKS, arch)


def window_attention(dtype: str, head_dim: int, arch: int = 90) -> AotKernel:
    """window_attention_kernel in float64 (as the eager op) for `dtype` q/k/v/o and a static head_dim;
    grid (batch · heads, cdiv(n, BM))."""
    _check_dtype(dtype)
    signature = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "H": "i32", "HKV": "i32",
                 "N": "i32", "window": "i32", "o_ptr": f"*{dtype}",
                 **{k: "constexpr" for k in ("D", "SCALE", *BLOCKS, "F64")}}
    constexprs = {"D": head_dim, "SCALE": 1.0 / math.sqrt(head_dim), **BLOCKS, "F64": True}
    return _compile(window_attention_kernel, signature, constexprs, BLOCKS, arch)


def cached_attention(dtype: str, head_dim: int, arch: int = 90) -> AotKernel:
    """cached_attention_kernel (float64 inside) for `dtype` q/k/v/o, int64 positions and a static head_dim;
    grid (batch · heads, cdiv(new queries, BM))."""
    _check_dtype(dtype)
    signature = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "qs_ptr": "*i64", "ks_ptr": "*i64",
                 "H": "i32", "HKV": "i32", "NQ": "i32", "NK": "i32", "window": "i32", "o_ptr": f"*{dtype}",
                 **{k: "constexpr" for k in ("D", "SCALE", *BLOCKS)}}
    constexprs = {"D": head_dim, "SCALE": 1.0 / math.sqrt(head_dim), **BLOCKS}
    return _compile(cached_attention_kernel, signature, constexprs, BLOCKS, arch)


def exact_linear(dtype: str, arch: int = 90) -> AotKernel:
    """exact_linear_kernel (float64 accumulation) for `dtype` x, w and y; grid (cdiv(M, BM), cdiv(N, BN))."""
    _check_dtype(dtype)
    signature = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "M": "i32", "N": "i32", "K": "i32", "y_ptr": f"*{dtype}",
                 **{k: "constexpr" for k in LINEAR_BLOCKS}}
    return _compile(exact_linear_kernel, signature, dict(LINEAR_BLOCKS), LINEAR_BLOCKS, arch)
