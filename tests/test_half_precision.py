"""Half-precision export (--precision fp16 | bf16): the precision lives in the ONNX graph, the gate checks
it against eager in the same precision, and the runtime says plainly what it cannot run."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import depthscale_runtime
from depthscale import demo_checkpoint, load_checkpoint
from depthscale_export import export
from depthscale_export.gate.op_check import check_ops
from depthscale_runtime import BackendUnavailableError

DEMO = str(demo_checkpoint())
CLI = [sys.executable, "-m", "depthscale_export.cli"]
GRID = dict(shapes=[(1, 7), (3, 40)], iters=[0, 1, 16], tols=[0.0, 0.003], decode_shapes=[(2, 6, 12)], quiet=True,
            engines=False)   # the fp16 engine: tests/test_tensorrt_rtx.py


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "demo-fp16"
    proc = subprocess.run([*CLI, DEMO, "-o", str(out), "--precision", "fp16", "--shapes", "1x7,3x40", "--iters",
                           "0,1,16", "--tols", "0,0.003", "--decode-shapes", "1x1+8,3x6+12", "--no-engines", "--json"], capture_output=True, text=True, timeout=600)
    return out, proc


def test_model_to_precision_keeps_scales_float32():
    model = load_checkpoint(DEMO).packed().to_precision("fp16")
    assert model.precision == "fp16" and model.embed.weight.dtype == torch.float16
    assert model.rope_cos.dtype == torch.float16
    assert all(m.gamma.dtype == torch.float32 for m in model.modules() if hasattr(m, "gamma"))
    with torch.no_grad():
        out = model(torch.tensor([[0, 1, 2, 2, 1]]), 4, 0.0)
    assert out.logits.dtype == torch.float16 and out.iterations.dtype == torch.int64
    with pytest.raises(ValueError, match="precision must be one of"):
        load_checkpoint(DEMO).packed().to_precision("fp8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_custom_ops_are_bit_exact_in_half_precision(precision):
    results = check_ops(18, seed=5, precision=precision)
    assert all(r["passed"] for r in results), results
    assert all(r["bit_exact"] for r in results if r["exact_required"])
    assert all(precision in r["case"] for r in results)


def test_fp16_export_passes_its_gate_with_the_precision_in_the_graph(fp16):
    out, proc = fp16
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["status"] == "passed"
    parity = manifest["parity"]
    assert parity["iterations_equal"] and parity["first_diverging_iteration"] is None
    assert parity["tolerances"] == {"atol": 1e-3, "rtol": 2e-3, "state_atol": 4e-3}
    assert "rounded after each" in parity["ort_graph"]
    native = parity["native_onnxruntime"]                  # reported, not gated
    assert native["ran"] and native["samples"] == parity["samples"]
    decode = parity["decode"]                               # prefill and decode gated through per-op rounding too
    assert decode["passed"] and decode["iterations_equal"] and decode["samples"] == 4
    model = onnx.load(str(out / "model.onnx"))
    dtypes = {i.name: i.data_type for i in model.graph.initializer}
    assert dtypes["model.embed.weight"] == onnx.TensorProto.FLOAT16
    assert {d for n, d in dtypes.items() if n.endswith("w_packed")} == {onnx.TensorProto.UINT8}
    assert {d for n, d in dtypes.items() if n.endswith("gamma")} == {onnx.TensorProto.FLOAT}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    assert manifest["tensorrt_readiness"]["passed"]


def test_fp16_artifact_runs_in_the_runtime_and_in_depthscale_check(fp16):
    out, _ = fp16
    rt = depthscale_runtime.load(out)
    result = rt.run(np.array([0, 1, 2, 2, 1, 2]), max_iters=8, tol=0.0)
    assert result.logits.dtype == np.float32 and result.logits.shape == (6, rt.config["vocab_size"])
    proc = subprocess.run([sys.executable, "-m", "depthscale_export.check", str(out), "--against", DEMO],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_fp16_gate_still_catches_a_wrong_graph(tmp_path):
    """A planted defect (a core FFN scale x1.5 inside the ONNX) fails the fp16 gate at its own tolerances."""
    report = export(DEMO, tmp_path / "bad", precision="fp16", graph_passes=[_scale_core_ffn], **{**GRID, "decode": False})
    assert report["status"] == "failed" and report["parity"]["first_diverging_iteration"] == 1


def _scale_core_ffn(model):
    (gamma,) = [v for name, v in model.graph.initializers.items() if name.startswith("model.core.") and
                name.endswith("ffn.w_out.gamma")][:1]
    import onnx_ir as ir
    gamma.const_value = ir.tensor(gamma.const_value.numpy() * np.float32(1.5), name=gamma.name)


def test_bf16_export_is_gated_through_per_op_rounding_and_the_runtime_says_why_it_cannot_run_it(tmp_path):
    report = export(DEMO, tmp_path / "bf16", precision="bf16", **GRID)
    parity = report["parity"]
    assert report["status"] == "passed" and report["precision"] == "bf16"
    assert parity["iterations_equal"] and parity["native_onnxruntime"] == {
        "ran": False, "why": "ONNX Runtime's CPU provider has no bfloat16 kernels"}
    assert not report["decode"]["available"] and "bfloat16" in report["decode"]["why"]
    model = onnx.load(str(tmp_path / "bf16" / "model.onnx"))
    assert {i.data_type for i in model.graph.initializer if i.name == "model.embed.weight"} == {onnx.TensorProto.BFLOAT16}
    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        depthscale_runtime.load(tmp_path / "bf16", backend="onnxruntime")


def test_unknown_precision_is_a_usage_error(tmp_path):
    proc = subprocess.run([*CLI, DEMO, "-o", str(tmp_path / "x"), "--precision", "fp8"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--precision" in proc.stderr and not (tmp_path / "x").exists()
