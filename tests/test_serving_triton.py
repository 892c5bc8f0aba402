"""depthscale-serve triton against a real tritonserver (the pinned nvidia-pytriton wheel's, in its own venv,
on 127.0.0.1), queried with tritonclient over HTTP and gRPC: outputs bit-exact against depthscale_runtime,
per-request budgets, ragged dynamic batching, streaming generation; the configs parsed back with
Triton's schema; the CLI's bad input."""

import hashlib
import json
import queue
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import depthscale_runtime as dr
from depthscale_export.serving.triton import MARKER, write_repository
from depthscale_export.serving.triton_config import parse_pbtxt, schema
from depthscale_export.serving.tritonserver import ServerEnvError, TritonServer, server_env

CLI = [sys.executable, "-m", "depthscale_export.serving.cli"]
NAME = "sum"
TIMEOUT_S = 60          # per request: every wait below is bounded


def serve(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def repository(sum_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    proc = serve("triton", sum_artifact, out, "--name", NAME, "--max-queue-delay-us", 20000, "--onnxruntime")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def server(repository):
    try:
        env = server_env()
    except ServerEnvError as e:
        pytest.skip(f"cannot build the tritonserver venv (no network?): {e}")
    with TritonServer(env, repository, [NAME, f"{NAME}_generate"]) as running:
        yield running


@pytest.fixture(scope="module")
def runtime(sum_artifact):
    return dr.load(sum_artifact)


def requests_of(runtime, count, seed=0):
    """(ids int64 [1, n], max_iters, tol) of `count` requests of different lengths and budgets."""
    rng = np.random.default_rng(seed)
    cap, vocab = runtime.artifact.max_iters_cap, runtime.artifact.vocab_size
    return [(rng.integers(1, vocab, size=(1, 3 + (5 * i) % 29)), int(rng.integers(0, cap + 1)),
             float(rng.choice([0.0, 0.003, 0.05]))) for i in range(count)]


def connect(module, server):
    if module is httpclient:
        return httpclient.InferenceServerClient(server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    return grpcclient.InferenceServerClient(server.grpc_url)


def infer(module, client, ids, max_iters=None, tol=None, **kwargs):
    """One request through `module` (tritonclient.http or .grpc) -> (logits, iterations)."""
    inputs = [module.InferInput("input_ids", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids.astype(np.int64))
    for name, value, dtype, np_dtype in (("max_iters", max_iters, "INT64", np.int64), ("tol", tol, "FP32", np.float32)):
        if value is not None:
            inputs.append(module.InferInput(name, [len(ids), 1], dtype))
            inputs[-1].set_data_from_numpy(np.full((len(ids), 1), value, dtype=np_dtype))
    bound = {"client_timeout": TIMEOUT_S} if module is grpcclient else {}   # http: the client's network_timeout
    result = client.infer(NAME, inputs, **bound, **kwargs)
    return result.as_numpy("logits"), result.as_numpy("iterations")


def expected(runtime, ids, max_iters=None, tol=None):
    out = runtime.run(ids, max_iters=max_iters, tol=tol)
    return out.logits, out.iterations


def test_configs_parse_with_triton_schema_and_match_the_graph(repository, sum_artifact):
    description = json.loads((repository / MARKER).read_text())
    assert description["models"] == [NAME, f"{NAME}_generate", f"{NAME}_onnx"]
    configs = {m: parse_pbtxt((repository / m / "config.pbtxt").read_text()) for m in description["models"]}
    mc = schema()
    run = configs[NAME]
    assert run.backend == "python" and run.max_batch_size == 16 and run.dynamic_batching.max_queue_delay_microseconds == 20000
    assert [(i.name, i.allow_ragged_batch, i.optional) for i in run.input] == [
        ("input_ids", True, False), ("max_iters", False, True), ("tol", False, True)]
    assert configs[f"{NAME}_generate"].model_transaction_policy.decoupled
    manifest = json.loads((sum_artifact / "manifest.json").read_text())
    onnx_config, graph = configs[f"{NAME}_onnx"], manifest["graphs"]["model"]
    assert onnx_config.platform == "onnxruntime_onnx" and onnx_config.max_batch_size > 0
    for tensors, described in ((onnx_config.input, graph["inputs"]), (onnx_config.output, graph["outputs"])):
        assert [t.name for t in tensors] == [d["name"] for d in described]
        for t, d in zip(tensors, described):
            assert mc.DataType.Name(t.data_type) == {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}[d["dtype"]]
            model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            assert 1 + len(model_dims) == len(d["shape"])           # Triton's batch dimension first
            assert [x for x in model_dims if x != -1] == [x for x in d["shape"][1:] if isinstance(x, int)]
    assert (repository / f"{NAME}_onnx" / "1" / "model.onnx").read_bytes() == (sum_artifact / "model.onnx").read_bytes()
    served = dr.load(repository / NAME / "1" / "artifact")                  # the copy verifies on its own
    assert served.artifact.manifest == manifest


def test_tensorrt_models_only_for_full_tensorrt_plans(sum_artifact, tmp_path):
    """An artifact whose manifest lists a full-TensorRT plan and a TensorRT-RTX plan (stand-in bytes,
    hashed like any file): a tensorrt_plan model for the first, the second skipped with its reason."""
    artifact = tmp_path / "artifact"
    shutil.copytree(sum_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    engines = []
    for directory in ("engines/sm90-trt10.9.0", "engines/rtx1.7.1"):
        plan = artifact / directory / "model.plan"
        plan.parent.mkdir(parents=True)
        plan.write_bytes(directory.encode() * 100)
        manifest["files"][f"{directory}/model.plan"] = {"sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
                                                        "bytes": plan.stat().st_size}
        engines.append({"dir": directory, "graph": "model.onnx", "plan": f"{directory}/model.plan"})
    manifest["tensorrt"] = {"built": True, "engines": engines, "skipped": {}}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    description = write_repository(artifact, tmp_path / "repo", NAME, generate=False, tensorrt=True)
    model = f"{NAME}_trt_sm90-trt10_9_0"
    assert description["models"] == [NAME, model]
    assert "TensorRT-RTX" in description["skipped"][f"{NAME}_trt_rtx1_7_1"]
    config = parse_pbtxt((tmp_path / "repo" / model / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert [i.name for i in config.input] == [d["name"] for d in manifest["graphs"]["model"]["inputs"]]
    assert (tmp_path / "repo" / model / "1" / "model.plan").read_bytes() == (artifact / engines[0]["plan"]).read_bytes()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_outputs_are_the_runtimes_bit_for_bit(server, runtime, protocol):
    module = httpclient if protocol == "http" else grpcclient
    client = connect(module, server)
    for ids, max_iters, tol in requests_of(runtime, 4, seed=1):
        logits, iterations = infer(module, client, ids, max_iters, tol)
        ref_logits, ref_iterations = expected(runtime, ids, max_iters, tol)
        assert logits.dtype == np.float32 and iterations.dtype == np.int64
        assert np.array_equal(logits, ref_logits) and np.array_equal(iterations, ref_iterations)
    ids = np.stack([requests_of(runtime, 1)[0][0][0]] * 2)                   # k rows in one request, defaults
    logits, iterations = infer(module, client, ids)
    assert np.array_equal(logits, expected(runtime, ids)[0]) and np.array_equal(iterations, expected(runtime, ids)[1])


def test_per_request_budgets_are_respected(server, runtime):
    client = connect(grpcclient, server)
    ids = requests_of(runtime, 3)[2][0]
    _, one = infer(grpcclient, client, ids, max_iters=1, tol=0.0)
    assert (one == 1).all()
    _, full = infer(grpcclient, client, ids, max_iters=runtime.artifact.max_iters_cap, tol=0.0)
    assert (full == runtime.artifact.max_iters_cap).all()
    _, loose = infer(grpcclient, client, ids, max_iters=runtime.artifact.max_iters_cap, tol=1.0)
    assert loose.max() < runtime.artifact.max_iters_cap and np.array_equal(loose, expected(runtime, ids, 16, 1.0)[1])
    _, default = infer(grpcclient, client, ids)
    assert np.array_equal(default, expected(runtime, ids)[1])


def test_bad_request_gets_its_own_error(server, runtime):
    client = connect(httpclient, server)
    bad = np.array([[0, runtime.artifact.vocab_size]])
    vocab, cap = runtime.artifact.vocab_size, runtime.artifact.max_iters_cap
    with pytest.raises(InferenceServerException, match=re.escape(f"input_ids must be in [0, {vocab}), got {vocab}")):
        infer(httpclient, client, bad)
    with pytest.raises(InferenceServerException, match=re.escape(f"max_iters must be in [0, {cap}], got {cap + 1}")):
        infer(httpclient, client, bad[:, :1], max_iters=cap + 1)
    ids = requests_of(runtime, 1)[0][0]
    assert np.array_equal(infer(httpclient, client, ids)[0], expected(runtime, ids)[0])      # still serving


def test_concurrent_ragged_requests_are_batched_and_exact(server, runtime):
    client = connect(grpcclient, server)

    def counts():
        stats = client.get_inference_statistics(NAME, as_json=True, client_timeout=TIMEOUT_S)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    before = counts()
    requests = requests_of(runtime, 16, seed=2)
    results = queue.Queue()
    for index, (ids, max_iters, tol) in enumerate(requests):
        inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
                  grpcclient.InferInput("max_iters", [1, 1], "INT64"), grpcclient.InferInput("tol", [1, 1], "FP32")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(np.array([[max_iters]], dtype=np.int64))
        inputs[2].set_data_from_numpy(np.array([[tol]], dtype=np.float32))
        client.async_infer(NAME, inputs, lambda result, error, i=index: results.put((i, result, error)),
                           client_timeout=TIMEOUT_S)
    seen = set()
    for _ in requests:
        index, result, error = results.get(timeout=TIMEOUT_S)
        assert error is None, error
        ids, max_iters, tol = requests[index]
        ref_logits, ref_iterations = expected(runtime, ids, max_iters, tol)
        assert np.array_equal(result.as_numpy("logits"), ref_logits)
        assert np.array_equal(result.as_numpy("iterations"), ref_iterations)
        seen.add(index)
    assert seen == set(range(16))
    inferences, executions = (a - b for a, b in zip(counts(), before))
    assert inferences == 16 and executions < 16, (inferences, executions)


def test_streamed_generation_equals_the_runtimes(server, runtime):
    prompt, new = np.array([0, 5, 3, 10, 2, 11], dtype=np.int64), 8
    reference = runtime.generate(prompt, new, max_iters=12, tol=0.003)
    responses = queue.Queue()
    client = connect(grpcclient, server)
    client.start_stream(callback=lambda result, error: responses.put((result, error)), stream_timeout=TIMEOUT_S)
    try:
        inputs = []
        for name, value, dtype in (("input_ids", prompt, "INT64"), ("max_new_tokens", np.array([new]), "INT64"),
                                   ("max_iters", np.array([12]), "INT64"), ("tol", np.array([0.003], np.float32), "FP32")):
            inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
            inputs[-1].set_data_from_numpy(value)
        client.async_stream_infer(f"{NAME}_generate", inputs, enable_empty_final_response=True)
        tokens, iterations, deadline = [], [], time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            tokens.append(int(result.as_numpy("token")[0]))
            iterations.append(int(result.as_numpy("iteration")[0]))
    finally:
        client.stop_stream()
    assert tokens == reference.tokens[0].tolist() and iterations == reference.iterations[0].tolist()


def test_cli_bad_input_is_one_line_and_exit_2(sum_artifact, tmp_path):
    """Missing artifact, an OUT that is not a repository, a repository without --force: exit 2, one line,
    nothing touched."""
    missing = serve("triton", tmp_path / "nope", tmp_path / "repo")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not verify" in missing.stderr
    assert not (tmp_path / "repo").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    taken = serve("triton", sum_artifact, other, "--force")
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1 and "not a model repository" in taken.stderr
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    repo = tmp_path / "repo"
    write_repository(sum_artifact, repo, generate=False)
    exists = serve("triton", sum_artifact, repo)
    assert exists.returncode == 2 and exists.stderr.count("\n") == 1 and "--force" in exists.stderr
    assert json.loads((repo / MARKER).read_text())["models"] == ["depthscale"]
    assert not list(tmp_path.glob(".*"))                                      # no staging left behind


def test_the_repository_writer_and_its_cli_do_not_import_torch():
    """depthscale-serve needs no torch: importing it costs ~0.5 s, not the ~3 s torch takes."""
    code = ("import sys, depthscale_export.serving.cli, depthscale_export.serving.triton, depthscale_export.serving.ray_data; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
