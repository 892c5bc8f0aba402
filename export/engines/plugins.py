"""TensorRT plugins for the custom ops (DESIGN §5), as quickly deployable plugins (tensorrt.plugin,
TensorRT >= 10.9): "depthscale::BitLinear", "depthscale::GatedBitLinear" and "depthscale::WindowAttention",
the ONNX nodes' op_type under their plugin_namespace. Each has a shape/type description, an autotune
list of the activation dtypes it serves (fp32, fp16, bf16), and an AOT implementation: PTX compiled from
the Triton kernels (depthscale.kernels.aot) that TensorRT embeds in the plan, so a built engine runs
without Python plugin code.

NOT VERIFIED HERE: TensorRT's builder cannot be installed in this workplace and this task has no GPU;
this module is written against the documented tensorrt.plugin API (register, autotune, aot_impl,
KernelLaunchParams, SymIntExprs). What is verified, on CPU: the kernels match the eager ops under
Triton's interpreter (BitLinear bit for bit) and compile to PTX for sm_90 (tests/test_tensorrt.py).

Importing this module registers the plugins; it needs tensorrt (>= 10.9), triton and a CUDA device
(the PTX is compiled for the local GPU's architecture).
"""

from __future__ import annotations

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from depthscale.kernels import aot

_DTYPES = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}
_LINEAR_COMBINATIONS = ["FP32, UINT8, FP32, FP32", "FP16, UINT8, FP32, FP16", "BF16, UINT8, FP32, BF16"]
_ATTENTION_COMBINATIONS = ["FP32, FP32, FP32, FP32", "FP16, FP16, FP16, FP16", "BF16, BF16, BF16, BF16"]


def _arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _linear_desc(x: trtp.TensorDesc, w: trtp.TensorDesc) -> trtp.TensorDesc:
    """X [..., in] (gated: [..., 2·in]) -> Y [..., out] in X's dtype; out = W's rows."""
    y = x.like()
    y.shape_expr[-1] = w.shape_expr[0]
    return y


def _linear_launch(x: trtp.TensorDesc, w: trtp.TensorDesc, in_features: int, gated: bool):
    """PTX of the fused BitLinear kernel and its launch: grid (cdiv(M, BM), cdiv(N, BN)), M the rows."""
    kernel = aot.bitlinear(_DTYPES[x.dtype], gated, _arch())
    rows = x.shape_expr[0]
    for dim in list(x.shape_expr)[1:-1]:
        rows = rows * dim
    n, k4 = w.shape_expr[0], w.shape_expr[1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(rows, kernel.blocks["BM"])
    launch.grid_y = trtp.cdiv(n, kernel.blocks["BN"])
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared_mem
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (rows, n, in_features, k4)])
    return kernel.name.encode(), kernel.ptx.encode(), launch, scalars


@trtp.register("depthscale::BitLinear")
def bitlinear_desc(X: trtp.TensorDesc, W: trtp.TensorDesc, G: trtp.TensorDesc, in_features: int) -> trtp.TensorDesc:
    return _linear_desc(X, W)


@trtp.autotune("depthscale::BitLinear")
def bitlinear_autotune(X, W, G, in_features: int, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(c) for c in _LINEAR_COMBINATIONS]


@trtp.aot_impl("depthscale::BitLinear")
def bitlinear_aot(X: trtp.TensorDesc, W: trtp.TensorDesc, G: trtp.TensorDesc, in_features: int, outputs, tactic: int):
    return _linear_launch(X, W, in_features, gated=False)


@trtp.register("depthscale::GatedBitLinear")
def gated_bitlinear_desc(X: trtp.TensorDesc, W: trtp.TensorDesc, G: trtp.TensorDesc,
                         in_features: int) -> trtp.TensorDesc:
    return _linear_desc(X, W)


@trtp.autotune("depthscale::GatedBitLinear")
def gated_bitlinear_autotune(X, W, G, in_features: int, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(c) for c in _LINEAR_COMBINATIONS]


@trtp.aot_impl("depthscale::GatedBitLinear")
def gated_bitlinear_aot(X: trtp.TensorDesc, W: trtp.TensorDesc, G: trtp.TensorDesc, in_features: int, outputs,
                        tactic: int):
    return _linear_launch(X, W, in_features, gated=True)


@trtp.register("depthscale::WindowAttention")
def window_attention_desc(Q: trtp.TensorDesc, K: trtp.TensorDesc, V: trtp.TensorDesc, window: int) -> trtp.TensorDesc:
    return Q.like()


@trtp.autotune("depthscale::WindowAttention")
def window_attention_autotune(Q, K, V, window: int, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(c) for c in _ATTENTION_COMBINATIONS]


@trtp.aot_impl("depthscale::WindowAttention")
def window_attention_aot(Q: trtp.TensorDesc, K: trtp.TensorDesc, V: trtp.TensorDesc, window: int, outputs,
                         tactic: int):
    """Q [B, H, n, D], K/V [B, Hkv, n, D]; the head dim is static in every DepthScale export."""
    head_dim = Q.shape_expr[3]
    if not head_dim.is_constant:
        raise ValueError("WindowAttention's plugin needs a static head dim (the last axis of Q)")
    kernel = aot.window_attention(_DTYPES[Q.dtype], head_dim.constant_value, _arch())
    b, h, n = Q.shape_expr[0], Q.shape_expr[1], Q.shape_expr[2]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = b * h
    launch.grid_y = trtp.cdiv(n, kernel.blocks["BM"])
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared_mem
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (h, K.shape_expr[1], n, window)])
    return kernel.name.encode(), kernel.ptx.encode(), launch, scalars
