"""TensorRT-RTX for real, on this CPU: engines built by NVIDIA's builder from the demo export (fp32 and
fp16) and from a reference-config export, their layer inventory, plans and manifest entries; the
library link the project makes, in fresh processes. Running a plan needs an RTX-class GPU: not
verified here (the runtime's refusal is)."""

import hashlib
import json
import subprocess
import sys

import onnx
import pytest
import torch

import depthscale_runtime
from depthscale import DepthScaleConfig, DepthScaleModel, demo_checkpoint
from depthscale_export import export
from depthscale_export.engines.rtx import DEFAULT_TARGETS, TARGETS, tensorrt_rtx_unavailable
from depthscale_export.engines.tensorrt import tensorrt_unavailable
from depthscale_runtime import BackendUnavailableError

NO_RTX = tensorrt_rtx_unavailable()
pytestmark = pytest.mark.skipif(NO_RTX is not None, reason=f"TensorRT-RTX engines cannot be built here: {NO_RTX}")
GATE = dict(shapes=[(1, 5)], iters=[0, 2], tols=[0.0], decode_shapes=[(1, 3, 2)], quiet=True)
REFERENCE = dict(vocab_size=256, d_model=512, n_heads=8, n_kv_heads=2, d_ff=1536, window=128, prelude_layers=2,
                 core_layers=2, cross_layers=2, max_iters=8, max_seq_len=256)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("rtx") / "demo"
    return out, export(demo_checkpoint(), out, **GATE)


@pytest.fixture(scope="module")
def demo_fp16(tmp_path_factory):
    out = tmp_path_factory.mktemp("rtx") / "demo-fp16"
    return out, export(demo_checkpoint(), out, precision="fp16", rtx_targets=["sm86"], **GATE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rtx") / "reference"
    # the whole-pass graph only: the prefill and decode graphs' plans are the demo's tests (CI time)
    return out, export(DepthScaleModel(DepthScaleConfig(**REFERENCE)).eval(), out, rtx_targets=["sm89"], decode=False,
                       **GATE)


def rtx_engines(artifact, report) -> dict[str, dict]:
    """The TensorRT-RTX plans of the artifact, one per graph, checked against the manifest and their files."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["tensorrt"] == report["tensorrt"] and manifest["tensorrt"]["built"]
    entries = {e["graph"]: e for e in manifest["tensorrt"]["engines"] if e["flavor"] == "tensorrt-rtx"}
    assert set(entries) == {g["file"] for g in manifest["graphs"].values()}
    for entry in entries.values():
        data = (artifact / entry["dir"] / entry["plan"]).read_bytes()
        assert len(data) == entry["bytes"] > 1_000_000
        assert manifest["files"][f"{entry['dir']}/{entry['plan']}"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["tensorrt_rtx"] in entry["dir"] and entry["build_s"] > 0
        entry["data"] = data
    assert manifest["tensorrt"]["skipped"].get("tensorrt") == tensorrt_unavailable()
    return entries


def assert_inventory(artifact, entry):
    """Every custom node of the entry's graph is a plugin layer of the built engine, and the recursion one loop."""
    model = onnx.load(str(artifact / entry["graph"]))
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    custom = [n for g in (model.graph, loop.attribute[0].g) for n in g.node if n.domain == "depthscale"]
    inv = entry["inventory"]
    assert inv["custom_nodes"] == len(custom) == inv["plugin_layers"] and inv["custom_nodes_not_plugin_layers"] == []
    assert inv["loops"] == 1
    assert inv["plugins"] == {op: sum(n.op_type == op for n in custom) for op in {n.op_type for n in custom}}


@pytest.mark.parametrize("graph,attention", [("model.onnx", "WindowAttention"), ("prefill.onnx", "WindowAttention"),
                                             ("decode.onnx", "CachedAttention")])
def test_demo_engines(demo, graph, attention):
    artifact, report = demo
    entry = rtx_engines(artifact, report)[graph]
    assert entry["targets"] == list(DEFAULT_TARGETS) == list(TARGETS)
    assert_inventory(artifact, entry)
    assert entry["inventory"]["plugins"] == {"BitLinear": 11, "GatedBitLinear": 3, attention: 3, "ExactLinear": 1}
    assert entry["parser_conversions"] == ["BitLinear input 1: uint8 -> int32 (11 nodes)",
                                           "GatedBitLinear input 1: uint8 -> int32 (3 nodes)"]
    # the plugins' kernels are in the plan: PTX for the lowest target, float32 activations
    data = entry["data"]
    kernel = b".entry cached_attention_kernel" if attention == "CachedAttention" else b".entry window_attention_kernel"
    assert b".entry bitlinear_fused_kernel" in data and kernel in data and b".entry exact_linear_kernel" in data
    assert b".target sm_80" in data and b'"activation": "float32"' in data


def test_half_precision_export_builds_an_fp16_engine(demo_fp16):
    artifact, report = demo_fp16
    assert report["precision"] == "fp16"
    for entry in rtx_engines(artifact, report).values():
        assert entry["targets"] == ["sm86"] and b".target sm_86" in entry["data"]
        assert_inventory(artifact, entry)
        assert b'"activation": "float16"' in entry["data"] and b'"activation": "float32"' not in entry["data"]


def test_reference_config_engine(reference):
    artifact, report = reference
    entries = rtx_engines(artifact, report)
    for entry in entries.values():
        assert_inventory(artifact, entry)
    assert set(entries) == {"model.onnx"} and entries["model.onnx"]["targets"] == ["sm89"]
    assert entries["model.onnx"]["inventory"]["plugins"]["WindowAttention"] == 2 * 2 + 2   # prelude, core; cross


def test_bad_targets_are_refused(tmp_path):
    """(--no-engines: tests/test_tensorrt.py)"""
    proc = subprocess.run([sys.executable, "-m", "depthscale_export.cli", str(demo_checkpoint()), "-o", str(tmp_path / "b"),
                           "--rtx-targets", "sm86,sm75"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "sm75" in proc.stderr and "sm80, sm86" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_runtime_refuses_an_rtx_plan_without_a_gpu(demo):
    artifact, _ = demo
    assert depthscale_runtime.load(artifact).backend == "onnxruntime"         # auto falls back
    with pytest.raises(BackendUnavailableError, match=r"no NVIDIA GPU here .*this artifact's engines are "
                                                      r"engines/rtx1\.7"):
        depthscale_runtime.load(artifact, backend="tensorrt")


# ---- the library link, in fresh processes ----

TINY_PARSE = """
import sys
from pathlib import Path
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
node = helper.make_node("BitLinear", ["X", "W", "G"], ["Y"], domain="depthscale", name="bl", in_features=8,
                        plugin_namespace="depthscale", plugin_version="1")
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(np.full((3, 2), 85, np.uint8), "W"),
                           numpy_helper.from_array(np.array(1.0, np.float32), "G")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("depthscale", 1)])
onnx.save(model, sys.argv[1])
PREPARE
from depthscale_runtime import rtx_plugins
rtx_plugins.register()
trt = rtx_plugins.trt
log = trt.Logger(trt.Logger.ERROR)
network = trt.Builder(log).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = trt.OnnxParser(network, log)
print("parsed", parser.parse_from_file(sys.argv[1]), network.get_layer(network.num_layers - 1).type)
"""


def run_tiny_parse(tmp_path, prepare: str):
    return subprocess.run([sys.executable, "-c", TINY_PARSE.replace("PREPARE", prepare), str(tmp_path / "tiny.onnx")],
                          capture_output=True, text=True, timeout=300)


def test_library_link_is_made_by_the_project(tmp_path):
    proc = run_tiny_parse(tmp_path, "")
    assert proc.returncode == 0, proc.stderr
    assert "parsed True LayerType.PLUGIN_V3" in proc.stdout


def test_without_the_link_the_parser_aborts_the_process(tmp_path):
    """The control: the same parse with the link skipped dies in the parser's dlopen of the unversioned
    library. (If this starts passing, TensorRT-RTX's wheel no longer needs the link.)"""
    proc = run_tiny_parse(tmp_path, "import depthscale_runtime.tensorrt_rtx as l; l._link_dir = Path('/nonexistent')")
    assert proc.returncode != 0 and "terminate called" in proc.stderr


def test_importing_tensorrt_rtx_first_is_a_clear_error(tmp_path):
    proc = run_tiny_parse(tmp_path, "import tensorrt_rtx")
    assert proc.returncode == 1 and "RuntimeError: tensorrt_rtx was imported before depthscale could link" in proc.stderr
