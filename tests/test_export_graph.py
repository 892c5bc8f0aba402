"""The ONNX graph the exporter builds, and the parity machinery, through the library API
(the depthscale-export CLI: test_export_cli.py)."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import small_model
from depthscale import demo_checkpoint, load_checkpoint
from depthscale_export.graph.export import export_onnx
from depthscale_export.graph.ops import BODY_HELPERS, DOMAIN
from depthscale_export.gate.op_check import check_ops
from depthscale_export.gate.parity import Sample, Tolerances, compare_samples, make_samples, per_iteration_check

ONNX_OP_NAMES = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(demo_checkpoint()).packed()


@pytest.fixture(scope="module")
def demo_onnx(demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    ir.save(export_onnx(demo, cap=16), str(path))
    return str(path)


def all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


def test_loops_custom_nodes_functions_and_checker(demo_onnx):
    onnx.checker.check_model(demo_onnx, full_check=True)
    model = onnx.load(demo_onnx)
    nodes = list(all_nodes(model.graph))
    assert sum(n.op_type == "Loop" for n in nodes) == 2                  # dense, then active-set
    custom = [n for n in nodes if n.domain == DOMAIN]
    assert {n.op_type for n in custom} == {"BitLinear", "GatedBitLinear", "WindowAttention", "CachedAttention",
                                           "ExactLinear"}
    assert not {n.op_type for n in custom} & ONNX_OP_NAMES
    for n in custom:
        attrs = {a.name: a for a in n.attribute}
        assert attrs["plugin_namespace"].s == b"depthscale" and attrs["plugin_version"].s == b"1"
    assert {f.name for f in model.functions} == {"BitLinear", "GatedBitLinear", "WindowAttention", "CachedAttention",
                                                 "ExactLinear", *BODY_HELPERS}
    assert all(f.domain == DOMAIN for f in model.functions)
    for loop in (n for n in nodes if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        assert not body.initializer and not [n for n in body.node if n.op_type == "Constant" and n.attribute[0].t.dims
                                             and np.prod(n.attribute[0].t.dims) > 64]
    assert [i.name for i in model.graph.input] == ["input_ids", "lengths", "max_iters", "tol"]
    assert [o.name for o in model.graph.output] == ["logits", "iterations"]
    assert not model.doc_string and not model.metadata_props
    assert not any(n.doc_string or n.metadata_props for n in nodes)


def test_bitlinear_weights_are_packed_2_bits(demo_onnx, demo):
    model = onnx.load(demo_onnx)
    inits = {i.name: i for i in model.graph.initializer}
    packed = [i for i in inits.values() if i.data_type == onnx.TensorProto.UINT8]
    bitlinears = [m for m in demo.modules() if type(m).__name__ == "PackedBitLinear"]
    assert len(packed) == len(bitlinears)
    weights = sum(m.in_features * m.out_features for m in bitlinears)
    assert sum(int(np.prod(i.dims)) for i in packed) * 8 / weights == pytest.approx(2.0, abs=0.01)
    assert not any(i.data_type == onnx.TensorProto.INT8 for i in inits.values())


def test_initializers_do_not_grow_with_the_T_cap():
    model = small_model().packed()
    # (scalars aside: a constant equal to the cap, 4 say, is shared with it in one graph and not the other)
    sizes = [sum(len(ir.to_proto(v.const_value).raw_data) for v in export_onnx(model, cap=cap).graph.initializers.values()
                 if v.const_value.size > 1) for cap in (4, 64)]
    assert sizes[0] == sizes[1]


def test_each_custom_op_body_matches_its_eager_op():
    results = check_ops(opset=18)
    assert all(r["passed"] for r in results)
    assert all(r["bit_exact"] for r in results)


def test_ort_matches_eager_in_distribution(demo, demo_onnx):
    report = compare_samples(demo, demo_onnx, make_samples([(1, 1), (3, 7), (2, 24)], [0, 1, 4, 16], [0.0, 0.003]),
                             Tolerances())
    rows = report["rows"]
    assert report["polygraphy_passed"] and all(r["passed"] for r in rows)
    assert any(r["early_exit"] for r in rows) and all(r["iterations_equal"] for r in rows)


def test_per_iteration_check_finds_where_a_planted_mismatch_starts(demo, demo_onnx, tmp_path):
    sample = Sample(2, 12, 6, 0.0)
    clean = per_iteration_check(demo, demo_onnx, sample, Tolerances())
    assert clean["first_diverging_iteration"] is None
    model = onnx.load(demo_onnx)
    gamma = next(i for i in model.graph.initializer if "core" in i.name and i.name.endswith("ffn.w_out.gamma"))
    value = onnx.numpy_helper.to_array(gamma) * 1.5
    gamma.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), gamma.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    broken = per_iteration_check(demo, str(bad), sample, Tolerances())
    assert broken["first_diverging_iteration"] == 1
    report = compare_samples(demo, str(bad), [sample], Tolerances())
    assert not report["rows"][0]["passed"] and not report["polygraphy_passed"]


@pytest.mark.parametrize("overrides", [{"mixer": "retention"}, {"reason_tokens": 2}, {"bitnet": False}])
def test_other_model_variants_export_and_match(overrides, tmp_path):
    model = small_model(**overrides).packed()
    path = tmp_path / "m.onnx"
    ir.save(export_onnx(model, cap=6), str(path))
    onnx.checker.check_model(str(path), full_check=True)
    report = compare_samples(model, str(path), make_samples([(1, 1), (2, 9)], [0, 3, 6], [0.0]), Tolerances())
    assert all(r["passed"] for r in report["rows"]), report["rows"]
    loops = 2 if model.active_set else 1                                  # retention, float linears: dense only
    assert sum(n.op_type == "Loop" for n in all_nodes(onnx.load(path).graph)) == loops


def test_python_api_exports_a_model_object(tmp_path):
    from depthscale.bitlinear import BitLinear
    from depthscale_export import BadInput, export
    model = small_model(max_seq_len=16)                     # the default shapes, shortened to fit it
    report = export(model, tmp_path / "art", iters=[0, 3], quiet=True, engines=False)
    assert isinstance(model.inject, BitLinear)              # the caller's model is not packed
    assert report["status"] == "passed" and report["parity"]["samples"] == 3 * 2 * 2   # shapes x iters x tols
    rows = json.loads((tmp_path / "art" / "reports" / "parity.json").read_text())["samples"]
    assert {(r["batch"], r["seq"]) for r in rows} == {(1, 1), (1, 7), (3, 16)}
    assert report["parity"]["decode"]["passed"] and report["parity"]["decode"]["samples"] == 2 * 2
    assert (tmp_path / "art" / "manifest.json").exists()
    with pytest.raises(BadInput, match="exists"):
        export(small_model(), tmp_path / "art", quiet=True)
    with pytest.raises(BadInput, match="unknown export option"):
        export(small_model(), tmp_path / "other", colour="blue")
