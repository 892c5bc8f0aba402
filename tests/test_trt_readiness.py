"""The static TensorRT-readiness check, true to the real parser: the clean export is clean in the check
and in a real TensorRT-RTX parse and build; each rule has a planted violation that the check flags and
that TensorRT-RTX's parser (or, for the loop's carried shapes, its builder) refuses or alters.

The real parses run in one subprocess (a refused build can abort its process). They need
tensorrt-rtx (the [tensorrt-rtx] extra, in [dev]); without it only the static half runs."""

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import small_model
from depthscale_export.engines.readiness import NONZERO_NOTE, PARSER_UNSUPPORTED_OPS, RULES, check_tensorrt_readiness
from depthscale_export.engines.rtx import tensorrt_rtx_unavailable
from depthscale_export.graph.export import export_onnx

NO_RTX = tensorrt_rtx_unavailable()
needs_rtx = pytest.mark.skipif(NO_RTX is not None, reason=f"no real parser to cross-check with: {NO_RTX}")

VERDICTS = """
import json, sys
from depthscale_export.engines.network import Profile, parser_verdict
from depthscale_export.engines.rtx import _kernel_compiler
from depthscale_runtime import rtx_plugins
rtx_plugins.register(_kernel_compiler(86))
out = {}
for arg in sys.argv[1:]:
    path, build = arg.split("=")
    out[path] = parser_verdict(rtx_plugins.trt, __import__("pathlib").Path(path), Profile.default(64),
                               ["sm86"] if build == "build" else None)
print(json.dumps(out))
"""


def loop_of(model):
    return next(n for n in model.graph.node if n.op_type == "Loop")


def body_of(model):
    return next(a.g for a in loop_of(model).attribute if a.name == "body")


def custom_nodes(model):
    return [n for n in body_of(model).node if n.domain == "depthscale"]


def failing(report):
    return {c["check"]: c["problems"] for c in report["checks"] if not c["passed"]}


# ---- the planted violations, one per rule: (rule, plant(model) -> model, what the parser does) ----

def drop_namespace(m):
    node = custom_nodes(m)[0]
    keep = [a for a in node.attribute if a.name != "plugin_namespace"]
    del node.attribute[:]
    node.attribute.extend(keep)
    return m


def collide(m):
    for n in custom_nodes(m):
        if n.op_type == "WindowAttention":
            n.op_type = "Attention"
    return m


def no_plugin(m):
    node = next(n for n in custom_nodes(m) if n.op_type == "BitLinear")
    node.op_type = "BitLinearV2"
    body = copy.deepcopy(next(f for f in m.functions if f.name == "BitLinear"))
    body.name = "BitLinearV2"
    m.functions.append(body)
    return m


def bitshift(m):
    m.graph.initializer.append(helper.make_tensor("one_u8", TensorProto.UINT8, [], [1]))
    m.graph.node.append(helper.make_node("BitShift", ["one_u8", "one_u8"], ["shifted"], direction="LEFT", name="shift"))
    m.graph.output.append(helper.make_tensor_value_info("shifted", TensorProto.UINT8, []))
    return m


def uint16(m):
    m.graph.node.extend([helper.make_node("Cast", ["tol"], ["tol_u16"], to=TensorProto.UINT16, name="to_u16"),
                         helper.make_node("Cast", ["tol_u16"], ["tol_back"], to=TensorProto.FLOAT, name="back")])
    m.graph.output.append(helper.make_tensor_value_info("tol_back", TensorProto.FLOAT, []))
    return m


def float64_head(m):
    """The head (ExactLinear: X [.., d], W [V, d]) inlined as plain ONNX in float64, rounded once:
    Cast to DOUBLE -> MatMul -> Cast to FLOAT."""
    head = next(n for n in m.graph.node if "logits" in n.output)
    assert head.op_type == "ExactLinear"
    a, b = head.input
    m.graph.node.remove(head)
    m.graph.node.extend([helper.make_node("Cast", [a], ["a64"], to=TensorProto.DOUBLE, name="head_a64"),
                         helper.make_node("Transpose", [b], ["bt"], perm=[1, 0], name="head_wt"),
                         helper.make_node("Cast", ["bt"], ["b64"], to=TensorProto.DOUBLE, name="head_b64"),
                         helper.make_node("MatMul", ["a64", "b64"], ["logits64"], name="head_matmul64"),
                         helper.make_node("Cast", ["logits64"], ["logits"], to=TensorProto.FLOAT, name="head_round")])
    m.graph.value_info.extend([helper.make_tensor_value_info(v, TensorProto.DOUBLE, None) for v in ("a64", "logits64")])
    return m


def int8_weight(m):
    """One BitLinear's packed weight stored as int8: the parser keeps int8, the plugin declares int32."""
    node = next(n for n in custom_nodes(m) if n.op_type == "BitLinear")
    init = next(i for i in m.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.int8), init.name))
    return m


def grow_carried(m):
    body = body_of(m)
    out = next(o for o in body.output[1:] if o.type.tensor_type.shape.dim and
               o.type.tensor_type.shape.dim[-1].dim_value > 1 and o.type.tensor_type.elem_type == TensorProto.FLOAT)
    body.node.append(helper.make_node("Concat", [out.name, out.name], [out.name + "_grown"], axis=-1, name="grow"))
    out.name += "_grown"
    out.type.tensor_type.shape.dim[-1].dim_value *= 2
    return m


def scan_output(m):
    body = body_of(m)
    body.output.append(copy.deepcopy(body.output[1]))
    loop_of(m).output.append("scanned")
    return m


def trip_count(value):
    def plant(m):
        m.graph.initializer.append(helper.make_tensor("trip_M", TensorProto.INT64, [], [value]))
        loop_of(m).input[0] = "trip_M"
        return m
    return plant


PLANTED = {RULES[0]: drop_namespace, RULES[1]: collide, RULES[2]: no_plugin, RULES[3]: bitshift, RULES[4]: uint16,
           RULES[5]: float64_head, RULES[6]: int8_weight, RULES[7]: grow_carried, RULES[8]: scan_output,
           RULES[9]: trip_count(2**31)}


def dense_model():
    model = small_model().packed()
    model.active_set = False
    return model


@pytest.fixture(scope="module")
def exported():
    """The form TensorRT gets: the dense Loop (an active-set artifact's plans are built from it)."""
    return ir.to_proto(export_onnx(dense_model(), cap=6))


@pytest.fixture(scope="module")
def exported_active():
    """The artifact's default form: a dense Loop, then an active-set Loop (NonZero inside)."""
    return ir.to_proto(export_onnx(small_model().packed(), cap=6))


@pytest.fixture(scope="module")
def verdicts(exported, exported_active, tmp_path_factory):
    """The real TensorRT-RTX verdict on the clean export (parsed and built) and on every planted one."""
    if NO_RTX:
        pytest.skip(f"no real parser to cross-check with: {NO_RTX}")
    root = tmp_path_factory.mktemp("planted")
    args = []
    models = {"clean": exported, **{rule: plant(copy.deepcopy(exported)) for rule, plant in PLANTED.items()},
              "trip count 16": trip_count(16)(copy.deepcopy(exported)), "active set": exported_active}
    for i, (name, model) in enumerate(models.items()):
        onnx.save(model, root / f"{i}.onnx")
        args.append(f"{root / f'{i}.onnx'}={'build' if name in ('clean', RULES[7]) else 'parse'}")
    proc = subprocess.run([sys.executable, "-c", VERDICTS, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: results[str(root / f"{i}.onnx")] for i, name in enumerate(models)}


def test_clean_export_is_clean_in_the_check(exported):
    report = check_tensorrt_readiness(exported)
    assert report["passed"], failing(report)
    assert [c["check"] for c in report["checks"]] == list(RULES)
    notes = next(c for c in report["checks"] if c["check"] == RULES[6])["notes"]
    assert "BitLinear.W: uint8 -> int32 (declared int32)" in notes      # the conversion the parser makes


@needs_rtx
def test_clean_export_is_clean_for_the_parser(exported, verdicts):
    v = verdicts["clean"]
    assert v["parsed"] and v["built"], v["errors"]
    custom = [n.name for n in custom_nodes(exported)] + [n.name for n in exported.graph.node if n.domain == "depthscale"]
    assert all(v["layers"][name] == "PLUGIN_V3" for name in custom)
    assert sum(t == "PLUGIN_V3" for t in v["layers"].values()) == len(custom)
    assert {f"{k} input 1: uint8 -> int32" for k in ("BitLinear", "GatedBitLinear")} == {
        c.rsplit(" (", 1)[0] for c in v["plugin_input_conversions"]}
    assert v["count_trip_limits"] == 0                                    # the loop ends by its condition


@needs_rtx
def test_active_set_loop_is_noted_and_the_rtx_parser_wants_a_nonzero_plugin(exported_active, verdicts):
    """TensorRT-RTX 1.7 imports NonZero only through a plugin it does not ship: the check says so in a note
    (full TensorRT has a NonZero layer), and the export builds plans from the dense form instead."""
    report = check_tensorrt_readiness(exported_active)
    assert report["passed"], failing(report)
    assert NONZERO_NOTE in next(c for c in report["checks"] if c["check"] == RULES[3])["notes"]
    v = verdicts["active set"]
    assert not v["parsed"] and any("NonZero" in e for e in v["errors"]), v


@pytest.mark.parametrize("rule", RULES)
def test_planted_violation_is_flagged(exported, rule):
    report = check_tensorrt_readiness(PLANTED[rule](copy.deepcopy(exported)))
    assert rule in failing(report), failing(report)


@needs_rtx
@pytest.mark.parametrize("rule", RULES)
def test_planted_violation_is_refused_or_altered_by_the_parser(exported, verdicts, rule):
    v = verdicts[rule]
    if rule in (RULES[0], RULES[2]):      # the body is imported instead of a plugin: BitShift/BitwiseAnd refused
        assert not v["parsed"] and ("BitwiseAnd" in v["errors"][0] or "BitShift" in v["errors"][0])
    elif rule == RULES[1]:                # ONNX's Attention importer takes the nodes: attention layers, no plugin
        renamed = [n.name for n in custom_nodes(exported) if n.op_type == "WindowAttention"]
        assert v["parsed"] and renamed and all(name not in v["layers"] for name in renamed)
        assert all(v["layers"][f"{name}_AttentionInput"] == "ATTENTION_INPUT" for name in renamed)
    elif rule in (RULES[3], RULES[4], RULES[8]):
        assert not v["parsed"], v
        assert {RULES[3]: "BitShift", RULES[4]: "Unsupported data type", RULES[8]: "scan output"}[rule] in v["errors"][0]
    elif rule == RULES[5]:                # float64 silently lowered to float32
        assert v["parsed"] and v["dtypes"]["a64"] == "float32" and v["dtypes"]["logits64"] == "float32"
    elif rule == RULES[6]:                # the plugin would get int8 where it declares int32
        node = next(n for n in custom_nodes(exported) if n.op_type == "BitLinear")
        assert v["parsed"] and v["plugin_inputs"][node.name][1] == "int8"
    elif rule == RULES[7]:                # the builder refuses a recurrence whose shape changes
        assert v["parsed"] and not v["built"] and any("Recurrence" in e for e in v["errors"])
    elif rule == RULES[9]:                # a trip count past int32 is dropped (16 is kept)
        assert v["parsed"] and v["count_trip_limits"] == 0 and verdicts["trip count 16"]["count_trip_limits"] == 1


@needs_rtx
def test_unsupported_op_list_is_the_parsers():
    script = ("import json, onnx; from depthscale_runtime.tensorrt_rtx import import_tensorrt_rtx; "
              "trt = import_tensorrt_rtx(); log = trt.Logger(trt.Logger.ERROR); b = trt.Builder(log); "
              "p = trt.OnnxParser(b.create_network(0), log); "
              "names = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ('', 'ai.onnx')}; "
              "print(json.dumps(sorted(n for n in names if not p.supports_operator(n))))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == PARSER_UNSUPPORTED_OPS
