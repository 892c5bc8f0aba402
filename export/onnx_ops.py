"""The custom ONNX ops of domain "depthscale": schemas, torch.onnx translations, function bodies.

Each op is exported as one bare node (op_type BitLinear / WindowAttention, attributes
plugin_namespace="depthscale" and plugin_version="1" so TensorRT can match a plugin), and the model
carries a local function of standard ops with the same name that ONNX Runtime inlines.

The function bodies mirror the eager code in depthscale.bitlinear and depthscale.window_attention op
for op: BitLinear bit-exactly (its matmul is over integers), WindowAttention (float64 inside, like
eager) to the last float32 bit in all but rare cases. X, Q, K, V and Y are float32, float16 or
bfloat16 (the model's precision); the bodies compute in float32 (float64 for attention) and round only
Y to that dtype, as the eager ops do. γ is always float32.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import DOUBLE, FLOAT, INT64, UINT8, script
from onnxscript import opset18 as op

from depthscale.window_attention import CAUSAL_CHUNKS, CHUNKED_FROM, SUB_BLOCKS

DOMAIN = "depthscale"
DOMAIN_VERSION = 1
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": "1"}
BODY_OPSET = 18          # the opset the bodies are written in; retagged to the model's opset (>= 18)

_ds = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _schema(name: str, inputs: list[tuple[str, str]], attr: str, doc: str) -> OpSchema:
    FP = OpSchema.FormalParameter
    attrs = [OpSchema.Attribute(attr, OpSchema.AttrType.INT, ""),
             OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, ""),
             OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "")]
    return OpSchema(name, DOMAIN, DOMAIN_VERSION, doc=doc,
                    inputs=[FP(n, t) for n, t in inputs], outputs=[FP("Y", "T")],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                                      ("U", ["tensor(uint8)"], ""), ("F", ["tensor(float)"], "")],
                    attributes=attrs)


BITLINEAR_SCHEMA = _schema("BitLinear", [("X", "T"), ("W", "U"), ("G", "F")], "in_features",
                           "y = (x_q · W_tᵀ) · γ / s; W 2-bit packed ternary [out, ceil(in/4)], γ [] float")
GATED_BITLINEAR_SCHEMA = _schema("GatedBitLinear", [("X", "T"), ("W", "U"), ("G", "F")], "in_features",
                                 "BitLinear(silu(a) · b) for X = [a, b] [..., 2·in]; the FFN down projection")
WINDOW_ATTENTION_SCHEMA = _schema("WindowAttention", [("Q", "T"), ("K", "T"), ("V", "T")], "window",
                                  "causal sliding-window attention, Q [B,H,n,D], K/V [B,Hkv,n,D]")
_BitLinearNode = onnxscript.values.Op(_ds, "BitLinear", BITLINEAR_SCHEMA)
_GatedBitLinearNode = onnxscript.values.Op(_ds, "GatedBitLinear", GATED_BITLINEAR_SCHEMA)
_WindowAttentionNode = onnxscript.values.Op(_ds, "WindowAttention", WINDOW_ATTENTION_SCHEMA)


def translate_bitlinear(x, w_packed, gamma, in_features: int):
    return _BitLinearNode(x, w_packed, gamma, in_features=in_features, **PLUGIN_ATTRS)


def translate_gated_bitlinear(x, w_packed, gamma, in_features: int):
    return _GatedBitLinearNode(x, w_packed, gamma, in_features=in_features, **PLUGIN_ATTRS)


def translate_window_attention(q, k, v, window: int):
    return _WindowAttentionNode(q, k, v, window=window, **PLUGIN_ATTRS)


def translation_table() -> dict:
    """For torch.onnx.export(custom_translation_table=...)."""
    import torch

    import depthscale.bitlinear  # noqa: F401  (registers torch.ops.depthscale.*)
    import depthscale.window_attention  # noqa: F401
    return {torch.ops.depthscale.bitlinear.default: translate_bitlinear,
            torch.ops.depthscale.gated_bitlinear.default: translate_gated_bitlinear,
            torch.ops.depthscale.window_attention.default: translate_window_attention}


# ---- function bodies (mirror depthscale/bitlinear.py and depthscale/window_attention.py) ----------

@script(_ds, default_opset=op)
def BitLinear(X: FLOAT, W: UINT8, G: FLOAT, in_features: int) -> FLOAT:
    # unpack_ternary: codes = (W[..., None] >> [0, 2, 4, 6]) & 3; W_t = codes[:, :in] - 1, as int8 [in, out].
    # W is an initializer, so ONNX Runtime folds this into a constant once, at session creation.
    shifts = op.Cast(op.Constant(value_ints=[0, 2, 4, 6]), to=2)
    three = op.Cast(op.Constant(value_int=3), to=2)
    codes = op.BitwiseAnd(op.BitShift(op.Unsqueeze(W, [-1]), shifts, direction="RIGHT"), three)
    rows = op.Shape(W, start=0, end=1)
    flat = op.Reshape(codes, op.Concat(rows, op.Constant(value_ints=[-1]), axis=0))
    n_in = op.Reshape(op.Constant(value_int=in_features), op.Constant(value_ints=[1]))
    # (every intermediate stays 1 byte per weight: folding through a wider type cost ORT ~0.6 GB of
    # resident memory on the reference model)
    codes_in = op.Cast(op.Slice(flat, op.Constant(value_ints=[0]), n_in, op.Constant(value_ints=[1])), to=3)
    w_t = op.Transpose(op.Sub(codes_in, op.Cast(op.Constant(value_int=1), to=3)), perm=[1, 0])
    # quantize_activations: s = reciprocal(max(amax, 1e-5)) * 127; x_q = clamp(round(x * s), -128, 127),
    # in float32 whatever X's dtype (the Cast is a no-op for a float32 model)
    x = op.Cast(X, to=1)
    amax = op.Max(op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1), op.Constant(value_float=1e-5))
    s = op.Mul(op.Reciprocal(amax), op.Constant(value_float=127.0))
    x_q = op.Clip(op.Round(op.Mul(x, s)), op.Constant(value_float=-128.0), op.Constant(value_float=127.0))
    # the integer product x_q · W_tᵀ, exact in int32: x_q + 128 as uint8 with zero point 128, because
    # ONNX Runtime's fast (VNNI) kernels are uint8 x int8
    x_u8 = op.Cast(op.Add(x_q, op.Constant(value_float=128.0)), to=2)
    acc = op.MatMulInteger(x_u8, w_t, op.Cast(op.Constant(value_int=128), to=2))
    return op.CastLike(op.Mul(op.Cast(acc, to=1), op.Div(G, s)), X)


@script(_ds, default_opset=op)
def GatedBitLinear(X: FLOAT, W: UINT8, G: FLOAT, in_features: int) -> FLOAT:
    # swiglu, as eager: a · reciprocal(exp(-a) + 1) · b for [a, b] = X, exp through float64
    a, b = op.Split(op.Cast(X, to=1), axis=-1, num_outputs=2)
    e = op.Cast(op.Exp(op.Cast(op.Neg(a), to=11)), to=1)
    h = op.Mul(op.Mul(a, op.Reciprocal(op.Add(e, op.Constant(value_float=1.0)))), b)
    return op.CastLike(BitLinear(h, W, G, in_features=in_features), X)


@script(_ds, default_opset=op)
def CausalChunk(Q: DOUBLE, K: DOUBLE, V: DOUBLE, start: INT64, end: INT64) -> DOUBLE:
    """Queries start..end-1 of causal attention against keys 0..end-1 (float64, heads expanded);
    depthscale.window_attention._softmax_attend on one chunk. start, end int64 [1]."""
    zero = op.Constant(value_ints=[0])
    two = op.Constant(value_ints=[2])
    scale = op.Reciprocal(op.Sqrt(op.Cast(op.Shape(Q, start=3, end=4), to=11)))
    q = op.Slice(Q, start, end, two)
    k = op.Slice(K, zero, end, two)
    v = op.Slice(V, zero, end, two)
    step = op.Constant(value_int=1)
    qpos = op.Unsqueeze(op.Range(op.Squeeze(start, zero), op.Squeeze(end, zero), step), [1])
    kpos = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Squeeze(end, zero), step), [0])
    bias = op.Where(op.LessOrEqual(kpos, qpos), op.Cast(op.Constant(value_float=0.0), to=11),
                    op.Cast(op.Constant(value_float=float("-inf")), to=11))
    scores = op.Add(op.MatMul(op.Mul(q, scale), op.Transpose(k, perm=[0, 1, 3, 2])), bias)
    return op.MatMul(op.Softmax(scores, axis=-1), v)


@script(_ds, default_opset=op)
def WindowAttention(Q: FLOAT, K: FLOAT, V: FLOAT, window: int) -> FLOAT:
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    D = op.Shape(Q, start=3, end=4)
    like = op.Identity(Q)                                   # the result's dtype: the model's precision
    Q = op.Cast(Q, to=11)                                   # float64 inside, as eager
    K = op.Cast(K, to=11)
    V = op.Cast(V, to=11)
    # grouped KV heads: repeat_interleave over axis 1
    B = op.Shape(Q, start=0, end=1)
    H = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    Hkv = op.Shape(K, start=1, end=2)
    kv5 = op.Concat(B, Hkv, op.Div(H, Hkv), n, D, axis=0)
    qshape = op.Concat(B, H, n, D, axis=0)
    K = op.Reshape(op.Expand(op.Unsqueeze(K, [2]), kv5), qshape)
    V = op.Reshape(op.Expand(op.Unsqueeze(V, [2]), kv5), qshape)
    w = op.Reshape(op.Constant(value_int=window), one)
    if op.Squeeze(op.GreaterOrEqual(w, n), zero):
        # full causal attention: in one block, or in CAUSAL_CHUNKS query chunks from CHUNKED_FROM on
        if op.Squeeze(op.Less(n, op.Constant(value_ints=[CHUNKED_FROM])), zero):
            out = CausalChunk(Q, K, V, zero, n)
        else:
            c = op.Div(op.Add(n, op.Constant(value_ints=[CAUSAL_CHUNKS - 1])), op.Constant(value_ints=[CAUSAL_CHUNKS]))
            out = op.Concat(CausalChunk(Q, K, V, zero, c),
                            CausalChunk(Q, K, V, c, op.Min(op.Mul(c, op.Constant(value_ints=[2])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[2])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[3])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[3])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[4])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[4])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[5])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[5])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[6])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[6])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[7])), n)),
                            CausalChunk(Q, K, V, op.Mul(c, op.Constant(value_ints=[7])), n),
                            axis=2)
    else:
        # blocks of b = ceil(window / R) queries, each against its own and the R previous blocks
        R = op.Constant(value_ints=[SUB_BLOCKS])
        b = op.Div(op.Sub(op.Add(w, R), one), R)
        nb = op.Div(op.Sub(op.Add(n, b), one), b)
        pad = op.Sub(op.Mul(nb, b), n)
        qb = op.Reshape(op.Pad(Q, op.Concat(zero, zero, zero, zero, zero, zero, pad, zero, axis=0)),
                        op.Concat(B, H, nb, b, D, axis=0))
        kvp_pads = op.Concat(zero, zero, op.Mul(b, R), zero, zero, zero, pad, zero, axis=0)
        blocks = op.Concat(B, H, op.Add(nb, R), b, D, axis=0)
        R1 = op.Add(R, one)
        nb0 = op.Squeeze(nb, zero)
        idx = op.Reshape(op.Add(op.Unsqueeze(op.Range(op.Constant(value_int=0), nb0, op.Constant(value_int=1)), [1]),
                                op.Range(op.Constant(value_int=0), op.Squeeze(R1, zero), op.Constant(value_int=1))),
                         op.Constant(value_ints=[-1]))
        kbshape = op.Concat(B, H, nb, op.Mul(R1, b), D, axis=0)
        kb = op.Reshape(op.Gather(op.Reshape(op.Pad(K, kvp_pads), blocks), idx, axis=2), kbshape)
        vb = op.Reshape(op.Gather(op.Reshape(op.Pad(V, kvp_pads), blocks), idx, axis=2), kbshape)
        # query blk*b + i, key (blk - R)*b + j; allowed iff 0 <= i - j + R·b < window and key >= 0.
        # min(b, n) is b here (b <= window < n) but depends on n, so ONNX Runtime does not fold the mask
        # into a constant: for the cross-decoder's window (max_seq_len), whose calls all take the branch
        # above, that constant would be [window/2, 3·window/2] and cost ~0.5 GB while being folded.
        b0 = op.Squeeze(op.Min(b, n), zero)
        R0 = op.Squeeze(R, zero)
        i = op.Unsqueeze(op.Range(op.Constant(value_int=0), b0, op.Constant(value_int=1)), [1])
        j = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Mul(b0, op.Add(R0, op.Constant(value_int=1))),
                                  op.Constant(value_int=1)), [0])
        dist = op.Add(op.Sub(i, j), op.Mul(b0, R0))
        in_window = op.And(op.GreaterOrEqual(dist, op.Constant(value_int=0)), op.Less(dist, w))
        blk = op.Unsqueeze(op.Range(op.Constant(value_int=0), nb0, op.Constant(value_int=1)), [1, 2])
        key_exists = op.GreaterOrEqual(op.Unsqueeze(j, [0]), op.Mul(op.Sub(R0, blk), b0))
        allowed = op.And(op.Unsqueeze(in_window, [0]), key_exists)
        scale = op.Reciprocal(op.Sqrt(op.Cast(D, to=11)))
        bias = op.Where(allowed, op.Cast(op.Constant(value_float=0.0), to=11),
                        op.Cast(op.Constant(value_float=float("-inf")), to=11))
        scores = op.Add(op.MatMul(op.Mul(qb, scale), op.Transpose(kb, perm=[0, 1, 2, 4, 3])), bias)
        probs = op.Softmax(scores, axis=-1)
        out = op.Slice(op.Reshape(op.MatMul(probs, vb), op.Concat(B, H, op.Mul(nb, b), D, axis=0)), zero, n, two)
    return op.CastLike(out, like)


FUNCTIONS = (BitLinear, GatedBitLinear, WindowAttention, CausalChunk)


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    """The function bodies, with their default-domain import set to the model's opset and our domain
    imported (onnxscript leaves it out when a body calls our functions only inside If branches)."""
    protos = []
    for fn in FUNCTIONS:
        proto = fn.to_function_proto()
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset
        if DOMAIN not in {imp.domain for imp in proto.opset_import}:
            proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        protos.append(proto)
    return protos
