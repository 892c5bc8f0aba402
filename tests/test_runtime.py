"""depthscale_runtime: loading and verification, validation, threads, no torch, depthscale-run/-check."""

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import depthscale_runtime as dr
from depthscale import demo_checkpoint, load_checkpoint
from depthscale_runtime.artifact import sha256

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(demo_checkpoint())


@pytest.fixture(scope="module")
def artifact(demo_artifact):
    return demo_artifact


@pytest.fixture(scope="module")
def runtime(artifact):
    return dr.load(artifact)


def copy_of(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def test_outputs_equal_bare_ort_and_match_eager(runtime, artifact):
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 3, (3, 40))
    ids[:, 0] = 0
    out = runtime.run(ids, max_iters=16, tol=0.003)
    assert runtime.backend == "onnxruntime" and "CPUExecutionProvider" in runtime.providers
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, iters = sess.run(None, {"input_ids": ids, "lengths": np.full(3, 40), "max_iters": np.full(3, 16),
                                    "tol": np.full(3, 0.003, np.float32)})
    assert np.array_equal(out.logits, logits) and np.array_equal(out.iterations, iters)
    with torch.no_grad():
        eager = load_checkpoint(DEMO)(torch.from_numpy(ids), 16, 0.003)
    tol = json.loads((artifact / "manifest.json").read_text())["parity"]["tolerances"]
    assert np.array_equal(out.iterations, eager.iterations.numpy())
    np.testing.assert_allclose(out.logits, eager.logits.numpy(), atol=tol["atol"], rtol=tol["rtol"])


def test_defaults_1d_input_and_int32(runtime):
    out = runtime.run(np.array([0, 1, 2, 2], dtype=np.int32))
    assert out.logits.shape == (4, 3) and out.iterations.shape == (4,)
    full = runtime.run([[0, 1, 2, 2]], max_iters=16, tol=0.003)
    assert np.array_equal(full.logits[0], out.logits)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_ids=np.array([[0.0, 1.0]])), "input_ids must be int32 or int64"),
    (dict(input_ids=np.zeros((1, 2, 3), np.int64)), "1-D .* or 2-D"),
    (dict(input_ids=np.array([0, 3])), r"input_ids must be in \[0, 3\), got 3"),
    (dict(input_ids=np.array([0, -1])), r"input_ids must be in \[0, 3\), got -1"),
    (dict(input_ids=np.zeros((1, 0), np.int64)), r"seq must be in \[1, 1024\], got 0"),
    (dict(input_ids=np.zeros((1, 1025), np.int64)), r"seq must be in \[1, 1024\], got 1025"),
    (dict(input_ids=np.zeros((0, 4), np.int64)), "batch must be >= 1"),
    (dict(input_ids=np.zeros((10**7, 1), np.int64)), r"10000000 x 1 = 10000000 tokens, over the 65536 per call"),
    (dict(input_ids=[np.zeros(1, np.int64)] * 70_000), r"70000 x 1 = 70000 tokens, over the 65536"),
    (dict(input_ids=[np.zeros(1000, np.int64)] * 65 + [np.zeros(1024, np.int64)]), r"66 x 1024 = 67584 tokens"),
    (dict(max_iters=-1), r"max_iters must be in \[0, 16\], got -1"),
    (dict(max_iters=17), r"max_iters must be in \[0, 16\], got 17"),
    (dict(max_iters=2.5), "max_iters must be an int"),
    (dict(max_iters=True), "max_iters must be an int"),
    (dict(tol=float("nan")), "tol must be a finite number >= 0"),
    (dict(tol=float("inf")), "tol must be a finite number >= 0"),
    (dict(tol=-0.1), "tol must be a finite number >= 0"),
    (dict(tol="0.1"), "tol must be a finite number >= 0"),
])
def test_bad_inputs_raise_value_error(runtime, kwargs, message):
    args = {"input_ids": np.array([[0, 1, 2]]), **kwargs}
    with pytest.raises(ValueError, match=message):
        runtime.run(args.pop("input_ids"), **args)


def test_tampered_and_missing_files_are_refused(artifact, tmp_path):
    bad = copy_of(artifact, tmp_path)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(dr.HashMismatchError, match="model.onnx"):
        dr.load(bad)
    (bad / "model.onnx").unlink()
    with pytest.raises(dr.MissingFileError, match="model.onnx is missing"):
        dr.load(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(dr.MissingFileError, match="no manifest.json"):
        dr.load(bad)


def test_failed_and_unsupported_artifacts(artifact, tmp_path):
    art = copy_of(artifact, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(dr.ParityFailedError, match="allow_failed"):
        dr.load(art)
    assert dr.load(art, allow_failed=True).run([0, 1]).iterations.shape == (2,)
    (art / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    with pytest.raises(dr.UnsupportedFormatError, match="format_version 9"):
        dr.load(art)
    with pytest.raises(dr.BackendUnavailableError, match="tensorrt"):
        dr.load(artifact, backend="tensorrt")
    with pytest.raises(ValueError, match="backend"):
        dr.load(artifact, backend="tvm")


def test_concurrent_callers_get_serial_results(runtime):
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(16):
        ids = rng.integers(1, 3, (1 + i % 3, 3 + i))
        ids[:, 0] = 0
        inputs.append(ids)
    serial = [runtime.run(ids, max_iters=8, tol=0.003) for ids in inputs]
    errors = []

    def worker(k):
        for j in range(200):
            i = (k * 7 + j) % len(inputs)
            out = runtime.run(inputs[i], max_iters=8, tol=0.003)
            if not (np.array_equal(out.logits, serial[i].logits) and np.array_equal(out.iterations, serial[i].iterations)):
                errors.append((k, j))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_runtime_works_where_torch_cannot_be_imported(artifact):
    code = BLOCK_TORCH + f"""
try:
    import torch
    raise SystemExit("torch imported")
except ImportError:
    pass
import depthscale_runtime
out = depthscale_runtime.load({str(artifact)!r}).run([0, 1, 2, 2, 1])
assert out.logits.shape == (5, 3)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", out.iterations.tolist())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_depthscale_run_cli(artifact):
    proc = subprocess.run([sys.executable, "-m", "depthscale_runtime.cli", str(artifact), "--text", "0110101", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == "0100110" and len(result["iterations"]) == 8
    proc = subprocess.run([sys.executable, "-m", "depthscale_runtime.cli", str(artifact), "--ids", "0,1,9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "input_ids must be in [0, 3), got 9" in proc.stderr


def run_check(*args):
    return subprocess.run([sys.executable, "-m", "depthscale_export.check", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_depthscale_check_passes_then_fails_on_perturbed_rehashed_weights(artifact, tmp_path):
    good = run_check(artifact, "--against", DEMO, "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["passed"] and "PASSED" in good.stderr
    bad = copy_of(artifact, tmp_path)
    model = onnx.load(bad / "model.onnx")
    init = next(i for i in model.graph.initializer if i.name.endswith("core.0.ffn.w_out.gamma"))
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(model, bad / "model.onnx")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = {"sha256": sha256(bad / "model.onnx"), "bytes": (bad / "model.onnx").stat().st_size}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    dr.load(bad)                                              # hashes verify again
    failed = run_check(bad, "--against", DEMO)
    assert failed.returncode == 1 and "FAILED" in failed.stderr and "first diverging iteration: 1" in failed.stderr
    assert run_check(tmp_path / "nowhere", "--against", DEMO).returncode == 2


def test_pytest_helper(artifact):
    from depthscale_export.check import assert_artifact_matches
    report = assert_artifact_matches(artifact, DEMO, shapes=[(1, 6)])
    assert report["passed"] and report["iterations_equal"]


def test_readme_embedding_example_runs(artifact, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding the runtime", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    generating = section.split("### Generating", 1)[1]            # continues the same session: rt, tok
    code += re.search(r"```python\n(.*?)```", generating, re.S).group(1)
    code += "assert res.tokens.shape == (2, 8) and res.iterations.shape == (2, 8)\n"
    shutil.copytree(artifact, tmp_path / "demo-onnx")
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "answer 0100110" in proc.stdout


def test_memory_levels_off_over_many_calls(artifact):
    """The soak bound (docs/design.md, "Resource bounds"): after 200 warm-up calls, 1,800 more
    Runtime.run() calls grow the process's RSS by less than 8 MiB."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), str(artifact), "--calls", "2000",
                           "--warmup", "200", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["calls"] == 2000 and len(report["rss_mib"]) == 10       # 200, 400, ..., 2000
    assert report["growth_mib"] < 8, report
