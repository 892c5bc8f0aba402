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
from onnxscript import DOUBLE, FLOAT, INT8, INT64, UINT8, script
from onnxscript import opset18 as op

from depthscale.window_attention import CAUSAL_CHUNKS, CHUNKED_FROM, SUB_BLOCKS

DOMAIN = "depthscale"
DOMAIN_VERSION = 1
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": "1"}
BODY_OPSET = 18          # the opset the bodies are written in; retagged to the model's opset (>= 18)
# The oldest ONNX Runtime the graphs run on (the manifest's runtime.onnxruntime_min): 1.17 and older
# refuse IR version 10, 1.18-1.20 have no CPU kernel for UnpackTernary's int8 Sub (and with it taken
# out, 1.18.1 and 1.20.1 ran the demo with logits up to 7 off 1.32's). From 1.21 on the graphs run, equal
# to the bit, because no Transpose feeds a float64 MatMul (1.21-1.25 fuse that pair into a FusedMatMul
# that has no float64 kernel).
ONNXRUNTIME_MIN = "1.21.0"

_ds = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _schema(name: str, inputs: list[tuple[str, str]], attr: str | None, doc: str) -> OpSchema:
    """A "depthscale" op: float inputs T (the model's precision), packed weights U, scales F, positions I;
    one output Y of type T; an int attribute `attr` (if any) and the plugin attributes."""
    FP = OpSchema.FormalParameter
    attrs = [OpSchema.Attribute(attr, OpSchema.AttrType.INT, "")] if attr else []
    attrs += [OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, ""),
              OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "")]
    return OpSchema(name, DOMAIN, DOMAIN_VERSION, doc=doc,
                    inputs=[FP(n, t) for n, t in inputs], outputs=[FP("Y", "T")],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                                      ("U", ["tensor(uint8)"], ""), ("F", ["tensor(float)"], ""),
                                      ("I", ["tensor(int64)"], "")],
                    attributes=attrs)


BITLINEAR_SCHEMA = _schema("BitLinear", [("X", "T"), ("W", "U"), ("G", "F")], "in_features",
                           "y = (x_q · W_tᵀ) · γ / s; W 2-bit packed ternary [out, ceil(in/4)], γ [] float")
GATED_BITLINEAR_SCHEMA = _schema("GatedBitLinear", [("X", "T"), ("W", "U"), ("G", "F")], "in_features",
                                 "BitLinear(silu(a) · b) for X = [a, b] [..., 2·in]; the FFN down projection")
WINDOW_ATTENTION_SCHEMA = _schema("WindowAttention", [("Q", "T"), ("K", "T"), ("V", "T")], "window",
                                  "causal sliding-window attention, Q [B,H,n,D], K/V [B,Hkv,n,D]")
CACHED_ATTENTION_SCHEMA = _schema("CachedAttention", [("Q", "T"), ("K", "T"), ("V", "T"), ("QStart", "I"),
                                                     ("KStart", "I")], "window",
                                  "attention by position (incremental decoding): Q [B,H,c,D] at positions "
                                  "QStart[b] + i, K/V [B,Hkv,S,D] at KStart[b] + j; query i reads key j iff "
                                  "0 <= qpos - kpos < window and kpos >= 0")
EXACT_LINEAR_SCHEMA = _schema("ExactLinear", [("X", "T"), ("W", "T")], None,
                              "y = x · Wᵀ in float64, rounded once to T; W [out, in] (the model's head)")
_BitLinearNode = onnxscript.values.Op(_ds, "BitLinear", BITLINEAR_SCHEMA)
_GatedBitLinearNode = onnxscript.values.Op(_ds, "GatedBitLinear", GATED_BITLINEAR_SCHEMA)
_WindowAttentionNode = onnxscript.values.Op(_ds, "WindowAttention", WINDOW_ATTENTION_SCHEMA)
_CachedAttentionNode = onnxscript.values.Op(_ds, "CachedAttention", CACHED_ATTENTION_SCHEMA)
_ExactLinearNode = onnxscript.values.Op(_ds, "ExactLinear", EXACT_LINEAR_SCHEMA)


def translate_bitlinear(x, w_packed, gamma, in_features: int):
    return _BitLinearNode(x, w_packed, gamma, in_features=in_features, **PLUGIN_ATTRS)


def translate_gated_bitlinear(x, w_packed, gamma, in_features: int):
    return _GatedBitLinearNode(x, w_packed, gamma, in_features=in_features, **PLUGIN_ATTRS)


def translate_window_attention(q, k, v, window: int):
    return _WindowAttentionNode(q, k, v, window=window, **PLUGIN_ATTRS)


def translate_cached_attention(q, k, v, q_start, k_start, window: int):
    return _CachedAttentionNode(q, k, v, q_start, k_start, window=window, **PLUGIN_ATTRS)


def translate_exact_linear(x, w):
    return _ExactLinearNode(x, w, **PLUGIN_ATTRS)


def translation_table() -> dict:
    """For torch.onnx.export(custom_translation_table=...)."""
    import torch

    import depthscale.bitlinear  # noqa: F401  (registers torch.ops.depthscale.*)
    import depthscale.exact_math  # noqa: F401
    import depthscale.window_attention  # noqa: F401
    return {torch.ops.depthscale.bitlinear.default: translate_bitlinear,
            torch.ops.depthscale.gated_bitlinear.default: translate_gated_bitlinear,
            torch.ops.depthscale.window_attention.default: translate_window_attention,
            torch.ops.depthscale.cached_attention.default: translate_cached_attention,
            torch.ops.depthscale.exact_linear.default: translate_exact_linear}


# ---- function bodies (mirror depthscale/bitlinear.py and depthscale/window_attention.py) ----------

@script(_ds, default_opset=op)
def QuantizedProduct(X: FLOAT, Wt: INT8, G: FLOAT) -> FLOAT:
    """BitLinear on rows: X float32 [r, in], Wt int8 [in, out] (unpacked), G float32 [] -> float32 [r, out].
    quantize_activations: s = reciprocal(max(amax, 1e-5)) * 127; x_q = clamp(round(x * s), -128, 127);
    then the integer product x_q · W_tᵀ, exact in int32, as x_q + 128 in uint8 with zero point 128,
    because ONNX Runtime's fast (VNNI) kernels are uint8 x int8; y = acc · γ / s."""
    amax = op.Max(op.ReduceMax(op.Abs(X), op.Constant(value_ints=[-1]), keepdims=1), op.Constant(value_float=1e-5))
    s = op.Mul(op.Reciprocal(amax), op.Constant(value_float=127.0))
    x_q = op.Clip(op.Round(op.Mul(X, s)), op.Constant(value_float=-128.0), op.Constant(value_float=127.0))
    x_u8 = op.Cast(op.Add(x_q, op.Constant(value_float=128.0)), to=2)
    acc = op.MatMulInteger(x_u8, Wt, op.Cast(op.Constant(value_int=128), to=2))
    return op.Mul(op.Cast(acc, to=1), op.Div(G, s))


@script(_ds, default_opset=op)
def GatedProduct(X: FLOAT, Wt: INT8, G: FLOAT) -> FLOAT:
    """swiglu, as eager: a · reciprocal(exp(-a) + 1) · b for [a, b] = X float32 [r, 2·in] (exp through
    float64), then QuantizedProduct -> float32 [r, out]."""
    a, b = op.Split(X, axis=-1, num_outputs=2)
    e = op.Cast(op.Exp(op.Cast(op.Neg(a), to=11)), to=1)
    h = op.Mul(op.Mul(a, op.Reciprocal(op.Add(e, op.Constant(value_float=1.0)))), b)
    return QuantizedProduct(h, Wt, G)


@script(_ds, default_opset=op)
def UnpackTernary(W: UINT8, in_features: int) -> INT8:
    """unpack_ternary: codes = (W[..., None] >> [0, 2, 4, 6]) & 3; W_t = codes[:, :in] - 1, as int8 [in, out].
    W is an initializer, so ONNX Runtime folds this into a constant once, at session creation."""
    shifts = op.Cast(op.Constant(value_ints=[0, 2, 4, 6]), to=2)
    three = op.Cast(op.Constant(value_int=3), to=2)
    codes = op.BitwiseAnd(op.BitShift(op.Unsqueeze(W, [-1]), shifts, direction="RIGHT"), three)
    rows = op.Shape(W, start=0, end=1)
    flat = op.Reshape(codes, op.Concat(rows, op.Constant(value_ints=[-1]), axis=0))
    n_in = op.Reshape(op.Constant(value_int=in_features), op.Constant(value_ints=[1]))
    # (every intermediate stays 1 byte per weight: folding through a wider type cost ORT ~0.6 GB of
    # resident memory on the reference model)
    codes_in = op.Cast(op.Slice(flat, op.Constant(value_ints=[0]), n_in, op.Constant(value_ints=[1])), to=3)
    return op.Transpose(op.Sub(codes_in, op.Cast(op.Constant(value_int=1), to=3)), perm=[1, 0])


# Row chunks: from ROWS_CHUNKED_FROM rows (batch · seq) on, the BitLinear bodies run their rows in
# ROW_CHUNKS pieces, so that each piece's intermediates (int32 products, swiglu) stay in cache.
# Every step is row-wise, so the result is the same bit for bit.
ROW_CHUNKS = 8           # as the Split below unpacks
ROWS_CHUNKED_FROM = 1024


@script(_ds, default_opset=op)
def BitLinear(X: FLOAT, W: UINT8, G: FLOAT, in_features: int) -> FLOAT:
    """X [..., in] -> [..., out] in X's dtype; QuantizedProduct on the rows, in ROW_CHUNKS pieces from
    ROWS_CHUNKED_FROM rows on. GatedBitLinear's body is this one with GatedProduct for QuantizedProduct."""
    w_t = UnpackTernary(W, in_features=in_features)
    x = op.Reshape(op.Cast(X, to=1), op.Concat(op.Constant(value_ints=[-1]), op.Shape(X, start=-1), axis=0))
    if op.Less(op.Shape(x, start=0, end=1), op.Constant(value_ints=[ROWS_CHUNKED_FROM])):
        y = QuantizedProduct(x, w_t, G)
    else:
        x0, x1, x2, x3, x4, x5, x6, x7 = op.Split(x, axis=0, num_outputs=ROW_CHUNKS)
        y = op.Concat(QuantizedProduct(x0, w_t, G), QuantizedProduct(x1, w_t, G), QuantizedProduct(x2, w_t, G),
                      QuantizedProduct(x3, w_t, G), QuantizedProduct(x4, w_t, G), QuantizedProduct(x5, w_t, G),
                      QuantizedProduct(x6, w_t, G), QuantizedProduct(x7, w_t, G), axis=0)
    shape = op.Concat(op.Shape(X, start=0, end=-1), op.Shape(y, start=1), axis=0)
    return op.CastLike(op.Reshape(y, shape), X)


@script(_ds, default_opset=op)
def CausalChunk(Q: DOUBLE, Kt: DOUBLE, V: DOUBLE, start: INT64, end: INT64) -> DOUBLE:
    """Queries start..end-1 of causal attention against keys 0..end-1 (float64);
    depthscale.window_attention._softmax_attend on one chunk. Q [B, Hkv, G, n, D] (query heads grouped
    by the KV head they share), Kt [B, Hkv, D, n] (K transposed), V [B, Hkv, n, D], start/end int64 [1]
    -> [B, Hkv, G, end - start, D]. The G query heads of a KV head go through one product as G · c
    rows: no expanded K/V."""
    zero = op.Constant(value_ints=[0])
    two = op.Constant(value_ints=[2])
    three = op.Constant(value_ints=[3])
    scale = op.Reciprocal(op.Sqrt(op.Cast(op.Shape(Q, start=4, end=5), to=11)))
    q = op.Slice(Q, start, end, three)                       # [B, Hkv, G, c, D]
    kt = op.Slice(Kt, zero, end, three)                      # [B, Hkv, D, end]
    v = op.Slice(V, zero, end, two)
    rows = op.Concat(op.Shape(q, start=0, end=2), op.Constant(value_ints=[-1]), op.Shape(q, start=4, end=5),
                     axis=0)
    step = op.Constant(value_int=1)
    qpos = op.Unsqueeze(op.Range(op.Squeeze(start, zero), op.Squeeze(end, zero), step), [1])
    kpos = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Squeeze(end, zero), step), [0])
    bias = op.Where(op.LessOrEqual(kpos, qpos), op.Cast(op.Constant(value_float=0.0), to=11),
                    op.Cast(op.Constant(value_float=float("-inf")), to=11))
    qk = op.Concat(op.Shape(q, start=0, end=4), op.Shape(kt, start=3, end=4), axis=0)  # [B, Hkv, G, c, end]
    gk = op.Concat(op.Shape(q, start=0, end=2), op.Constant(value_ints=[-1]), op.Shape(kt, start=3, end=4), axis=0)
    scores = op.MatMul(op.Reshape(op.Mul(q, scale), rows), kt)                         # [B, Hkv, G·c, end]
    probs = op.Softmax(op.Add(op.Reshape(scores, qk), bias), axis=-1)
    out = op.MatMul(op.Reshape(probs, gk), v)                                           # [B, Hkv, G·c, D]
    return op.Reshape(out, op.Shape(q))


# Block chunks: from BLOCKS_CHUNKED_FROM query blocks on, windowed attention runs its blocks in
# BLOCK_CHUNKS pieces, each block's result being independent of the others. (Split into 8 pieces of
# ceil(nb / 8) leaves a non-negative last piece, as ONNX Runtime requires, for every nb from 43 on.)
BLOCK_CHUNKS = 8         # as the Split below unpacks
BLOCKS_CHUNKED_FROM = 48


@script(_ds, default_opset=op)
def BlockAttend(Q: DOUBLE, Kt: DOUBLE, V: DOUBLE, bias: DOUBLE) -> DOUBLE:
    """Windowed attention on query blocks (float64): Q [B, Hkv, G, m, b, D] scaled, Kt [B, Hkv, 1, m, D, k]
    (K transposed), V [B, Hkv, 1, m, k, D], bias [m, b, k] (0 or -inf) -> [B, Hkv, G, m, b, D]."""
    scores = op.Add(op.MatMul(Q, Kt), bias)
    return op.MatMul(op.Softmax(scores, axis=-1), V)


@script(_ds, default_opset=op)
def WindowAttention(Q: FLOAT, K: FLOAT, V: FLOAT, window: int) -> FLOAT:
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    D = op.Shape(Q, start=3, end=4)
    like = op.Identity(Q)                                   # the result's dtype: the model's precision
    # float64 inside, as eager. K is transposed (in its own dtype or float32, exactly) before its Cast to
    # float64: no Transpose feeds a float64 MatMul (see CachedAttention)
    Q = op.Cast(Q, to=11)
    V = op.Cast(V, to=11)
    # grouped KV heads: the G = H / Hkv query heads of a KV head share its K/V by broadcasting
    # (eager repeats K/V; the float64 products are the same)
    B = op.Shape(Q, start=0, end=1)
    H = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    Hkv = op.Shape(K, start=1, end=2)
    G = op.Div(H, Hkv)
    qshape = op.Concat(B, H, n, D, axis=0)
    Qg = op.Reshape(Q, op.Concat(B, Hkv, G, n, D, axis=0))  # [B, Hkv, G, n, D]
    w = op.Reshape(op.Constant(value_int=window), one)
    if op.Squeeze(op.GreaterOrEqual(w, n), zero):
        # full causal attention: in one block, or in CAUSAL_CHUNKS query chunks from CHUNKED_FROM on
        Kt = op.Cast(op.Transpose(K, perm=[0, 1, 3, 2]), to=11)                       # [B, Hkv, D, n]
        if op.Squeeze(op.Less(n, op.Constant(value_ints=[CHUNKED_FROM])), zero):
            out = CausalChunk(Qg, Kt, V, zero, n)
        else:
            c = op.Div(op.Add(n, op.Constant(value_ints=[CAUSAL_CHUNKS - 1])), op.Constant(value_ints=[CAUSAL_CHUNKS]))
            out = op.Concat(CausalChunk(Qg, Kt, V, zero, c),
                            CausalChunk(Qg, Kt, V, c, op.Min(op.Mul(c, op.Constant(value_ints=[2])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[2])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[3])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[3])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[4])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[4])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[5])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[5])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[6])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[6])),
                                        op.Min(op.Mul(c, op.Constant(value_ints=[7])), n)),
                            CausalChunk(Qg, Kt, V, op.Mul(c, op.Constant(value_ints=[7])), n),
                            axis=3)
        out = op.Reshape(out, qshape)
    else:
        # blocks of b = ceil(window / R) queries, each against its own and the R previous blocks
        R = op.Constant(value_ints=[SUB_BLOCKS])
        b = op.Div(op.Sub(op.Add(w, R), one), R)
        nb = op.Div(op.Sub(op.Add(n, b), one), b)
        pad = op.Sub(op.Mul(nb, b), n)
        qb = op.Reshape(op.Pad(Q, op.Concat(zero, zero, zero, zero, zero, zero, pad, zero, axis=0)),
                        op.Concat(B, Hkv, G, nb, b, D, axis=0))              # [B, Hkv, G, nb, b, D]
        kvp_pads = op.Concat(zero, zero, op.Mul(b, R), zero, zero, zero, pad, zero, axis=0)
        blocks = op.Concat(B, Hkv, op.Add(nb, R), b, D, axis=0)
        R1 = op.Add(R, one)
        nb0 = op.Squeeze(nb, zero)
        idx = op.Reshape(op.Add(op.Unsqueeze(op.Range(op.Constant(value_int=0), nb0, op.Constant(value_int=1)), [1]),
                                op.Range(op.Constant(value_int=0), op.Squeeze(R1, zero), op.Constant(value_int=1))),
                         op.Constant(value_ints=[-1]))
        kbshape = op.Concat(B, Hkv, one, nb, op.Mul(R1, b), D, axis=0)        # [B, Hkv, 1, nb, (R+1)·b, D]
        kb = op.Reshape(op.Gather(op.Reshape(op.Pad(op.Cast(K, to=1), kvp_pads), blocks), idx, axis=2), kbshape)
        kbt = op.Cast(op.Transpose(kb, perm=[0, 1, 2, 3, 5, 4]), to=11)                   # [B, Hkv, 1, nb, D, (R+1)·b]
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
        bias = op.Where(allowed, op.Cast(op.Constant(value_float=0.0), to=11),
                        op.Cast(op.Constant(value_float=float("-inf")), to=11))     # [nb, b, (R+1)·b]
        qb = op.Mul(qb, op.Reciprocal(op.Sqrt(op.Cast(D, to=11))))
        # from BLOCKS_CHUNKED_FROM blocks on, the blocks go in BLOCK_CHUNKS pieces (scores stay in cache)
        if op.Less(nb, op.Constant(value_ints=[BLOCKS_CHUNKED_FROM])):
            ob = BlockAttend(qb, kbt, vb, bias)
        else:
            q0, q1, q2, q3, q4, q5, q6, q7 = op.Split(qb, axis=3, num_outputs=BLOCK_CHUNKS)
            k0, k1, k2, k3, k4, k5, k6, k7 = op.Split(kbt, axis=3, num_outputs=BLOCK_CHUNKS)
            v0, v1, v2, v3, v4, v5, v6, v7 = op.Split(vb, axis=3, num_outputs=BLOCK_CHUNKS)
            m0, m1, m2, m3, m4, m5, m6, m7 = op.Split(bias, axis=0, num_outputs=BLOCK_CHUNKS)
            ob = op.Concat(BlockAttend(q0, k0, v0, m0), BlockAttend(q1, k1, v1, m1), BlockAttend(q2, k2, v2, m2),
                           BlockAttend(q3, k3, v3, m3), BlockAttend(q4, k4, v4, m4), BlockAttend(q5, k5, v5, m5),
                           BlockAttend(q6, k6, v6, m6), BlockAttend(q7, k7, v7, m7), axis=3)
        out = op.Slice(op.Reshape(ob, op.Concat(B, H, op.Mul(nb, b), D, axis=0)), zero, n, two)
    return op.CastLike(out, like)


@script(_ds, default_opset=op)
def CachedAttention(Q: FLOAT, K: FLOAT, V: FLOAT, QStart: INT64, KStart: INT64, window: int) -> FLOAT:
    """depthscale.window_attention.positioned_attention: float64 inside, query heads grouped by the KV head
    they share (broadcast, no expanded K/V). K is transposed before its Cast to float64, so no Transpose
    feeds a float64 MatMul (ONNX Runtime 1.21-1.25 fuse that pair into a FusedMatMul without a float64
    kernel)."""
    one = op.Constant(value_ints=[1])
    B = op.Shape(Q, start=0, end=1)
    H = op.Shape(Q, start=1, end=2)
    c = op.Shape(Q, start=2, end=3)
    D = op.Shape(Q, start=3, end=4)
    Hkv = op.Shape(K, start=1, end=2)
    S = op.Shape(K, start=2, end=3)
    G = op.Div(H, Hkv)
    like = op.Identity(Q)                                   # the result's dtype: the model's precision
    step = op.Constant(value_int=1)
    zero = op.Constant(value_int=0)
    qpos = op.Add(op.Unsqueeze(QStart, one), op.Unsqueeze(op.Range(zero, op.Squeeze(c), step), [0]))   # [B, c]
    kpos = op.Add(op.Unsqueeze(KStart, one), op.Unsqueeze(op.Range(zero, op.Squeeze(S), step), [0]))   # [B, S]
    dist = op.Sub(op.Unsqueeze(qpos, [2]), op.Unsqueeze(kpos, one))                                     # [B, c, S]
    w = op.Constant(value_int=window)
    allowed = op.And(op.And(op.GreaterOrEqual(dist, zero), op.Less(dist, w)),
                     op.GreaterOrEqual(op.Unsqueeze(kpos, one), zero))
    bias = op.Unsqueeze(op.Where(allowed, op.Cast(op.Constant(value_float=0.0), to=11),
                                 op.Cast(op.Constant(value_float=float("-inf")), to=11)), [1, 2])   # [B,1,1,c,S]
    scale = op.Reciprocal(op.Sqrt(op.Cast(D, to=11)))
    q = op.Mul(op.Reshape(op.Cast(Q, to=11), op.Concat(B, Hkv, G, c, D, axis=0)), scale)            # [B,Hkv,G,c,D]
    kt = op.Unsqueeze(op.Cast(op.Transpose(K, perm=[0, 1, 3, 2]), to=11), [2])                     # [B,Hkv,1,D,S]
    v = op.Unsqueeze(op.Cast(V, to=11), [2])                                                       # [B,Hkv,1,S,D]
    probs = op.Softmax(op.Add(op.MatMul(q, kt), bias), axis=-1)
    out = op.Reshape(op.MatMul(probs, v), op.Concat(B, H, c, D, axis=0))
    return op.CastLike(out, like)


@script(_ds, default_opset=op)
def ExactLinear(X: FLOAT, W: FLOAT) -> FLOAT:
    """depthscale.exact_math.exact_linear: X [..., in] · Wᵀ in float64, rounded once to X's dtype. W is
    transposed before its Cast (no Transpose feeds a float64 MatMul; see CachedAttention)."""
    y = op.MatMul(op.Cast(X, to=11), op.Cast(op.Transpose(W, perm=[1, 0]), to=11))
    return op.CastLike(y, X)


BODY_HELPERS = ("UnpackTernary", "QuantizedProduct", "GatedProduct", "CausalChunk", "BlockAttend")  # called by bodies
FUNCTIONS = (BitLinear, WindowAttention, CachedAttention, ExactLinear, UnpackTernary, QuantizedProduct, GatedProduct, CausalChunk,
             BlockAttend)


def _gated_bitlinear(bitlinear: onnx.FunctionProto) -> onnx.FunctionProto:
    """GatedBitLinear's body: BitLinear's, calling GatedProduct where it calls QuantizedProduct."""
    gated = onnx.FunctionProto()
    gated.CopyFrom(bitlinear)
    gated.name = "GatedBitLinear"

    def rename(nodes):
        for node in nodes:
            if node.domain == DOMAIN and node.op_type == "QuantizedProduct":
                node.op_type = "GatedProduct"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rename(attr.g.node)
    rename(gated.node)
    return gated


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
        if proto.name == "BitLinear":
            protos.append(_gated_bitlinear(proto))
    return protos
