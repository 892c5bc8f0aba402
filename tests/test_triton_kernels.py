"""Triton kernels against the eager ops, under Triton's interpreter on CPU (a subprocess, so that
TRITON_INTERPRET is set before triton is imported)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install 'depthscale[kernels]')")


def test_kernels_match_eager_ops_under_the_interpreter():
    proc = subprocess.run([sys.executable, "-m", "depthscale.kernels.check", "--seed", "3"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    results = json.loads(proc.stdout)
    assert proc.returncode == 0, results
    bitlinear = [r for r in results if r["kernel"].startswith("bitlinear")]
    assert {r["path"] for r in bitlinear} == {"prefill", "decode", "fused"}
    assert all(r["bit_exact"] for r in bitlinear)
    assert any("gated" in r["shape"] for r in bitlinear) and any("float16" in r["shape"] for r in bitlinear)
    attention = [r for r in results if r["kernel"] == "window_attention"]
    assert len(attention) == 10
    assert all(r["max_abs_err"] == 0.0 for r in attention if r["f64"])          # float64, as the eager op
    assert all(r["max_abs_err"] <= 1e-5 for r in attention if not r["f64"])


def test_cuda_eager_path_needs_a_gpu():
    import torch

    from depthscale.kernels import register_cuda_kernels
    if torch.cuda.is_available():
        pytest.skip("CUDA present: this test covers the CPU-only case")
    assert register_cuda_kernels() is False
