"""Full TensorRT as far as it runs here. Its builder cannot be installed in this workplace and this
machine has no GPU, so: the AOT kernels are compiled to PTX for sm_90 on the CPU (Triton's own
compiler), the export stage and the runtime backend are checked on the path that refuses, with its
reason; the tests that need TensorRT or CUDA skip and say "not verified here". (TensorRT-RTX, which
does build here: tests/test_tensorrt_rtx.py.)"""

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

import depthscale_runtime
from depthscale import demo_checkpoint
from depthscale_export import export
from depthscale_export.engines.network import Profile
from depthscale_export.engines.tensorrt import tensorrt_unavailable
from depthscale_runtime import BackendUnavailableError

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "demo-onnx"
    export(demo_checkpoint(), out, shapes=[(1, 7)], iters=[0, 4], tols=[0.0], decode_shapes=[(1, 2, 2)], quiet=True,
           engines=False)
    return out


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'depthscale[kernels]')")
@pytest.mark.parametrize("dtype,gated", [("fp32", False), ("fp16", True), ("bf16", False)])
def test_bitlinear_aot_kernel_compiles_to_ptx_for_sm90(dtype, gated):
    from depthscale.kernels import aot
    kernel = aot.bitlinear(dtype, gated, arch=90)
    assert f".entry {kernel.name}" in kernel.ptx and ".target sm_90" in kernel.ptx
    assert kernel.num_warps > 0 and kernel.blocks["BM"] >= 16 and kernel.scratch_pointers == 2
    # no contracted float32 multiply-adds: each op rounds as in the eager op (FMAs in float64 are exp's own)
    assert "fma.rn.f32" not in kernel.ptx and "mul.rn.f32" in kernel.ptx


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'depthscale[kernels]')")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_window_attention_aot_kernel_compiles_to_ptx_for_sm90(dtype):
    from depthscale.kernels import aot
    kernel = aot.window_attention(dtype, head_dim=16, arch=90)
    assert f".entry {kernel.name}" in kernel.ptx and ".f64" in kernel.ptx          # float64 inside, as eager
    with pytest.raises(ValueError, match="dtype must be one of"):
        aot.window_attention("fp8", 16)


def test_export_records_why_no_engine_was_built(artifact):
    section = json.loads((artifact / "manifest.json").read_text())["tensorrt"]
    why = "not asked for (engines=False)"
    assert section == {"built": False, "engines": [], "skipped": {"tensorrt-rtx": why, "tensorrt": why}}
    assert not (artifact / "engines").exists()


def test_cli_reports_the_skip_and_refuses_a_bad_profile(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "depthscale_export.cli", str(demo_checkpoint()), "-o",
                           str(tmp_path / "a"), "--shapes", "1x3", "--iters", "0,1", "--tols", "0", "--no-decode", "--no-engines"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for flavor in ("tensorrt-rtx", "tensorrt"):
        assert f"[depthscale-export] {flavor} engines skipped: not asked for (engines=False)" in proc.stderr
    assert "TensorRT engines: none (skipped tensorrt-rtx: not asked for" in proc.stderr
    assert not (tmp_path / "a" / "engines").exists()
    proc = subprocess.run([sys.executable, "-m", "depthscale_export.cli", str(demo_checkpoint()), "-o",
                           str(tmp_path / "b"), "--trt-profile", "8x1:1x512:1x4096"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "min <= opt <= max" in proc.stderr and not (tmp_path / "b").exists()


def test_profile_parsing():
    assert Profile.parse("1x1:2x256:8x1024") == Profile(min=(1, 1), opt=(2, 256), max=(8, 1024))
    assert Profile.default(4096) == Profile(min=(1, 1), opt=(1, 512), max=(8, 4096))
    for bad in ("1x1:1x512", "1x0:1x1:1x1", "a:b:c"):
        with pytest.raises(ValueError):
            Profile.parse(bad)


def test_runtime_tensorrt_backend_refuses_clearly(artifact, tmp_path):
    assert depthscale_runtime.load(artifact).backend == "onnxruntime"           # auto falls back
    # an artifact without plans: the error says why its export built none
    with pytest.raises(BackendUnavailableError, match="has no TensorRT engines .*tensorrt: not asked for"):
        depthscale_runtime.load(artifact, backend="tensorrt")
    # an artifact that carries a plan for another machine: the error names what it expected and found
    other = tmp_path / "other"
    shutil.copytree(artifact, other)
    plan_dir = other / "engines" / "sm90-trt10.9.0"
    plan_dir.mkdir(parents=True)
    (plan_dir / "model.plan").write_bytes(b"not a plan")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tensorrt"] = {"built": True, "engines": [{"dir": "engines/sm90-trt10.9.0", "plan": "model.plan",
                                                        "flavor": "tensorrt", "graph": "model.onnx"}], "skipped": {}}
    manifest["files"]["engines/sm90-trt10.9.0/model.plan"] = {
        "sha256": hashlib.sha256(b"not a plan").hexdigest(), "bytes": 10}
    (other / "manifest.json").write_text(json.dumps(manifest))
    if HAS_TENSORRT:
        pytest.skip("tensorrt is installed: this case covers a machine without it")
    with pytest.raises(BackendUnavailableError, match="this artifact's engines are engines/sm90-trt10.9.0"):
        depthscale_runtime.load(other, backend="tensorrt")


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed: its plugins are not verified here "
                                             "(TensorRT's builder cannot be installed in this workplace)")
def test_plugins_register():
    import tensorrt.plugin as trtp

    from depthscale_export.engines import plugins  # noqa: F401
    assert {"depthscale::BitLinear", "depthscale::GatedBitLinear", "depthscale::WindowAttention"} <= set(trtp.QDP_REGISTRY)


@pytest.mark.skipif(tensorrt_unavailable() is not None,
                    reason=f"full TensorRT not verified here (no GPU): {tensorrt_unavailable()}")
def test_engine_is_built_and_gated(artifact, tmp_path):
    report = export(demo_checkpoint(), tmp_path / "engine", shapes=[(1, 7), (2, 33)], iters=[0, 4], quiet=True)
    assert report["tensorrt"]["built"] and report["tensorrt"]["parity"]["passed"]
