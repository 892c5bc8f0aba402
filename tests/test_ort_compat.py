"""The artifact on the oldest ONNX Runtime it supports (its manifest's runtime.onnxruntime_min), in a
separate environment: outputs identical to the pinned ONNX Runtime's, and an older one refused.

The environment (a venv with only onnxruntime and numpy: the runtime is torch-free) is built once and
kept under ~/.cache/depthscale-test-venvs (DEPTHSCALE_TEST_VENVS overrides), keyed by the versions.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import depthscale_runtime
from depthscale_runtime import InvalidManifestError
from depthscale_runtime.manifest import validate
from depthscale_runtime.onnx_proto import inline_external, read_model

OLDEST_ORT = "1.21.1"           # the newest patch of the oldest supported minor (manifest: 1.21.0)
VENVS = Path(os.environ.get("DEPTHSCALE_TEST_VENVS", Path.home() / ".cache" / "depthscale-test-venvs"))

# runs under the old ONNX Runtime: a ragged batch with per-row budgets, and a generation
DRIVER = """
import sys, numpy as np, onnxruntime, depthscale_runtime
rt = depthscale_runtime.load(sys.argv[1], backend="onnxruntime")
rng = np.random.default_rng(0)
seqs = [rng.integers(0, rt.artifact.vocab_size, n).tolist() for n in (3, 40, 300)]
out = rt.run(seqs, max_iters=[2, 16, 9], tol=[0.0, 0.003, 0.01])
gen = rt.generate([s[:8] for s in seqs], max_new_tokens=5, max_iters=[16, 4, 9])
np.savez(sys.argv[2], logits=out.logits, iterations=out.iterations, tokens=gen.tokens, gen_iterations=gen.iterations)
print(onnxruntime.__version__)
"""


@pytest.fixture(scope="module")
def old_ort_python() -> Path:
    """python of a venv with onnxruntime OLDEST_ORT and this numpy (built in a temporary sibling, then
    renamed: a cached venv is complete or absent)."""
    key = f"ort-{OLDEST_ORT}-numpy-{np.__version__}-py{sys.version_info.major}.{sys.version_info.minor}"
    venv = VENVS / key
    if not (venv / "bin" / "python").exists():
        VENVS.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=VENVS))
        try:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=300)
            subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            f"onnxruntime=={OLDEST_ORT}", f"numpy=={np.__version__}"], check=True, timeout=600)
            tmp.rename(venv)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def runtime_path(tmp_path_factory) -> Path:
    """A directory holding only depthscale_runtime (for PYTHONPATH: no torch, no exporter)."""
    root = tmp_path_factory.mktemp("runtime-only")
    (root / "depthscale_runtime").symlink_to(Path(depthscale_runtime.__file__).parent)
    return root


def _run_old(python: Path, runtime_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(runtime_path)}
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=300, env=env)


def test_oldest_supported_onnxruntime_matches_the_pinned_one(demo_artifact, old_ort_python, runtime_path, tmp_path):
    needed = json.loads((demo_artifact / "manifest.json").read_text())["runtime"]["onnxruntime_min"]
    assert needed.split(".")[:2] == OLDEST_ORT.split(".")[:2]
    assert onnxruntime.__version__.split(".")[:2] != OLDEST_ORT.split(".")[:2]      # two different runtimes
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = _run_old(old_ort_python, runtime_path, str(driver), str(demo_artifact), str(tmp_path / "old.npz"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == OLDEST_ORT
    pinned = subprocess.run([sys.executable, str(driver), str(demo_artifact), str(tmp_path / "pinned.npz")],
                            capture_output=True, text=True, timeout=300)
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    old, new = np.load(tmp_path / "old.npz"), np.load(tmp_path / "pinned.npz")
    assert set(old.files) == {"logits", "iterations", "tokens", "gen_iterations"}
    for name in old.files:
        assert old[name].shape == new[name].shape and np.array_equal(old[name], new[name]), name
    assert len(np.unique(new["iterations"][new["iterations"] > 0])) > 2     # the budgets differed per row


def test_an_older_onnxruntime_is_refused_in_one_line(demo_artifact, old_ort_python, runtime_path, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(demo_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["runtime"]["onnxruntime_min"] = "1.22.0"          # the manifest is not in its own file table
    (art / "manifest.json").write_text(json.dumps(manifest))
    proc = _run_old(old_ort_python, runtime_path, "-m", "depthscale_runtime.cli", str(art), "--ids", "0,1,2",
                    "--backend", "onnxruntime")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"needs onnxruntime >= 1.22.0 (its manifest's runtime.onnxruntime_min); this one is {OLDEST_ORT}" in proc.stderr


@pytest.mark.parametrize("runtime", [{"onnxruntime_min": "1.21"}, {"onnxruntime_min": 1.21}, {"onnxruntime": "1.21.0"},
                                     {"onnxruntime_min": "1.21.0", "extra": 1}, "1.21.0"])
def test_the_manifest_schema_checks_the_runtime_field(demo_artifact, runtime):
    manifest = json.loads((demo_artifact / "manifest.json").read_text())
    validate(manifest)
    with pytest.raises(InvalidManifestError, match="manifest field runtime must be"):
        validate({**manifest, "runtime": runtime})


def test_inlined_external_data_runs_as_the_external_data(demo_artifact):
    """inline_external (the runtime's path on ONNX Runtimes that take no external data from memory), run
    on the pinned ONNX Runtime: the graph no longer references any file, and computes the same."""
    art = depthscale_runtime.open_artifact(demo_artifact)
    graph = art.graph_bytes("model")
    assert read_model(graph).external
    inlined = inline_external(graph, art.files)
    assert read_model(inlined).external == [] and len(inlined) > len(graph)
    session = onnxruntime.InferenceSession(inlined, providers=["CPUExecutionProvider"])   # no files: bytes only
    ids = np.array([[0, 1, 2, 2, 1, 0, 1], [2, 2, 1, 0, 0, 0, 0]], dtype=np.int64)
    feed = {"input_ids": ids, "lengths": np.array([7, 4]), "max_iters": np.array([16, 3]),
            "tol": np.array([0.003, 0.0], dtype=np.float32)}
    logits, iterations = session.run(None, feed)
    out = depthscale_runtime.load(demo_artifact, backend="onnxruntime").run(
        [ids[0], ids[1, :4]], max_iters=[16, 3], tol=[0.003, 0.0])
    assert np.array_equal(logits[0], out.logits[0]) and np.array_equal(logits[1, :4], out.logits[1, :4])
    assert np.array_equal(np.where(np.arange(7) < np.array([[7], [4]]), iterations, 0), out.iterations)
