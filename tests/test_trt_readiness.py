"""The static TensorRT-readiness check: clean on a real export, and each planted violation reported."""

import copy

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from conftest import small_model
from depthscale_export.graph.export import export_onnx
from depthscale_export.engines.readiness import check_tensorrt_readiness


@pytest.fixture(scope="module")
def exported():
    return ir.to_proto(export_onnx(small_model().packed(), cap=6))


def failing(report):
    return {c["check"]: c["problems"] for c in report["checks"] if not c["passed"]}


def loop_of(model):
    return next(n for n in model.graph.node if n.op_type == "Loop")


def body_of(model):
    return next(a.g for a in loop_of(model).attribute if a.name == "body")


def custom_nodes(model):
    return [n for n in body_of(model).node if n.domain == "depthscale"]


def test_real_export_is_ready(exported):
    report = check_tensorrt_readiness(exported, 6)
    assert report["passed"], failing(report)
    assert len(report["checks"]) == 6


def test_missing_plugin_attribute(exported):
    m = copy.deepcopy(exported)
    node = custom_nodes(m)[0]
    keep = [a for a in node.attribute if a.name != "plugin_namespace"]
    del node.attribute[:]
    node.attribute.extend(keep)
    problems = failing(check_tensorrt_readiness(m, 6))["custom nodes carry the plugin attributes"]
    assert len(problems) == 1 and "plugin_namespace" in problems[0]


def test_op_type_collision(exported):
    m = copy.deepcopy(exported)
    for n in custom_nodes(m):
        if n.op_type == "WindowAttention":
            n.op_type = "Attention"
    problems = failing(check_tensorrt_readiness(m, 6))["no custom op_type collides with an ONNX op name"]
    assert problems and all("Attention" in p for p in problems)


def test_carried_shape_change(exported):
    m = copy.deepcopy(exported)
    body = body_of(m)
    out = body.output[2]                                        # the hidden state s
    out.type.tensor_type.shape.dim[-1].dim_value += 1
    problems = failing(check_tensorrt_readiness(m, 6))["Loop-carried shapes do not change across iterations"]
    assert len(problems) == 1 and out.name in problems[0]


def test_scan_output(exported):
    m = copy.deepcopy(exported)
    body = body_of(m)
    body.output.append(copy.deepcopy(body.output[1]))
    loop_of(m).output.append("scanned")
    assert "the Loop has no scan outputs" in failing(check_tensorrt_readiness(m, 6))


def test_trip_count_beyond_int32(exported):
    assert "the trip count fits in int32" in failing(check_tensorrt_readiness(exported, 2**31))


def test_unsupported_dtype(exported):
    m = copy.deepcopy(exported)
    m.graph.node.append(helper.make_node("Cast", ["tol"], ["tol_f64"], to=TensorProto.DOUBLE, name="to_double"))
    m.graph.value_info.append(helper.make_tensor_value_info("tol_f64", TensorProto.DOUBLE, []))
    problems = failing(check_tensorrt_readiness(m, 6))["every dtype is one TensorRT supports"]
    assert any("DOUBLE" in p for p in problems)
