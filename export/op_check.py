"""Per-op parity: each custom op's ONNX function body against its eager op, on seeded random inputs.

BitLinear and GatedBitLinear must match bit for bit (integer-valued arithmetic; the gate in
float64); WindowAttention within float
rounding. Each case builds a one-node model carrying the function and runs it in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from depthscale.bitlinear import pack_ternary, ternarize
from depthscale.window_attention import CHUNKED_FROM, window_attention_op

from .onnx_ops import DOMAIN, DOMAIN_VERSION, PLUGIN_ATTRS, function_protos

FLOAT, UINT8 = TensorProto.FLOAT, TensorProto.UINT8


def one_node_model(op_type: str, inputs: dict[str, np.ndarray], attrs: dict, opset: int) -> onnx.ModelProto:
    node = helper.make_node(op_type, list(inputs), ["Y"], domain=DOMAIN, **attrs, **PLUGIN_ATTRS)
    graph = helper.make_graph(
        [node], f"{op_type}_check",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), None)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info("Y", FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=function_protos(opset))
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def check_bitlinear(rng: np.random.Generator, opset: int, batch_shape=(2, 5), in_f=37, out_f=11,
                    gated: bool = False) -> dict:
    x_f = 2 * in_f if gated else in_f
    x = torch.from_numpy(rng.standard_normal((*batch_shape, x_f)).astype(np.float32) * 3)
    x[..., 0, :] = 0                                       # an all-zero token exercises the clamp
    w_t, gamma = ternarize(torch.from_numpy(rng.standard_normal((out_f, in_f)).astype(np.float32)))
    packed = pack_ternary(w_t)
    op_type, eager_op = (("GatedBitLinear", torch.ops.depthscale.gated_bitlinear) if gated
                         else ("BitLinear", torch.ops.depthscale.bitlinear))
    expected = eager_op(x, packed, gamma, in_f).numpy()
    feeds = {"X": x.numpy(), "W": packed.numpy(), "G": gamma.numpy()}
    got = _run(one_node_model(op_type, feeds, {"in_features": in_f}, opset), feeds)
    return _result(op_type, f"x{list(x.shape)} W[{out_f},{in_f}]", got, expected, exact=True)


def check_window_attention(rng: np.random.Generator, opset: int, B=2, H=4, Hkv=2, n=19, D=8, window=5,
                           atol=1e-5) -> dict:
    q = rng.standard_normal((B, H, n, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, n, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, n, D)).astype(np.float32)
    expected = window_attention_op(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), window).numpy()
    feeds = {"Q": q, "K": k, "V": v}
    got = _run(one_node_model("WindowAttention", feeds, {"window": window}, opset), feeds)
    return _result("WindowAttention", f"q[{B},{H},{n},{D}] kv heads {Hkv} window {window}", got, expected,
                   exact=False, atol=atol)


def _result(op_type, case, got, expected, exact, atol=0.0) -> dict:
    same_shape = got.shape == expected.shape
    err = float(np.max(np.abs(got - expected))) if same_shape and got.size else (0.0 if same_shape else float("inf"))
    passed = same_shape and (np.array_equal(got, expected) if exact else err <= atol)
    return {"op": op_type, "case": case, "exact_required": exact, "max_abs_err": err,
            "bit_exact": bool(same_shape and np.array_equal(got, expected)), "passed": bool(passed)}


def check_ops(opset: int, seed: int = 0) -> list[dict]:
    """Run every op check; returns one result dict per case."""
    rng = np.random.default_rng(seed)
    results = [check_bitlinear(rng, opset, bs, i, o) for bs, i, o in
               (((2, 5), 37, 11), ((1, 1), 64, 128), ((3, 33), 128, 64))]
    results += [check_bitlinear(rng, opset, bs, i, o, gated=True) for bs, i, o in (((2, 5), 37, 11), ((3, 33), 96, 64))]
    results += [check_window_attention(rng, opset, n=n, window=w, Hkv=hkv) for n, w, hkv in
                ((19, 5, 2), (1, 4, 4), (7, 64, 1), (40, 8, 2), (CHUNKED_FROM + 37, 4096, 2))]
    return results
