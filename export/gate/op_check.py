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
from depthscale.model import PRECISIONS
from depthscale.exact_math import exact_linear_op
from depthscale.window_attention import CHUNKED_FROM, cached_attention, window_attention_op

from ..graph.ops import DOMAIN, DOMAIN_VERSION, PLUGIN_ATTRS, function_protos

FLOAT = TensorProto.FLOAT
ONNX_DTYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def one_node_model(op_type: str, inputs: dict[str, np.ndarray], attrs: dict, opset: int,
                   precision: str = "fp32") -> onnx.ModelProto:
    """One custom node with its functions. Float32 graph inputs and output; the node's float operands
    (not γ) and its result are in `precision`, through Casts at the graph's edge."""
    dtype = ONNX_DTYPES[precision]
    nodes, names = [], []
    for name, value in inputs.items():
        if value.dtype == np.float32 and name != "G":
            nodes.append(helper.make_node("Cast", [name], [name + "_p"], to=dtype))
            names.append(name + "_p")
        else:
            names.append(name)
    nodes.append(helper.make_node(op_type, names, ["Y_p"], domain=DOMAIN, **attrs, **PLUGIN_ATTRS))
    nodes.append(helper.make_node("Cast", ["Y_p"], ["Y"], to=FLOAT))
    graph = helper.make_graph(
        nodes, f"{op_type}_check",
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


def _in_precision(x: np.ndarray, precision: str) -> torch.Tensor:
    """x rounded to `precision` (a torch tensor of that dtype)."""
    return torch.from_numpy(x).to(PRECISIONS[precision])


def check_bitlinear(rng: np.random.Generator, opset: int, batch_shape=(2, 5), in_f=37, out_f=11,
                    gated: bool = False, precision: str = "fp32") -> dict:
    x_f = 2 * in_f if gated else in_f
    x = _in_precision(rng.standard_normal((*batch_shape, x_f)).astype(np.float32) * 3, precision)
    x[..., 0, :] = 0                                       # an all-zero token exercises the clamp
    w_t, gamma = ternarize(torch.from_numpy(rng.standard_normal((out_f, in_f)).astype(np.float32)))
    packed = pack_ternary(w_t)
    op_type, eager_op = (("GatedBitLinear", torch.ops.depthscale.gated_bitlinear) if gated
                         else ("BitLinear", torch.ops.depthscale.bitlinear))
    expected = eager_op(x, packed, gamma, in_f).float().numpy()
    feeds = {"X": x.float().numpy(), "W": packed.numpy(), "G": gamma.numpy()}
    got = _run(one_node_model(op_type, feeds, {"in_features": in_f}, opset, precision), feeds)
    return _result(op_type, f"{precision} x{list(x.shape)} W[{out_f},{in_f}]", got, expected, exact=True)


# ops that round a float64 result once (attention, the head), in both; a rare last-bit difference is one ulp of the dtype
ROUNDED_ONCE_ATOL = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1.6e-2}


def check_window_attention(rng: np.random.Generator, opset: int, B=2, H=4, Hkv=2, n=19, D=8, window=5,
                           precision: str = "fp32") -> dict:
    q, k, v = (_in_precision(rng.standard_normal(shape).astype(np.float32), precision)
               for shape in ((B, H, n, D), (B, Hkv, n, D), (B, Hkv, n, D)))
    expected = window_attention_op(q, k, v, window).float().numpy()
    feeds = {"Q": q.float().numpy(), "K": k.float().numpy(), "V": v.float().numpy()}
    got = _run(one_node_model("WindowAttention", feeds, {"window": window}, opset, precision), feeds)
    return _result("WindowAttention", f"{precision} q[{B},{H},{n},{D}] kv heads {Hkv} window {window}", got,
                   expected, exact=False, atol=ROUNDED_ONCE_ATOL[precision])


def check_cached_attention(rng: np.random.Generator, opset: int, B=3, H=4, Hkv=2, c=1, S=12, D=8, window=5,
                           precision: str = "fp32") -> dict:
    """New queries against keys by position, as a decode step reads its window cache (k_start = q_start - P,
    some rows with slots before position 0) or the global KV (k_start = 0, a capacity past the queries)."""
    q, k, v = (_in_precision(rng.standard_normal(shape).astype(np.float32), precision)
               for shape in ((B, H, c, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    q_start = torch.from_numpy(rng.integers(0, 2 * S, B).astype(np.int64))
    k_start = q_start - (S - c) if window < S else torch.zeros(B, dtype=torch.int64)
    expected = cached_attention(q, k, v, q_start, k_start, window).float().numpy()
    feeds = {"Q": q.float().numpy(), "K": k.float().numpy(), "V": v.float().numpy(),
             "QStart": q_start.numpy(), "KStart": k_start.numpy()}
    got = _run(one_node_model("CachedAttention", feeds, {"window": window}, opset, precision), feeds)
    return _result("CachedAttention", f"{precision} q[{B},{H},{c},{D}] keys {S} window {window} "
                   f"q_start {q_start.tolist()}", got, expected, exact=False, atol=ROUNDED_ONCE_ATOL[precision])


def check_exact_linear(rng: np.random.Generator, opset: int, batch_shape=(2, 5), in_f=37, out_f=11,
                       precision: str = "fp32") -> dict:
    """The head: float64 inside, rounded once, so the same float32 as eager in all but vanishingly rare cases."""
    x = _in_precision(rng.standard_normal((*batch_shape, in_f)).astype(np.float32) * 3, precision)
    w = _in_precision(rng.standard_normal((out_f, in_f)).astype(np.float32), precision)
    expected = exact_linear_op(x, w).float().numpy()
    feeds = {"X": x.float().numpy(), "W": w.float().numpy()}
    got = _run(one_node_model("ExactLinear", feeds, {}, opset, precision), feeds)
    return _result("ExactLinear", f"{precision} x{list(x.shape)} W[{out_f},{in_f}]", got, expected, exact=False,
                   atol=ROUNDED_ONCE_ATOL[precision])


def _result(op_type, case, got, expected, exact, atol=0.0) -> dict:
    same_shape = got.shape == expected.shape
    err = float(np.max(np.abs(got - expected))) if same_shape and got.size else (0.0 if same_shape else float("inf"))
    passed = same_shape and (np.array_equal(got, expected) if exact else err <= atol)
    return {"op": op_type, "case": case, "exact_required": exact, "max_abs_err": err,
            "bit_exact": bool(same_shape and np.array_equal(got, expected)), "passed": bool(passed)}


def check_ops(opset: int, seed: int = 0, precision: str = "fp32") -> list[dict]:
    """Run every op check with the model's precision; returns one result dict per case."""
    rng = np.random.default_rng(seed)
    # (3, 347) and (2, 517): past ROWS_CHUNKED_FROM rows, in uneven ROW_CHUNKS pieces
    results = [check_bitlinear(rng, opset, bs, i, o, precision=precision) for bs, i, o in
               (((2, 5), 37, 11), ((1, 1), 64, 128), ((3, 33), 128, 64), ((3, 347), 40, 24))]
    results += [check_bitlinear(rng, opset, bs, i, o, gated=True, precision=precision)
                for bs, i, o in (((2, 5), 37, 11), ((3, 33), 96, 64), ((2, 517), 24, 16))]
    results += [check_window_attention(rng, opset, n=n, window=w, Hkv=hkv, precision=precision) for n, w, hkv in
                ((19, 5, 2), (1, 4, 4), (7, 64, 1), (40, 8, 2), (CHUNKED_FROM + 37, 4096, 2),
                 (203, 8, 2))]                        # 203 tokens, window 8: 51 blocks, past BLOCKS_CHUNKED_FROM
    # a window cache (S = P + c keys, window P + 1) and the global KV (capacity S, a full window)
    results += [check_cached_attention(rng, opset, c=c, S=S, window=w, Hkv=hkv, precision=precision)
                for c, S, w, hkv in ((1, 4, 4, 2), (3, 10, 8, 1), (2, 33, 4096, 2), (1, 64, 4096, 4))]
    results += [check_exact_linear(rng, opset, bs, i, o, precision=precision) for bs, i, o in
                (((2, 5), 37, 11), ((1, 1), 64, 3), ((3, 40), 512, 256))]
    return results
